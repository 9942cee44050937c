#!/usr/bin/env python3
"""Where the time of one SD 1.5 UNet phase goes, per operation kind, in catlora and in PyTorch.

catlora: `perf record` (DWARF call graphs, from Debian's linux-perf) samples a child process that
runs the phase (`catlora bench --case '{"job": "profile", ...}'`: a warm-up run, then --iters
runs); each sample is put in one kind by the frames of its stack:
  * backward samples by the autodiff step they run in (the op whose derivative is computed),
  * forward samples by the backend operation they run in,
  * samples in burn's autodiff runtime outside any op's derivative are "autodiff bookkeeping",
  * samples in the allocator or kernel page handling are "memory",
and loading the model (random weights) is left out.
PyTorch: torch.profiler over the same phase (diffusers' UNet2DConditionModel, same shapes),
self CPU time per aten op, put in the same kinds; wall time not inside any op is "framework".

Both print one JSON object per engine: kind -> share of the phase's samples / time, plus the
per-run wall time of PyTorch measured alone (no profiler) for scale; catlora's per-run times come
from `catlora bench`.

Usage (from the repository root, with a release build and bash scripts/setup-bench.sh done):
  python3 bench/op_profile.py --exe target/release/catlora --phase forward|forward_backward|lora_step \
      [--pixels 256] [--iters 2] [--device cpu] [--torch .venv-bench/bin/python]
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

KINDS = ["convolution", "matmul", "attention", "group_norm", "layer_norm", "elementwise", "reduction",
         "copies/layout", "autodiff bookkeeping", "memory", "other"]

# burn ops (forward: FloatTensorOps / ModuleOps method names; backward: the Backward struct names).
CONV = re.compile(r"ops::conv|conv2d|Conv2D|conv3x3|Conv3x3|conv_|Conv[A-Z]|im2col|col2im")
GROUP_NORM = re.compile(r"group_norm|GroupNorm")
MATMUL = re.compile(r"float_matmul|Matmul|gemm|matmul", re.I)
ATTN = re.compile(r"attention", re.I)
REDUCE = re.compile(r"float_(sum|mean|max|min|var|prod)|::(Sum|Mean|Max|Min|Var)[A-Za-z]*( as|$)|reduce", re.I)
LAYOUT = re.compile(r"reshape|permute|swap_dims|SwapDim|Permute|Reshape|float_cat|Cat( as|$)|slice|Slice|narrow|expand|Expand|"
                    r"into_contiguous|to_contiguous|copy_strided|strided|gather|scatter|repeat|Repeat", re.I)
ELEM = re.compile(r"float_(add|sub|mul|div|exp|log|sqrt|powf|recip|neg|abs|tanh|erf|sin|cos|clamp|mask|sigmoid)|"
                  r"::(Add|Sub|Mul|Div|Exp|Log|Sqrt|Powf|Recip|Neg|Abs|Tanh|Erf|Sigmoid|Silu|Gelu|Relu|Mask|Clamp)[A-Za-z]*( as|$)|"
                  r"unary_op|binary_op|scalar_op|silu|gelu|sigmoid|__exp|__log|erf|zip", re.I)
MEMORY = re.compile(r"malloc|_int_free|__libc_free|cfree|realloc|memset|__memcpy|__memmove|clear_page|page_fault|"
                    r"do_anonymous_page|alloc_pages|munmap|mmap|madvise|exc_page|handle_mm_fault|zap_|free_pages|"
                    r"asm_exc_page_fault|__rust_alloc|__rust_dealloc|drop_in_place")
LOAD = re.compile(r"Weights::random|UNet::load|load_unet|count_params")
BACKWARD = re.compile(r" as burn_autodiff::ops::backward::Backward<")
AUTODIFF = re.compile(r"burn_autodiff::")
CATLORA_LAYER = [("group_norm", re.compile(r"catlora::models::layers::group_norm")),
                 ("attention", re.compile(r"catlora::models::layers::multi_head_attention")),
                 ("layer_norm", re.compile(r"catlora::models::layers::LayerNorm")),
                 ("convolution", re.compile(r"catlora::models::layers::Conv2d::forward")),
                 ("matmul", re.compile(r"catlora::models::layers::Linear::forward"))]


def op_kind(frame):
    for kind, rx in [("convolution", CONV), ("attention", ATTN), ("group_norm", GROUP_NORM), ("matmul", MATMUL), ("reduction", REDUCE),
                     ("copies/layout", LAYOUT), ("elementwise", ELEM)]:
        if rx.search(frame):
            return kind
    return None


def classify(stack):
    """stack: frames leaf first. Returns (kind, layer) or None for loading."""
    text = "\n".join(stack)
    if LOAD.search(text):
        return None
    layer = next((name for name, rx in CATLORA_LAYER if rx.search(text)), None)
    if MEMORY.search(stack[0]) or (len(stack) > 1 and MEMORY.search(stack[1])):
        layer = "memory: " + (layer or "-")
    for f in stack:
        if BACKWARD.search(f):
            # The op whose derivative this is: the struct name before " as ... Backward".
            name = f.split(" as burn_autodiff::ops::backward::Backward")[0]
            return (op_kind(name) or "elementwise" if re.search(r"::[A-Z]\w*$", name) else "other"), layer
    # Outside derivative steps: the innermost backend op frame decides.
    for f in stack:
        if ("burn_flex::" in f or "catlora::kernels::" in f or "FloatTensorOps" in f or "ModuleOps" in f or "ActivationOps" in f
                or "burn_tch" in f or "tch::" in f):
            k = op_kind(f)
            if k:
                return k, layer
    if any(AUTODIFF.search(f) for f in stack):
        return "autodiff bookkeeping", layer
    for f in stack:
        k = op_kind(f)
        if k:
            return k, layer
    return "other", layer


def parse_perf_script(text):
    """Yields each sample's frames (leaf first) from `perf script` output."""
    stack = []
    for line in text.splitlines():
        if not line.strip():
            if stack:
                yield stack
            stack = []
            continue
        if line.startswith((" ", "\t")):
            parts = line.strip().split(" ", 1)
            if len(parts) == 2:
                sym = parts[1].rsplit(" (", 1)[0]
                stack.append(re.sub(r"\+0x[0-9a-f]+$", "", sym))
    if stack:
        yield stack


def catlora_profile(exe, case, phase, threads):
    job = json.dumps({"job": "profile", "phase": phase, **case})
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "perf.data")
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        subprocess.run(["perf", "record", "-q", "-F", "97", "--call-graph", "dwarf,32768", "-o", data, "--", exe, "bench",
                        "--case", job], check=True, stdout=subprocess.DEVNULL, env=env)
        text = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym", "--no-inline"], check=True,
                              capture_output=True, text=True).stdout
    kinds, layers, total = collections.Counter(), collections.Counter(), 0
    for stack in parse_perf_script(text):
        c = classify(stack)
        if c is None:
            continue
        total += 1
        kinds[c[0]] += 1
        layers[c[1] or "(no layer: backward or glue)"] += 1
    return {"engine": "catlora", "phase": phase, "samples": total,
            "kinds": {k: kinds[k] / total for k in KINDS if kinds[k]},
            "forward_layers": {k: v / total for k, v in layers.most_common()}}


TORCH_KIND = [
    ("convolution", re.compile(r"conv|Convolution")),
    ("attention", re.compile(r"scaled_dot_product|flash_attention|_efficient_attention|softmax|Softmax")),
    ("group_norm", re.compile(r"group_norm|GroupNorm")),
    ("layer_norm", re.compile(r"layer_norm|LayerNorm")),
    ("matmul", re.compile(r"aten::(mm|addmm|bmm|baddbmm|matmul|linear)\b|MmBackward|AddmmBackward|BmmBackward")),
    ("copies/layout", re.compile(r"copy_|contiguous|clone|permute|transpose|view|reshape|cat\b|expand|as_strided|"
                                 r"_unsafe_view|upsample|slice|select|chunk|split|empty|zeros|to\b|_to_copy")),
    ("reduction", re.compile(r"aten::(sum|mean|var|std|max|min)\b")),
    ("elementwise", re.compile(r"aten::")),
]


def torch_profile(python, case, phase, threads):
    code = r'''
import json, sys, time, os
sys.path.insert(0, sys.argv[1])
import torch, torch_unet as tu
from torch.profiler import profile, ProfilerActivity
case, phase = json.loads(sys.argv[2]), sys.argv[3]
torch.set_num_threads(int(sys.argv[4]))
unet = tu.load_unet(case["model"]); unet.requires_grad_(False)
cfg = unet.config
x, ctx = tu.formula_inputs(torch, case["batch"], cfg.in_channels, case["latent"], case["tokens"], cfg.cross_attention_dim)
t = torch.full((case["batch"],), 500, dtype=torch.long)
step = None
if phase == "lora_step":
    from peft import LoraConfig
    unet.add_adapter(LoraConfig(r=1, lora_alpha=1, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4)
def run():
    if phase == "forward":
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=ctx)
    elif phase == "forward_backward":
        xg = x.clone().requires_grad_(True); y = unet(xg, t, encoder_hidden_states=ctx).sample; (y * y).mean().backward()
    else:
        opt.zero_grad(set_to_none=True); y = unet(x, t, encoder_hidden_states=ctx).sample
        torch.nn.functional.mse_loss(y, x).backward(); opt.step()
run()
s = time.perf_counter(); run(); alone = time.perf_counter() - s
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(case["iters"]):
        run()
ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
print(json.dumps({"ops": ops, "run_s": alone}))
'''
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([python, "-c", code, here, json.dumps(case), phase, str(threads)], check=True, stdout=subprocess.PIPE, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    kinds = collections.Counter()
    for name, us in r["ops"].items():
        kinds[next((k for k, rx in TORCH_KIND if rx.search(name)), "framework")] += us
    total = sum(kinds.values())
    return {"engine": "torch", "phase": phase, "run_s": r["run_s"], "kinds": {k: v / total for k, v in kinds.most_common()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exe", default="target/release/catlora")
    ap.add_argument("--phase", choices=["forward", "forward_backward", "lora_step"], required=True)
    ap.add_argument("--pixels", type=int, default=256)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="compute threads of both engines (1 keeps every sample on the calling thread's stack, where "
                         "catlora's layers are visible; rayon's workers show only the kernel)")
    ap.add_argument("--torch", help="the Python of .venv-bench, for PyTorch's profile")
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_unet import SD15_CONFIG as sd15  # noqa: E402  (torch itself is imported lazily there)
    case = {"name": f"sd15-{a.pixels}", "model": {"kind": "random", "config": sd15, "seed": 0}, "device": a.device,
            "batch": 1, "latent": a.pixels // 8, "tokens": 77, "iters": a.iters}
    print(f"load average: {open('/proc/loadavg').read().split()[0]} on {os.cpu_count()} CPUs", file=sys.stderr)
    print(json.dumps(catlora_profile(a.exe, case, a.phase, a.threads)))
    if a.torch:
        print(json.dumps(torch_profile(a.torch, case, a.phase, a.threads)))


if __name__ == "__main__":
    main()
