#!/usr/bin/env bash
# Event Hubs backlog drain: N readings pre-filled in the log, the agent (release build) forwards
# them to the local AMQP 1.0 fake (tests/eventhubs-fake) in raw mode at Event Hubs batch sizes
# 1, 16 and 256; prints the drain rate, the agent's peak RSS and CPU time for each.
# Usage: bench/eventhubs.sh [N=20000] [DEVICES=200]
# A batch holds one partition key (device): with DEVICES devices and 2000 readings per flush
# it holds at most about 2000/DEVICES events, whatever max_batch_events allows.
#
# The agent binary and the prefill example come from $CARGO_TARGET_DIR (default target/); the
# agent's peak RSS is VmHWM from /proc at the end of the drain. Until the sink ran its SDK on
# a dedicated single-threaded runtime, this drain stalled every few dozen sends (a lost AMQP
# disposition in fe2o3-amqp 0.16.2, see docs/eventhubs.md); a drain with client rebuilds is
# reported as such below, so a regression shows.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
DEVICES=${2:-200}
R=$PWD
T=${CARGO_TARGET_DIR:-$R/target}
cargo build --release -q -p iomt-agent --bin iomt-agent --example prefill
tests/eventhubs-fake/run.sh --install-only
W=$(mktemp -d /tmp/iomt-ehbench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
ms() { date +%s%3N; }
delivered() {
  curl -s 127.0.0.1:19466/metrics |
    awk '/^iomt_sink_delivered_total\{sink="outbox"\}/ {n = $2} END {printf "%d", n + 0}'
}
for batch in 1 16 256; do
  rm -rf "$W/s" && "$T/release/examples/prefill" "$W/s" "$N" "$DEVICES" 2>/dev/null
  # The redirection happens in the background child: remove the last run's file first, or
  # its port may be read.
  rm -f "$W/fake.out"
  tests/eventhubs-fake/run.sh --log "$W/events.jsonl" >"$W/fake.out" 2>"$W/fake.err" &
  fake=$!
  # A whole first line (the port may be written in more than one piece).
  until [ "$(cat "$W/fake.out" 2>/dev/null | wc -l)" -ge 1 ]; do sleep 0.05; done
  port=$(sed -n 's/^LISTENING 127.0.0.1:\([0-9]*\).*/\1/p' "$W/fake.out")
  cat > "$W/eh.toml" <<EOC
[agent]
state_dir = "$W/s"
admin_addr = "127.0.0.1:19466"
[mapping]
device = "$R/templates/vitals.device.json"
fhir = "$R/templates/vitals.fhir.json"
watch = false
[buffer]
max_bytes = 17179869184
[pipeline]
flush_interval_secs = 0.2
max_events_per_flush = 2000
[[sources]]
type = "simulator"
heart_rate_monitors = 0
pulse_oximeters = 0
bp_cuffs = 0
thermometers = 0
[[sinks]]
type = "eventhubs"
name = "outbox"
custom_endpoint = "amqp://127.0.0.1:$port"
hub = "bench"
auth = { type = "connection_string", secret = { env = "EH_CS" } }
payload = "raw"
max_batch_events = $batch
EOC
  EH_CS="Endpoint=sb://127.0.0.1/;SharedAccessKeyName=k;SharedAccessKey=a2V5;EntityPath=bench" \
    "$T/release/iomt-agent" run --config "$W/eh.toml" --progress-secs 0 2>"$W/agent.err" &
  pid=$!
  until curl -sf 127.0.0.1:19466/readyz >/dev/null 2>&1; do sleep 0.02; done
  # The clock starts when the agent answers (its log is open; the AMQP connection is not yet)
  # and stops when the sink has counted all N events delivered (counted on Event Hubs' Ok).
  t0=$(ms)
  until [ "$(delivered)" -ge "$N" ]; do
    sleep 0.05
    if [ $(($(ms) - t0)) -gt 120000 ]; then echo "batch $batch: not drained in 120 s" >&2; exit 1; fi
  done
  t1=$(ms)
  hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
  cpu_ms=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%d", ($14 + $15) * 1000 / hz}' /proc/$pid/stat)
  rebuilds=$(curl -s 127.0.0.1:19466/metrics | awk '/^iomt_eventhubs_client_rebuilds_total\{sink="outbox"\}/ {s += $2} END {print s + 0}')
  kill -TERM $pid; wait $pid || true
  kill $fake; wait $fake 2>/dev/null || true
  got=$(grep -c '"kind": "event"' "$W/events.jsonl" || true); rm -f "$W/events.jsonl"
  echo "batch $batch ($DEVICES devices): $N readings ($got events accepted) in $((t1 - t0)) ms: $((N * 1000 / (t1 - t0 + 1))) events/s; peak RSS ${hwm} kB; agent CPU ${cpu_ms} ms; client rebuilds $rebuilds"
done
