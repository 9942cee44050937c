#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests need (headless Chromium
# for the report test), then runs every test. Builds go to a target folder outside the clone so
# that repeated runs on one machine rebuild only catlora itself.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/catlora/target}"
cargo test --locked --all-targets
