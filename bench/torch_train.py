#!/usr/bin/env python3
"""One training step, PyTorch + diffusers + peft: plain LoRA against the CAT authors'
formulation and CAT with the adapter switched off for the base pass, on the same UNet cases as bench/torch_unet.py (which this script imports: keep the
two files side by side). One JSON line per (case, method) on stdout.

Both methods: LoRA rank 1 (alpha 1, gaussian init as diffusers' LoRA training script) on
to_q / to_k / to_v / to_out.0 of every attention through peft (`unet.add_adapter`), AdamW
(lr 1e-4) over the LoRA parameters only, f32, precomputed text embeddings (no text encoder), one
timestep (500). A step is zero_grad + x_t = DDPMScheduler.add_noise(x0, noise, t) (SD 1.x's
scaled_linear schedule) + forward(s) + backward + optimizer step, the same step as
`catlora bench --train` (src/bench.rs, `run_train_case`), which runs this script for its torch
columns.
  * lora:        loss = mse(UNet_lora(x_t, trigger caption), noise)           1 forward + backward
  * cat_authors: a second, frozen UNet copy gives the base prediction on the plain caption
                 (no_grad), and the adapter UNet runs on the trigger caption and on the plain
                 caption: loss = mse(UNet_lora(x_t, trigger), noise)
                               + lambda * mse(UNet_lora(x_t, plain), UNet_base(x_t, plain))
                 3 forwards, backward through 2.
  * cat_off:     the same loss with the base prediction from the same UNet with the adapter
                 switched off (diffusers' `disable_adapters`, no_grad): catlora's algorithm, the fair
                 engine-to-engine comparison. 3 forwards, backward through 2.
Each (case, method) runs in a fresh child process. Memory: rss_loaded_mb is the RSS once the one
UNet is loaded; VmHWM is then reset, so peak_mb is the high-water mark of everything after it (the
cat_authors second UNet copy, the adapter, the optimizer, the steps) and peak_mb - rss_loaded_mb is
the method's own memory; peak_load_mb is the high-water mark of loading. The step time is the
median of N timed steps after one warm-up step. Inputs come from formulas (catlora computes the
same numbers): x0 as torch_unet.py's x, noise_i = cos(0.23 i + 0.7), trigger states as
torch_unet.py's context, plain states 0.5 sin(0.11 j + 0.3). Every LoRA B starts at zero, so the
first step's loss (first_loss) does not depend on the adapter's initialisation and must match
catlora's on a checkpoint.

Usage:
  python bench/torch_train.py --unet tests/fixtures/tiny-sd/unet [--iters 5]
  python bench/torch_train.py --sd15 [--iters 3]
  python bench/torch_train.py --cases '<JSON list of catlora BenchCase>' [--methods lora,cat_authors]
Threads: --threads, else the CPUs this process may use.
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_unet as tu  # noqa: E402

METHODS = ("lora", "cat_authors", "cat_off")
TIMESTEP = 500  # an integer training timestep, as catlora's TRAIN_TIMESTEP
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def run_case(case, method, threads, lam, lr, rank):
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: F401  (before the baseline: runtime, not model)
    from peft import LoraConfig

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    torch.set_num_threads(threads)
    rss_base = tu.status_mb("VmRSS")
    t0 = time.perf_counter()
    dev = tu.torch_device(case)
    dtype, autocast = tu.precision(torch, case)
    unet = tu.load_unet(case["model"]).to(dev, dtype)
    unet.requires_grad_(False)
    load_s = time.perf_counter() - t0
    # The baseline of "peak above load": the one UNet is loaded; the authors' second copy, the
    # adapter and the optimizer count as the method's own memory.
    rss_loaded = tu.status_mb("VmRSS")
    peak_load = tu.status_mb("VmHWM")
    hwm_reset = tu.reset_hwm()
    params = sum(p.numel() for p in unet.parameters())

    base = None
    cat = method in ("cat_authors", "cat_off")
    if method == "cat_authors":
        base = copy.deepcopy(unet).eval()
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=1, init_lora_weights="gaussian", target_modules=TARGETS))
    unet.train()
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    # Mixed precision as diffusers' LoRA scripts: the trained weights in float32, fp16 with
    # GradScaler's dynamic loss scaling.
    for p in lora_params:
        p.data = p.data.float()
    scaler = torch.amp.GradScaler(dev, enabled=dtype == torch.float16)
    opt = torch.optim.AdamW(lora_params, lr=lr)
    # SD 1.x's training noise schedule (the same numbers as catlora's `train_noise_schedule`).
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

    cfg = unet.config
    b, side, tokens, dim = case["batch"], case["latent"], case["tokens"], cfg.cross_attention_dim
    x0, trigger = tu.formula_inputs(torch, b, cfg.in_channels, side, tokens, dim)
    i = torch.arange(x0.numel(), dtype=torch.float64)
    noise = torch.cos(0.23 * i + 0.7).to(torch.float32).reshape(x0.shape)
    j = torch.arange(b * tokens * dim, dtype=torch.float64)
    plain = (0.5 * torch.sin(0.11 * j + 0.3)).to(torch.float32).reshape(b, tokens, dim)
    t = torch.full((b,), TIMESTEP, dtype=torch.long)
    x0, trigger, noise, plain, t = (v.to(dev) for v in (x0, trigger, noise, plain, t))
    mse = torch.nn.functional.mse_loss

    def step():
        opt.zero_grad(set_to_none=True)
        zt = sched.add_noise(x0, noise, t)
        with autocast():
            loss_d = mse(unet(zt, t, encoder_hidden_states=trigger).sample.float(), noise)
        loss, loss_c = loss_d, None
        if cat:
            with torch.no_grad(), autocast():
                if base is not None:
                    target = base(zt, t, encoder_hidden_states=plain).sample.float()
                else:
                    unet.disable_adapters()
                    try:
                        target = unet(zt, t, encoder_hidden_states=plain).sample.float()
                    finally:
                        unet.enable_adapters()
            with autocast():
                loss_c = mse(unet(zt, t, encoder_hidden_states=plain).sample.float(), target)
            loss = loss_d + lam * loss_c
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.item(), loss_d.item(), 0.0 if loss_c is None else loss_c.item()

    times = []
    first = last = (float("nan"),) * 3
    for k in range(case["iters"] + 1):
        s = time.perf_counter()
        terms = step()
        ms = (time.perf_counter() - s) * 1e3
        if k == 0:
            first = terms
        else:
            times.append(ms)
        last = terms
    tu.report_cuda_peak(torch, case, method)

    return {
        "case": case["name"],
        "method": method,
        "engine": tu.engine_name(torch, unet, case) + f" / peft {__import__('peft').__version__}",
        "threads": torch.get_num_threads(),
        "iters": case["iters"],
        "params": params,
        "trainable_params": sum(p.numel() for p in lora_params),
        "rank": rank,
        "lambda": lam if cat else 0.0,
        "lr": lr,
        "forwards": 3 if cat else 1,
        "load_s": load_s,
        "step_ms": statistics.median(times),
        "step_all_ms": times,
        "rss_base_mb": rss_base,
        "rss_loaded_mb": rss_loaded,
        "peak_load_mb": peak_load,
        "peak_mb": tu.status_mb("VmHWM"),
        "hwm_reset": hwm_reset,
        "first_loss": first[0],
        "loss": last[0],
        "loss_diffusion": last[1],
        "loss_cat": last[2],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", help="JSON list of catlora BenchCase objects")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated: lora, cat_authors, cat_off")
    ap.add_argument("--unet", help="a diffusers unet folder (case `tiny`)")
    ap.add_argument("--sd15", action="store_true", help="the SD 1.5 UNet with random weights at 256 px (case `sd15-256`)")
    ap.add_argument("--iters", type=int, help="timed steps (default 5)")
    ap.add_argument("--latent", type=int, help="latent side for --unet (default: its sample_size)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--lam", type=float, default=1.0, help="weight of the preservation term (cat_authors, cat_off)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--rank", type=int, default=1, help="LoRA rank (alpha 1)")
    a = ap.parse_args()
    threads = a.threads or tu.default_threads()

    if a.one:
        print(json.dumps(run_case(json.loads(a.one), a.method, threads, a.lam, a.lr, a.rank)), flush=True)
        return

    if a.cases:
        cases = json.loads(a.cases)
    else:
        cases = []
        if a.unet:
            with open(os.path.join(a.unet, "config.json")) as f:
                side = a.latent or json.load(f).get("sample_size", 32)
            cases.append({"name": "tiny", "model": {"kind": "dir", "path": a.unet}, "batch": 1, "latent": side,
                          "tokens": 77, "iters": a.iters or 5})
        if a.sd15:
            cases.append({"name": "sd15-256", "model": {"kind": "random", "config": tu.SD15_CONFIG, "seed": 0},
                          "batch": 1, "latent": 32, "tokens": 77, "iters": a.iters or 5})
        if not cases:
            ap.error("give --cases, --unet or --sd15")
    methods = [m for m in a.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r} (lora, cat_authors, cat_off)")
    for case in cases:
        for m in methods:
            cmd = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(case), "--method", m,
                   "--threads", str(threads), "--lam", str(a.lam), "--lr", str(a.lr), "--rank", str(a.rank)]
            p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
            if p.returncode != 0 or not lines:
                raise SystemExit(f"case {case['name']!r} / {m} failed (exit {p.returncode}): {p.stdout.strip()}")
            print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
