#!/usr/bin/env bash
# Durable append rate of the log against a plain fsync'ed file, on a disk model with a steady,
# chosen fsync latency (docs/BENCHMARKS.md, "Durable log").
#
# The VM disk's fsync latency swings between ~0.1 ms and ~4 ms from hour to hour, which moves the
# ratio the issue asks about (SQLite vs plain file at batch 256). This script takes the disk out:
# both files go on a tmpfs and bench/fsync-delay makes every fsync/fdatasync of the bench
# process take FSYNC_DELAY_US microseconds (a sleep, no CPU), so the comparison is made at a
# known fsync cost. Run it at several latencies to see where SQLite's own CPU starts to matter.
#
#   bench/durable-append.sh [DELAY_US ...]      (default: 100 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
delays=("${@:-100 1000}")
# shellcheck disable=SC2206
delays=(${delays[*]})
work=$(mktemp -d /dev/shm/iomt-append.XXXXXX)
trap 'rm -rf "$work"' EXIT
cc -O2 -shared -fPIC -o "$work/fsync_delay.so" bench/fsync-delay/fsync_delay.c -ldl
bin=$(cargo bench -p iomt-agent --bench buffer --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="buffer": print(m["executable"])')
for d in "${delays[@]}"; do
    echo "== fsync ${d} us (tmpfs + fsync-delay shim)"
    IOMT_BENCH_DIR="$work" FSYNC_DELAY_US="$d" LD_PRELOAD="$work/fsync_delay.so" \
        "$bin" --bench --warm-up-time 1 --measurement-time 3 2>&1 |
        grep -E '^[a-z_]+/|time:|thrpt:' || true
done
