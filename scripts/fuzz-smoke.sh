#!/usr/bin/env bash
# Runs every fuzz target for a few seconds (FUZZ_SECONDS, default 10) from committed seeds.
# cargo-fuzz needs nightly features; on the stable toolchain RUSTC_BOOTSTRAP=1 enables them.
# A crash fails the run; keep the crashing input as a regression unit test.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECONDS:-10}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for t in $(cargo fuzz list); do
  mkdir -p "fuzz/corpus/$t"
  seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds+=("fuzz/seeds/$t")
  dict=()
  [ -f "fuzz/$t.dict" ] && dict+=("-dict=fuzz/$t.dict")
  echo "fuzzing $t for ${SECS}s"
  cargo fuzz run -O "$t" "fuzz/corpus/$t" "${seeds[@]}" -- -max_total_time="$SECS" -rss_limit_mb=2048 "${dict[@]}" 2>&1 | grep -E "^(#[0-9]+ +DONE|Done|==|SUMMARY|ERROR|thread)" | tail -n 3
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "fuzz target $t failed"; exit 1; }
done
