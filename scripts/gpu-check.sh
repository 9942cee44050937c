#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU that may be lent for a few minutes, has no
# compiler and no registry access: it runs a bundle built elsewhere (`scripts/gpu-bundle.sh`)
# against this checkout's fixtures and writes one JSON with every result.
#
#   bash scripts/gpu-check.sh BUNDLE OUT [SECONDS]
#   GPU_CHECK_STEPS='name ...' bash scripts/gpu-check.sh BUNDLE OUT [SECONDS]   (some steps only)
#
# It reads only tests/fixtures/tiny-sd (its tokenizer from vocab.json + merges.txt), the
# reference tensors, init-latents, cat-step-grads, lora-diffusers and the two ddim PNGs. When the
# checkout and the bundle must travel together under a size limit (the tracked tree is about
# 60 MB, the bundle about 50), the rest can stay behind for the call: assets/,
# tests/fixtures/{tiny-sd2-v,tiny-clip,vpred*,eps*}, tiny-sd's tokenizer.json, and devices.xz
# (precision.xz checks float32 as well).
#
# What it needs there, and how it finds it:
# - PyTorch: the `python3` on PATH must import torch with CUDA (the version the bundle was built
#   against); its lib/ goes on LD_LIBRARY_PATH for `--device libtorch-cuda`. diffusers, if that
#   Python lacks it, comes from BUNDLE/whl (installed into a scratch folder, never into the system).
# - Vulkan: the loader `libvulkan.so.1` and GLVND (which the NVIDIA driver's Vulkan library,
#   libGLX_nvidia, needs) from the system (`ldconfig -p`), else unpacked from BUNDLE/gl; the
#   driver's ICD file from the folders a GPU container mounts it in (/usr/local/nvidia/share/vulkan/icd.d
#   first, then /usr/share/vulkan/icd.d and /etc/vulkan/icd.d), passed as VK_DRIVER_FILES.
# - Float32 everywhere: NVIDIA_TF32_OVERRIDE=0 (catlora's default too), so that PyTorch's side of
#   the benchmark computes in the same precision as catlora's.
# Steps, each bounded so that the whole run ends within SECONDS (default 480): the conformance
# tests on both devices (float32, then fp16 and bf16 where the device has them), the CLI
# (generate, CAT training) on both devices, each command twice in fresh processes with the bytes
# compared, then SD 1.5 at 512 px next to PyTorch + diffusers on the same card: the UNet passes and
# the training steps (LoRA, CAT, batched CAT) on Vulkan in float32 and on libtorch-cuda in bf16,
# float32 and fp16, and the fp16 UNet passes on Vulkan; the Vulkan UNet passes also run once under
# CubeCL's profiler, and the JSON sums their GPU time per kernel kind (where Vulkan loses to
# PyTorch). Writes OUT/gpu-check.json (everything) and OUT/logs.tar.gz (each step's whole log).
set -uo pipefail
bundle="$(cd "${1:?usage: gpu-check.sh BUNDLE OUT [SECONDS]}" && pwd)"
dest="$(mkdir -p "${2:?usage: gpu-check.sh BUNDLE OUT [SECONDS]}" && cd "$2" && pwd)"
# Logs gather in OUT/logs and end as OUT/logs.tar.gz beside OUT/gpu-check.json.
out="$dest/logs"
mkdir -p "$out"
budget="${3:-480}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start=$(date +%s)
bin="$(mktemp -d)"
steps="$out/steps.tsv"
: >"$steps"

# Runs one named step with at most `limit` seconds (less if the budget is nearly spent); its
# output goes to OUT/<name>.log and its exit code and time to steps.tsv.
step() {
    local name="$1" limit="$2"
    shift 2
    # GPU_CHECK_STEPS (names, space-separated) reruns some steps only.
    if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" $name "* ]]; then
        return
    fi
    local left=$((budget - ($(date +%s) - start)))
    [ "$left" -lt "$limit" ] && limit="$left"
    if [ "$limit" -le 5 ]; then
        printf '%s\tskipped\t0\n' "$name" >>"$steps"
        echo "== $name: skipped (budget spent)"
        return
    fi
    echo "== $name (at most ${limit}s)"
    local t0=$(date +%s.%N)
    timeout -k 5 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    local t1=$(date +%s.%N)
    printf '%s\t%s\t%.1f\n' "$name" "$rc" "$(awk "BEGIN{print $t1 - $t0}")" >>"$steps"
    tail -n 40 "$out/$name.log"
    echo "== $name: exit $rc"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
# devices.xz may stay behind when the working tree must stay small (precision.xz checks float32 too).
for f in catlora devices precision; do
    [ -f "$bundle/$f.xz" ] && xz -dc "$bundle/$f.xz" >"$bin/$f" && chmod +x "$bin/$f"
done

# PyTorch's lib/ for the libtorch device.
torch_lib="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' | tee "$out/torch.txt"
if ! python3 -c 'import diffusers' 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/catlora-site "$bundle"/whl/*.whl
    export PYTHONPATH="/tmp/catlora-site${PYTHONPATH:+:$PYTHONPATH}"
fi

# The Vulkan loader and the NVIDIA ICD.
if ! ldconfig -p | grep -q 'libGLdispatch.so.0 ' || ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
    for f in "$bundle"/gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
for d in /usr/local/nvidia/share/vulkan/icd.d /usr/share/vulkan/icd.d /etc/vulkan/icd.d; do
    [ -f "$d/nvidia_icd.json" ] && export VK_DRIVER_FILES="$d/nvidia_icd.json" && break
done
echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-none found}"
[ -n "${VK_DRIVER_FILES:-}" ] && cat "$VK_DRIVER_FILES"
ldconfig -p | grep -E 'libvulkan.so.1 |libGLX_nvidia|libGLdispatch|libnvidia-gpucomp' | sed 's/^/  /'
export NVIDIA_TF32_OVERRIDE=0

# GPU memory per process, sampled every 100 ms during the whole run (peak per pid afterwards).
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader,nounits -lms 100 >"$out/gpu-mem.csv" 2>/dev/null &
smi=$!

export CATLORA_FIXTURES="$root/tests/fixtures"
fx="$root/tests/fixtures"
data="$(mktemp -d)"
cp "$fx"/ddim_image.png "$fx"/ddim_lora_image.png "$data/"
py="$(command -v python3)"
work="$(mktemp -d)"
# The CLI steps as commands (timeout runs commands, not shell functions): DEVICE TAG [OPTIONS].
printf '#!/usr/bin/env bash\nexec "%s" generate --model "%s" --prompt "a photo of a teapot" --steps 10 --seed 1 --out "%s/gen-$1$2" --device "$1" "${@:3}"\n' \
    "$bin/catlora" "$fx/tiny-sd" "$work" >"$bin/gen"
printf '#!/usr/bin/env bash\nexec "%s" train --model "%s" --data "%s" --trigger sks --class teapot --method cat --steps 3 --resolution 64 --seed 1 --out "%s/cat-$1$2.safetensors" --device "$1" "${@:3}"\n' \
    "$bin/catlora" "$fx/tiny-sd" "$data" "$work" >"$bin/train"
chmod +x "$bin/gen" "$bin/train"
# The Vulkan UNet passes with CubeCL's profiler on: every kernel is timed on its own (a sync after
# each) and logged to stderr as `| <time> | <kernel>`; cubecl.toml is read from the working folder.
prof="$(mktemp -d)"
printf '[profiling.logger]\nlevel = "basic"\nstderr = true\n' >"$prof/cubecl.toml"
printf '#!/usr/bin/env bash\ncd "%s" && exec "%s" bench --sd15 --pixels 512 --iters 1 --device vulkan\n' "$prof" "$bin/catlora" >"$bin/profile"
chmod +x "$bin/profile"
b="$bin/catlora"
[ -x "$bin/devices" ] && step tests-libtorch-cuda 60 env CATLORA_TEST_DEVICES=libtorch-cuda "$bin/devices" --test-threads 1 --nocapture
step tests-precision-libtorch-cuda 40 env CATLORA_TEST_DEVICE=libtorch-cuda "$bin/precision" --test-threads 1 --nocapture
step tests-precision-vulkan 150 env CATLORA_TEST_DEVICE=vulkan "$bin/precision" --test-threads 1 --nocapture
[ -x "$bin/devices" ] && step tests-vulkan 60 env CATLORA_TEST_DEVICES=vulkan "$bin/devices" --test-threads 1 --nocapture
# The CLI on both devices, each command twice in fresh processes (compared below).
for d in vulkan libtorch-cuda; do
    step "generate-$d" 30 "$bin/gen" "$d" ""
    step "generate-$d-again" 30 "$bin/gen" "$d" -again
    step "train-$d" 30 "$bin/train" "$d" ""
    step "train-$d-again" 30 "$bin/train" "$d" -again
done
step train-libtorch-cuda-fp16 20 "$bin/train" libtorch-cuda -fp16 --precision fp16
# SD 1.5 at 512 px next to PyTorch + diffusers on the same card.
step bench-unet-vulkan 90 "$b" bench --sd15 --pixels 512 --iters 5 --device vulkan --torch "$py"
step profile-unet-vulkan 60 "$bin/profile"
step bench-train-vulkan 150 "$b" bench --train --sd15 --pixels 512 --iters 3 --device vulkan --torch "$py"
step bench-train-libtorch-cuda-bf16 180 "$b" bench --train --sd15 --pixels 512 --iters 5 --device libtorch-cuda --precision bf16 --torch "$py"
step bench-train-libtorch-cuda 150 "$b" bench --train --sd15 --pixels 512 --iters 5 --device libtorch-cuda --torch "$py"
step bench-train-libtorch-cuda-fp16 180 "$b" bench --train --sd15 --pixels 512 --iters 5 --device libtorch-cuda --precision fp16 --torch "$py"
step bench-unet-libtorch-cuda 60 "$b" bench --sd15 --pixels 512 --iters 5 --device libtorch-cuda --torch "$py"
step bench-unet-libtorch-cuda-fp16 60 "$b" bench --sd15 --pixels 512 --iters 5 --device libtorch-cuda --precision fp16 --torch "$py"
step bench-unet-vulkan-fp16 60 "$b" bench --sd15 --pixels 512 --iters 3 --device vulkan --precision fp16
kill "$smi" 2>/dev/null

# Same bytes: each command against its second run, and the two devices' images.
same_bytes() {
    [ -f "$2" ] && [ -f "$3" ] || return 0
    local r=differ
    cmp -s "$2" "$3" && r=same
    printf '%s\t%s\n' "$1" "$r" | tee -a "$out/same-bytes.tsv"
}
for d in vulkan libtorch-cuda; do
    same_bytes "generate-$d twice" "$work/gen-$d/1-0.png" "$work/gen-$d-again/1-0.png"
    same_bytes "train-$d twice" "$work/cat-$d.safetensors" "$work/cat-$d-again.safetensors"
done
same_bytes "generate vulkan / libtorch-cuda" "$work/gen-vulkan/1-0.png" "$work/gen-libtorch-cuda/1-0.png"

# One JSON: the card, the steps (exit code, seconds, log tail) and the peak GPU memory per process.
python3 - "$out" "$dest" <<'EOF'
import csv, json, os, re, sys
out = sys.argv[1]
steps = []
for line in open(os.path.join(out, "steps.tsv")):
    name, rc, secs = line.rstrip("\n").split("\t")
    log = os.path.join(out, name + ".log")
    text = open(log, errors="replace").read() if os.path.exists(log) else ""
    steps.append({"step": name, "exit": rc, "seconds": float(secs), "log_tail": text[-6000:]})
peaks = {}
for row in csv.reader(open(os.path.join(out, "gpu-mem.csv"))):
    if len(row) == 3 and row[2].strip().isdigit():
        pid, name, mb = row[0].strip(), row[1].strip(), int(row[2])
        first = peaks.setdefault(pid, {"pid": pid, "process": name, "peak_mib": 0, "order": len(peaks)})
        first["peak_mib"] = max(first["peak_mib"], mb)
same = os.path.join(out, "same-bytes.tsv")
# The profiled Vulkan passes: GPU time per kernel kind (the name without its hash), largest first.
units = {"ns": 1e-6, "µs": 1e-3, "ms": 1.0, "s": 1e3}
kinds = {}
prof_log = os.path.join(out, "profile-unet-vulkan.log")
for line in open(prof_log, errors="replace") if os.path.exists(prof_log) else []:
    m = re.match(r"\|\s*([\d.]+)(ns|µs|ms|s)\s*\|\s*(.*?)\s*$", line)
    if m:
        name = "Matmul" if m.group(3).startswith("MatmulEntry") else re.sub(r"_[0-9a-f]{8}$", "", m.group(3))
        k = kinds.setdefault(name, {"kernel": name, "ms": 0.0, "launches": 0})
        k["ms"] += float(m.group(1)) * units[m.group(2)]
        k["launches"] += 1
total = sum(k["ms"] for k in kinds.values()) or 1.0
profile = sorted(kinds.values(), key=lambda k: -k["ms"])[:25]
for k in profile:
    k["share"] = round(k["ms"] / total, 4)
    k["ms"] = round(k["ms"], 2)
json.dump({
    "gpu": open(os.path.join(out, "gpu.txt")).read().strip(),
    "same_bytes": dict(l.rstrip("\n").split("\t") for l in open(same)) if os.path.exists(same) else {},
    "vulkan_kernel_profile": profile,
    "torch": open(os.path.join(out, "torch.txt")).read().strip(),
    "steps": steps,
    "gpu_memory_per_process": sorted(peaks.values(), key=lambda p: p["order"]),
}, open(os.path.join(sys.argv[2], "gpu-check.json"), "w"), indent=1)
print("wrote", os.path.join(sys.argv[2], "gpu-check.json"))
EOF
tar -czf "$dest/logs.tar.gz" -C "$dest" logs && rm -rf "$out"
