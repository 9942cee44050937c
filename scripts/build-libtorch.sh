#!/usr/bin/env bash
# Builds catlora with the `libtorch` device (burn's LibTorch backend: PyTorch's own CPU and CUDA
# kernels under catlora's model code), linked against the torch of a Python environment.
#
#   bash scripts/build-libtorch.sh [PYTHON]      # default: .venv-bench/bin/python (scripts/setup-bench.sh)
#
# Needs a PyPI torch; tch 0.22 (burn 0.22.1's) is written for torch 2.9.0 and checks the version:
# another version is tried with LIBTORCH_BYPASS_VERSION_CHECK=1 (2.11.0 is known to work). The binary
# goes to target/libtorch/release/catlora; run it with torch's lib/ on the library path, as the last
# line printed says. The default build never needs Python or libtorch.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-$root/.venv-bench/bin/python}"
if ! "$python" -c "import torch" 2>/dev/null; then
    echo "no torch in $python: run bash scripts/setup-bench.sh first (or name a Python with torch)" >&2
    exit 1
fi
version="$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')"
lib="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LIBTORCH_USE_PYTORCH=1
if [ "$version" != "2.9.0" ]; then
    echo "torch $version (tch expects 2.9.0): building with LIBTORCH_BYPASS_VERSION_CHECK=1" >&2
    export LIBTORCH_BYPASS_VERSION_CHECK=1
fi
# torch-sys finds torch through `python3` on PATH.
export PATH="$(dirname "$python"):$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/libtorch}"
cd "$root"
cargo build --locked --release --features libtorch
echo "built $CARGO_TARGET_DIR/release/catlora; run it with: LD_LIBRARY_PATH=$lib $CARGO_TARGET_DIR/release/catlora ..."
