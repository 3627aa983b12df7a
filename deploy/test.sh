#!/usr/bin/env bash
# Runs Rapport's whole test suite: unit tests, and end-to-end tests against a real
# Kafka broker (RAPPORT_KAFKA_BOOTSTRAP, or the local one deploy/kafka.sh starts).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
deploy/setup.sh
# Build outside the clone, so every checkout on this machine builds incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${RAPPORT_CACHE:-$HOME/.cache/rapport}/target}"
cargo test --workspace "$@"
