#!/usr/bin/env bash
# Runtime benchmarks of the whole agent (release build), for docs/BENCHMARKS.md:
#   1. backlog drain: N readings pre-filled in the log (agent "offline"), then the agent
#      started with no live source: time until the outbox sink has nothing pending
#      (end-to-end log → normalize → group → transform → outbox, readings/s);
#   2. cold start to ready with that backlog pending (process start → /readyz 200);
#   3. memory: 200 simulated devices at 1 Hz for DURATION seconds, peak and final RSS.
# Usage: bench/runtime.sh [N=100000] [DURATION=60]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
DURATION=${2:-60}
cargo build --release -q -p iomt-agent --bin iomt-agent --example prefill
BIN=target/release/iomt-agent
W=$(mktemp -d /tmp/iomt-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
R=$PWD
cfg() { # devices-per-kind state-dir file
  cat > "$3" <<EOC
[agent]
state_dir = "$2"
admin_addr = "127.0.0.1:19465"
[mapping]
device = "$R/templates/vitals.device.json"
fhir = "$R/templates/vitals.fhir.json"
watch = false
[buffer]
max_bytes = 17179869184
[pipeline]
flush_interval_secs = 1
max_events_per_flush = 2000
[[sources]]
type = "simulator"
heart_rate_monitors = $1
pulse_oximeters = $1
bp_cuffs = $1
thermometers = $1
[[sinks]]
type = "outbox"
EOC
}
pending() { curl -s 127.0.0.1:19465/metrics | awk '/^iomt_buffer_pending_records\{sink="outbox"\}/ {print $2}'; }
ms() { date +%s%3N; }

echo "== backlog of $N readings"
target/release/examples/prefill "$W/s1" "$N" 200
cfg 0 "$W/s1" "$W/drain.toml"
t0=$(ms)
$BIN run --config "$W/drain.toml" --progress-secs 0 2>"$W/drain.err" &
pid=$!
until curl -sf 127.0.0.1:19465/readyz >/dev/null; do sleep 0.01; done
t_ready=$(ms)
echo "cold start to ready with $N pending: $((t_ready - t0)) ms"
sleep 1
until [ "$(pending)" = "0" ]; do sleep 0.2; done
t_done=$(ms)
obs=$(cat "$W"/s1/outbox/Observation-*.ndjson | wc -l)
rss=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
kill -TERM $pid; wait $pid || true
echo "drained $N readings ($obs Observation lines) in $((t_done - t_ready)) ms: $((N * 1000 / (t_done - t_ready + 1))) readings/s; peak RSS ${rss} kB"

echo "== 200 devices at 1 Hz for ${DURATION}s"
[ "${SKIP_DRAIN:-}" = 1 ] && true
cfg 50 "$W/s2" "$W/live.toml"
$BIN run --config "$W/live.toml" --progress-secs 0 2>"$W/live.err" &
pid=$!
sleep "$DURATION"
hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
stored=$(curl -s 127.0.0.1:19465/metrics | awk '/^iomt_source_received_total/ {print $2}')
p=$(pending)
kill -TERM $pid; wait $pid || true
echo "200 devices: $stored readings stored, $p pending at the end; RSS ${rss} kB, peak ${hwm} kB"
