#!/usr/bin/env bash
# Creates .venv-bench with PyTorch + diffusers for the comparison columns of `catlora bench`
# (bench/torch_unet.py, bench/torch_train.py). Benchmark-only: catlora never needs Python.
#
#   bash scripts/setup-bench.sh            # then: catlora bench --torch .venv-bench/bin/python
#
# PYTHON picks the interpreter that creates the venv (default: python3, 3.10 or newer).
# The torch wheel comes from PyPI (CPU use only here; the wheel is large).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BENCH_VENV:-$root/.venv-bench}"
python="${PYTHON:-python3}"

"$python" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"python {sys.version.split()[0]} is too old for torch: use 3.10 or newer (PYTHON=...)")
PY

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --upgrade --quiet pip
"$venv/bin/python" -m pip install --progress-bar off -r "$root/bench/requirements.txt"
"$venv/bin/python" - <<'PY'
import torch, diffusers, transformers, peft, safetensors
print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
      f"peft {peft.__version__}, safetensors {safetensors.__version__}; {torch.get_num_threads()} CPU threads by default")
PY
echo "ready: $venv/bin/python"
