#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests need (headless Chromium
# for the report test), checks formatting and clippy, then runs every test (the fuzz targets run
# their CI share of cases; tests/fuzz.rs says how to run more). Builds go to a target folder
# outside the clone so that repeated runs on one machine rebuild only catlora itself.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/catlora/target}"
# The house style: formatted, and clippy-clean with warnings as errors.
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
