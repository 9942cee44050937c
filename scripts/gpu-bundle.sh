#!/usr/bin/env bash
# Builds what `scripts/gpu-check.sh` runs on a GPU machine that has no compiler and no registry
# access, and packs it into one folder (default: .gpu/, ignored by git):
#   catlora.xz   the CLI with both GPU devices (`--features libtorch,vulkan`), stripped
#   devices.xz   the conformance test binary (tests/devices.rs) of the same build
#   precision.xz the half-precision conformance tests (tests/precision.rs), run per device
#   gl/          the Vulkan loader and GLVND (Debian's libvulkan1, libglvnd0, ...), for a machine
#                without them
#   whl/         diffusers and its one dependency that an NVIDIA PyTorch image usually lacks
#
#   bash scripts/gpu-bundle.sh TORCH_DIR [BUNDLE]
#
# TORCH_DIR: the `torch` package folder (with lib/ and include/) of exactly the PyTorch version
# the GPU machine has, e.g. `pip install --no-deps --target /tmp/t torch==2.11.0` then /tmp/t/torch.
# Only torch itself is needed: its CUDA libraries (separate PyPI packages) are left unresolved at
# link time and found at run time through the GPU machine's torch. tch 0.22 is written for torch
# 2.9.0; other versions build with LIBTORCH_BYPASS_VERSION_CHECK=1 (2.11.0 builds and runs).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
torch_dir="${1:?usage: gpu-bundle.sh TORCH_DIR [BUNDLE]}"
bundle="${2:-$root/.gpu}"
[ -f "$torch_dir/lib/libtorch_cuda.so" ] || { echo "$torch_dir/lib/libtorch_cuda.so: not a CUDA torch package folder" >&2; exit 1; }
export LIBTORCH="$torch_dir" LIBTORCH_BYPASS_VERSION_CHECK=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/gpu}"
export RUSTFLAGS="-C link-arg=-Wl,--allow-shlib-undefined"
cd "$root"
cargo build --locked --release --features libtorch,vulkan
# cargo prints the test binaries' paths (beside the CLI's, which the tests also build).
built="$(cargo test --locked --release --features libtorch,vulkan --test devices --test precision --no-run --message-format=json)"
test_binary() {
    local b
    b="$(sed -n "s/.*\"executable\":\"\([^\"]*\/deps\/$1-[^\"]*\)\".*/\1/p" <<<"$built" | tail -1)"
    [ -x "$b" ] || { echo "no test binary for tests/$1.rs" >&2; exit 1; }
    echo "$b"
}
tests="$(test_binary devices)"
precision="$(test_binary precision)"
mkdir -p "$bundle/gl" "$bundle/whl"
for pair in "$CARGO_TARGET_DIR/release/catlora:catlora" "$tests:devices" "$precision:precision"; do
    strip -o "$bundle/${pair##*:}" "${pair%%:*}"
    xz -T0 -6 -f "$bundle/${pair##*:}"
done
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/catlora-apt-lists'
mkdir -p /tmp/catlora-apt-lists/partial
apt-get $o update -qq
(cd "$bundle/gl" && apt-get $o download libvulkan1 libglvnd0 libgl1 libglx0 libegl1 libopengl0 libgles2 2>/dev/null)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$bundle/whl" diffusers==0.42.1 importlib_metadata
du -sh "$bundle"/*
