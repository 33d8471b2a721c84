#!/usr/bin/env bash
# Runs every fuzz target for a few seconds (FUZZ_SECONDS, default 10). cargo-fuzz needs
# nightly features; on the stable toolchain RUSTC_BOOTSTRAP=1 enables them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${FUZZ_SECONDS:-10}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
for t in $(cargo fuzz list); do
  echo "fuzzing $t for ${SECS}s"
  mkdir -p "corpus/$t"
  # Seed corpora live in fuzz/seeds/<target> (committed); corpus/ is scratch.
  seeds=""
  [ -d "seeds/$t" ] && seeds="seeds/$t"
  cargo fuzz run "$t" "corpus/$t" $seeds -- -max_total_time="$SECS" -rss_limit_mb=2048 2>&1 | tail -n 3
done
