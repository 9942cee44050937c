#!/usr/bin/env python3
"""PyTorch + diffusers counterpart of `catlora bench` (src/bench.rs): the same UNet cases, the
same measurements, one JSON line per case on stdout (the keys of catlora's BenchResult).

Per case, in a fresh child process (so one case's peak memory is not another's):
  * forward without a graph (torch.no_grad), median of N timed runs after one warm-up;
  * forward + backward with the gradient flowing to the input latent only (weights frozen with
    requires_grad_(False)), loss mean(UNet(x)^2);
  * VmHWM (RSS high-water mark) from /proc/self/status for each phase, reset between phases
    through /proc/self/clear_refs; getrusage's ru_maxrss is also recorded (ru_maxrss_mb) but not
    used: after fork + exec it can carry the parent's figure, and it cannot be reset.
Inputs come from formulas rather than random generators, so that catlora and torch run on the
same numbers: x_i = sin(0.37 i + 0.1), c_j = 0.5 cos(0.13 j) over the flat index (f64, then f32).

Usage (catlora bench runs it for you with --torch PYTHON):
  python bench/torch_unet.py --unet tests/fixtures/tiny-sd/unet [--iters 10] [--threads 2]
  python bench/torch_unet.py --sd15 [--iters 3]
  python bench/torch_unet.py --cases '<JSON list of catlora BenchCase>' --threads 2
Threads: torch.set_num_threads(--threads); without --threads, the number of CPUs this process may
use (the same default as catlora's rayon pool), not torch's own default.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TIMESTEP = 500.0

# The real SD 1.5 UNet configuration, the same as `sd15_unet_config()` in src/bench.rs (only for
# running this script by hand: `catlora bench` passes its own copy in the case).
SD15_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}


def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def default_threads():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def formula_inputs(torch, batch, channels, side, tokens, dim):
    n = batch * channels * side * side
    i = torch.arange(n, dtype=torch.float64)
    x = torch.sin(0.37 * i + 0.1).to(torch.float32).reshape(batch, channels, side, side)
    m = batch * tokens * dim
    j = torch.arange(m, dtype=torch.float64)
    c = (0.5 * torch.cos(0.13 * j)).to(torch.float32).reshape(batch, tokens, dim)
    return x, c


def torch_device(case):
    """PyTorch's device for a case: CUDA when catlora's runs on a GPU (libtorch-cuda, vulkan)."""
    name = case.get("device", "cpu")
    return "cuda" if name.startswith("libtorch-cuda") or name.startswith("vulkan") else "cpu"


def precision(torch, case):
    """The case's `precision` as a torch dtype, and the autocast context that goes with it:
    half-precision weights with normalisation and softmax in float32 (autocast's lists), as
    catlora's `--precision` and diffusers' mixed-precision training."""
    import contextlib

    name = case.get("precision", "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
    if dtype == torch.float32:
        return dtype, contextlib.nullcontext
    return dtype, lambda: torch.autocast(device_type=torch_device(case), dtype=dtype)


def report_cuda_peak(torch, case, label):
    """The CUDA caching allocator's peak, on stderr (the device's own memory, not the RSS)."""
    if torch_device(case) == "cuda":
        torch.cuda.synchronize()
        mb = torch.cuda.max_memory_allocated() / 2**20
        print(f"torch {case['name']} {label}: CUDA peak allocated {mb:.0f} MiB, "
              f"reserved {torch.cuda.max_memory_reserved() / 2**20:.0f} MiB", file=sys.stderr, flush=True)


def load_unet(model):
    import torch
    from diffusers import UNet2DConditionModel

    if model["kind"] == "dir":
        unet = UNet2DConditionModel.from_pretrained(model["path"], torch_dtype=torch.float32)
    elif model["kind"] == "random":
        torch.manual_seed(model.get("seed", 0))
        unet = UNet2DConditionModel.from_config(model["config"]).to(torch.float32)
    else:
        raise ValueError(f"unknown model kind {model['kind']!r}")
    return unet.eval()


def engine_name(torch, unet, case=None):
    import diffusers

    procs = sorted({type(p).__name__ for p in unet.attn_processors.values()})
    prec = (case or {}).get("precision", "fp32").replace("fp32", "f32")
    return f"torch {torch.__version__} / diffusers {diffusers.__version__} ({', '.join(procs)}, {prec})"


def run_case(case, threads):
    """Runs one case in this process and returns the result dict."""
    import resource

    import torch
    from diffusers import UNet2DConditionModel  # noqa: F401  (before the baseline: runtime, not model)

    torch.set_num_threads(threads)
    rss_base = status_mb("VmRSS")
    peak = status_mb("VmHWM")
    t0 = time.perf_counter()
    dev = torch_device(case)
    dtype, autocast = precision(torch, case)
    unet = load_unet(case["model"]).to(dev, dtype)
    unet.requires_grad_(False)
    load_s = time.perf_counter() - t0
    rss_loaded = status_mb("VmRSS")
    params = sum(p.numel() for p in unet.parameters())
    cfg = unet.config
    x, ctx = formula_inputs(torch, case["batch"], cfg.in_channels, case["latent"], case["tokens"], cfg.cross_attention_dim)
    x, ctx = x.to(dev), ctx.to(dev)
    t = torch.full((case["batch"],), TIMESTEP, dtype=torch.float32, device=dev)
    iters = case["iters"]

    peak = max(peak, status_mb("VmHWM"))
    reset = reset_hwm()
    fwd = []
    with torch.no_grad(), autocast():
        for k in range(iters + 1):
            s = time.perf_counter()
            y = unet(x, t, encoder_hidden_states=ctx).sample.float()
            out_mean_abs = y.abs().mean().item()
            ms = (time.perf_counter() - s) * 1e3
            if k > 0:
                fwd.append(ms)
    peak_forward = status_mb("VmHWM")
    peak = max(peak, peak_forward)
    report_cuda_peak(torch, case, "forward")

    reset = reset_hwm() and reset
    bwd = []
    for k in range(iters + 1):
        s = time.perf_counter()
        xg = x.clone().requires_grad_(True)
        with autocast():
            y = unet(xg, t, encoder_hidden_states=ctx).sample.float()
        loss = (y * y).mean()
        loss.backward()
        grad_mean_abs = xg.grad.abs().mean().item()
        ms = (time.perf_counter() - s) * 1e3
        if k > 0:
            bwd.append(ms)
        del xg, y, loss
    peak_backward = status_mb("VmHWM")
    peak = max(peak, peak_backward)
    report_cuda_peak(torch, case, "forward + backward")

    return {
        "case": case["name"],
        "engine": engine_name(torch, unet, case),
        "threads": torch.get_num_threads(),
        "iters": iters,
        "params": params,
        "load_s": load_s,
        "forward_ms": statistics.median(fwd),
        "forward_backward_ms": statistics.median(bwd),
        "forward_all_ms": fwd,
        "forward_backward_all_ms": bwd,
        "rss_base_mb": rss_base,
        "rss_loaded_mb": rss_loaded,
        "peak_forward_mb": peak_forward,
        "peak_backward_mb": peak_backward,
        "peak_mb": peak,
        "hwm_reset": reset,
        "out_mean_abs": out_mean_abs,
        "grad_mean_abs": grad_mean_abs,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def run_in_child(case, threads):
    """Runs one case in a fresh interpreter and returns its JSON result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(case), "--threads", str(threads)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise SystemExit(f"torch case {case['name']!r} failed with exit code {p.returncode}: {p.stdout.strip()}")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit(f"torch case {case['name']!r} printed no result: {p.stdout.strip()}")
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", help="JSON list of catlora BenchCase objects")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--unet", help="a diffusers unet folder (case `tiny`)")
    ap.add_argument("--sd15", action="store_true", help="the SD 1.5 UNet with random weights at 256 px (case `sd15-256`)")
    ap.add_argument("--iters", type=int, help="timed runs per phase (default 10 for --unet, 3 for --sd15)")
    ap.add_argument("--latent", type=int, help="latent side for --unet (default: its sample_size)")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    threads = a.threads or default_threads()

    if a.one:
        print(json.dumps(run_case(json.loads(a.one), threads)), flush=True)
        return

    if a.cases:
        cases = json.loads(a.cases)
    else:
        cases = []
        if a.unet:
            with open(os.path.join(a.unet, "config.json")) as f:
                side = a.latent or json.load(f).get("sample_size", 32)
            cases.append({"name": "tiny", "model": {"kind": "dir", "path": a.unet}, "batch": 1, "latent": side,
                          "tokens": 77, "iters": a.iters or 10})
        if a.sd15:
            cases.append({"name": "sd15-256", "model": {"kind": "random", "config": SD15_CONFIG, "seed": 0}, "batch": 1,
                          "latent": 32, "tokens": 77, "iters": a.iters or 3})
        if not cases:
            ap.error("give --cases, --unet or --sd15")
    for case in cases:
        print(json.dumps(run_in_child(case, threads)), flush=True)


if __name__ == "__main__":
    main()
