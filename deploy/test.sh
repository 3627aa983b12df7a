#!/usr/bin/env bash
# Runs Rapport's whole test suite: unit tests, and end-to-end tests against a real
# Kafka broker (RAPPORT_KAFKA_BOOTSTRAP, or the local one deploy/kafka.sh starts).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
deploy/setup.sh
# Build outside the clone, so every checkout on this machine builds incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${RAPPORT_CACHE:-$HOME/.cache/rapport}/target}"
# The Schema Registry tests start a local registry (deploy/registry.sh) when
# none answers; one this run started is stopped when it ends, so a test run
# leaves no JVM behind.
if ! deploy/registry.sh status >/dev/null 2>&1; then
    trap 'deploy/registry.sh stop >/dev/null 2>&1 || true' EXIT
fi
cargo test --workspace "$@"
