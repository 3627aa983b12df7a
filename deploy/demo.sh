#!/usr/bin/env bash
# The Rapport demo: a local broker, simulated customers on four channels, the
# engine, and live actions. Ends by itself; `deploy/demo.sh --help` lists options.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
deploy/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${RAPPORT_CACHE:-$HOME/.cache/rapport}/target}"
cargo run --quiet --bin rapport -- demo "$@"
