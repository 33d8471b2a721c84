#!/usr/bin/env bash
# The whole iomt-edge test suite: what CI runs (.ci/run calls exactly this) and what a
# developer runs on a fresh Debian machine. It installs what the tests need (Debian packages,
# npm and PyPI packages in project-local folders, cargo tools) when it is missing, then runs every
# stage and prints how long each one took.
#
#   scripts/test-all.sh                      # everything
#   SKIP="fuzz cross deb" scripts/test-all.sh   # leave stages out (local iteration only)
#
# Stages: deps fmt clippy build test fhir-server systemd cross deb fuzz.
# The tests need root for the power-cut test (loop devices); elsewhere set IOMT_SKIP_POWERCUT=1.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export RUST_BACKTRACE=1
SKIP=${SKIP:-}

declare -a STAGES=()
stage() {
  local name=$1; shift
  if [[ " $SKIP " == *" $name "* ]]; then
    echo "::: stage ${name}: skipped (SKIP)"
    STAGES+=("${name}=skipped")
    return
  fi
  local t0=$SECONDS
  echo "::: stage ${name}: start"
  "$@"
  local dt=$((SECONDS - t0))
  STAGES+=("${name}=${dt}s")
  echo "::: stage ${name}: ok (${dt}s)"
}
trap 'echo "::: FAILED after ${SECONDS}s; stages done: ${STAGES[*]:-none}"' ERR

fhir_server_tests() {
  tests/fhir-server/start.sh --install-only
  node --test tests/fhir-server/test/
  tests/fhir-server/validate.sh --install-only
  tests/fhir-server/.venv/bin/python -m unittest discover -s tests/fhir-server -p 'test_*.py'
}

stage deps scripts/install-test-deps.sh
stage fmt cargo fmt --all -- --check
stage clippy cargo clippy --workspace --all-targets --locked -- -D warnings
stage build cargo test --workspace --locked --no-run
stage test cargo test --workspace --locked
stage fhir-server fhir_server_tests
stage systemd scripts/systemd-check.sh
stage cross scripts/cross-test.sh aarch64 armv7
stage deb scripts/deb-test.sh amd64 arm64
stage fuzz scripts/fuzz-smoke.sh

echo "::: stage times: ${STAGES[*]} (total ${SECONDS}s)"
