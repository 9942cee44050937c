#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests need (headless Chromium
# for the report test, the Vulkan loader and lavapipe for the GPU backend), checks formatting and
# clippy, then runs every test, and the GPU-backend conformance tests on lavapipe (the fuzz targets run
# their CI share of cases; tests/fuzz.rs says how to run more). Builds go to a target folder
# outside the clone so that repeated runs on one machine rebuild only catlora itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# Headless Chromium for the report test; the Vulkan loader and Mesa's lavapipe (Vulkan on the
# CPU) for the GPU-backend tests.
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
ldconfig -p | grep -q 'libvulkan.so.1 ' || missing="$missing libvulkan1"
ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || missing="$missing mesa-vulkan-drivers"
if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/catlora/target}"
# A one-off CI build gains nothing from incremental data, which would only take disk space.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi
# The house style: formatted, and clippy-clean with warnings as errors.
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
# One build runs every test: the default code plus burn's wgpu backend, whose conformance tests
# (tests/devices.rs: the text encoder, UNet, VAE, a 10-step image and one CAT step's losses and
# gradients against the fixtures, with the CPU backend's tolerances) run on lavapipe and must find
# it. (A second build without the feature would cost a cold CI run about 17 more minutes.)
CATLORA_TEST_DEVICES=wgpu cargo test --locked --all-targets --features wgpu
