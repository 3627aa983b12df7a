#!/usr/bin/env bash
# Runs Rapport's whole test suite: unit tests, and end-to-end tests against a real
# Kafka broker (RAPPORT_KAFKA_BOOTSTRAP, or the local one deploy/kafka.sh starts).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# One test run at a time on a machine: runs share the local broker (each
# deletes the test topics of earlier runs as it starts) and the build
# directory. A second run waits for the first; the lock is this shell's alone
# (fd 8 is closed for the broker and the tests, so a broker left running does
# not keep it).
lock_dir="${RAPPORT_CACHE:-$HOME/.cache/rapport}"
mkdir -p "$lock_dir"
exec 8>"$lock_dir/test.lock"
if ! flock -n 8; then
    echo "test.sh: another test run on this machine holds $lock_dir/test.lock; waiting for it to end" >&2
    flock 8
fi
deploy/setup.sh
# Build outside the clone, so every checkout on this machine builds incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${RAPPORT_CACHE:-$HOME/.cache/rapport}/target}"
# The Schema Registry tests start a local registry (deploy/registry.sh) when
# none answers; one this run started is stopped when it ends, so a test run
# leaves no JVM behind.
if ! deploy/registry.sh status >/dev/null 2>&1; then
    trap 'deploy/registry.sh stop >/dev/null 2>&1 || true' EXIT
fi
# Every end-to-end test makes topics of its own (test.<name>.<pid>.<n>.<time>)
# and leaves them for a failure to be looked at. On the local broker, those of
# earlier runs are deleted first: thousands of topics kept on one broker fill
# its heap with their metadata and metrics and lengthen its GC pauses.
if [[ -z "${RAPPORT_KAFKA_BOOTSTRAP:-}" ]]; then
    deploy/kafka.sh start >/dev/null 8>&-
    deploy/kafka.sh topics --delete --topic 'test\..*' >/dev/null 2>&1 || true
fi
cargo test --workspace "$@" 8>&-
