#!/usr/bin/env bash
# The whole iomt-edge test suite: what CI runs (.ci/run calls exactly this) and what a
# developer runs on a fresh Debian machine. It installs what the tests need (Debian packages,
# npm and PyPI packages, cargo tools) when it is missing, then runs every stage and prints how
# long each one took.
#
#   scripts/test-all.sh              # everything
#   SKIP_FUZZ=1 scripts/test-all.sh  # without the short fuzz runs
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export RUST_BACKTRACE=1

declare -a STAGES=()
stage() {
  local name=$1; shift
  local t0=$SECONDS
  echo "::: stage ${name}: start"
  "$@"
  local dt=$((SECONDS - t0))
  STAGES+=("${name} ${dt}s")
  echo "::: stage ${name}: ok (${dt}s)"
}
trap 'echo "::: FAILED after $SECONDS s; stages done: ${STAGES[*]:-none}"' ERR

stage deps scripts/install-test-deps.sh
stage fmt cargo fmt --all -- --check
stage clippy cargo clippy --workspace --all-targets --locked -- -D warnings
stage build cargo test --workspace --locked --no-run
stage test cargo test --workspace --locked
if [ -z "${SKIP_FUZZ:-}" ]; then
  stage fuzz scripts/fuzz-smoke.sh
fi

echo "::: stage times: ${STAGES[*]} (total ${SECONDS}s)"
