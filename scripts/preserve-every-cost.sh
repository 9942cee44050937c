#!/usr/bin/env bash
# The cost side of `--preserve-every K`: wall time of the demo's CAT + blank training (600 steps,
# the demo's settings) for K = 1, 2, 4, REPS runs each, one at a time, with the load average
# before each K. DEMO is a `catlora demo --out` folder (its models/ and data/). The KPS side
# comes from `catlora demo --preserve-every K` (README, "Preservation every K-th step").
# Usage: scripts/preserve-every-cost.sh DEMO [REPS]   (CATLORA=path/to/catlora to pick the binary)
set -euo pipefail
demo=${1:?usage: scripts/preserve-every-cost.sh DEMO [REPS]}
reps=${2:-5}
bin=${CATLORA:-target/release/catlora}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "$(nproc) CPUs; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
for k in 1 2 4; do
    echo "K $k: load average $(cut -d' ' -f1-3 /proc/loadavg)"
    times=()
    sums=()
    for r in $(seq "$reps"); do
        start=$(date +%s.%N)
        "$bin" train --model "$demo/models/sd" --data "$demo/data" --trigger sks --class "a circle" \
            --preserve trigger-less:1,blank:1 --preserve-every "$k" --steps 600 --rank 4 --alpha 4 \
            --lr 5e-3 --resolution 32 --seed 0 --save-precision fp32 --out "$tmp/k$k.safetensors" >/dev/null 2>&1
        sums+=("$(sha256sum "$tmp/k$k.safetensors" | cut -d' ' -f1)")
        times+=("$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')")
    done
    # The same adapter bytes from every run of one K (one output path: the file records it).
    [ "$(printf '%s\n' "${sums[@]}" | sort -u | wc -l)" -eq 1 ] || { echo "K $k: runs differ" >&2; exit 1; }
    printf '%s\n' "${times[@]}" | sort -g | awk -v k="$k" '{t[NR]=$1} END {printf "K %s: median %.2f s (min %.2f, max %.2f) for 600 steps, %.1f ms a step\n", k, t[int((NR+1)/2)], t[1], t[NR], 1000*t[int((NR+1)/2)]/600}'
done
