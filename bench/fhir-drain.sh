#!/usr/bin/env bash
# Benchmark: drain a backlog of N readings from the agent's durable log into the FHIR test
# server (tests/fhir-server), then replay the agent's exact request mix (from the server's
# request log, bodies from its export) with a plain Node load generator on a fresh store, at
# the same concurrency; the agent and the load generator alternate (after one warm-up drain:
# Node's JIT) so that both see the same server. Then drains the same backlog with
# batch_bundle = true.
#   bench/fhir-drain.sh [READINGS=500] [CONCURRENCY=4]
# Env: IOMT_AGENT (agent binary; default $CARGO_TARGET_DIR/release or debug iomt-agent);
#      ROUNDS (measured agent/loadgen pairs after one warm-up drain, default 3);
#      BENCH_KEEP=1 keeps the work dir (server logs per run), BENCH_VERBOSE=1 prints stats.
# Results go to stdout as one line per run; see docs/BENCHMARKS-fhir.md.
set -euo pipefail
N=${1:-500}
C=${2:-4}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
agent="${IOMT_AGENT:-}"
if [ -z "$agent" ]; then
  for p in "$target/release/iomt-agent" "$target/debug/iomt-agent"; do
    if [ -x "$p" ]; then agent="$p"; break; fi
  done
fi
[ -x "$agent" ] || { echo "build the agent first (cargo build -p iomt-agent) or set IOMT_AGENT" >&2; exit 2; }
work="$(mktemp -d)"
pids=()
cleanup() {
  # Agents started inside process substitutions record their pid in $work/pids.
  for p in "${pids[@]}" $(cat "$work/pids" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  if [ -n "${BENCH_KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

"$root/tests/fhir-server/start.sh" --port 0 >"$work/server.out" 2>"$work/server.err" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/server.out" ] && break; sleep 0.2; done
port="$(sed -n 's/^LISTENING 127.0.0.1://p' "$work/server.out")"
base="http://127.0.0.1:$port"
admin=$((20000 + RANDOM % 20000))
# 2 readings per device per tick would share a second (and an Observation); so many devices.
devices=$(( N / 5 ))
hr=$(( devices / 2 )); spo2=$(( devices - hr ))

config() { # $1 = sink url, $2 = extra sink keys, $3 = devices per kind (default: the backlog's)
  cat >"$work/ward.toml" <<TOML
[agent]
state_dir = "$work/state"
[mapping]
device = "$root/templates/vitals.device.json"
fhir = "$root/templates/vitals.fhir.json"
watch = false
[buffer]
commit_interval_ms = 50
[[sources]]
type = "simulator"
heart_rate_monitors = ${3:-$hr}
pulse_oximeters = ${3:-$spo2}
bp_cuffs = 0
thermometers = 0
interval_secs = 1
max_readings = $N
[[sinks]]
type = "fhir"
name = "fhir"
url = "$1"
identity = "create"
device_identifier_system = "urn:bench:device"
patient_identifier_system = "urn:bench:mrn"
concurrency = $C
$2
TOML
}
metric() { { curl -s "127.0.0.1:$admin/metrics" || true; } | awk -v m="$1" 'index($0, m) == 1 { print $NF }'; }
run_agent() {
  "$agent" run --config "$work/ward.toml" --admin-addr "127.0.0.1:$admin" --progress-secs 0 >>"$work/agent.out" 2>>"$work/agent.err" &
  echo $! >>"$work/pids"
  echo $!
}
stop_agent() { kill "$1"; wait "$1" 2>/dev/null || true; }

# 1. The backlog: readings stored while the sink points at a closed port.
config "http://127.0.0.1:9" ""
a=$(run_agent); pids+=("$a")
until [ "$(metric 'iomt_source_received_total{')" = "$N" ]; do sleep 0.2; done
stop_agent "$a"
cp -a "$work/state" "$work/backlog"

drain() { # $1 = extra sink keys; prints seconds and Observations created
  rm -rf "$work/state"; cp -a "$work/backlog" "$work/state"
  curl -s -X POST "$base/\$test/reset" >/dev/null
  config "$base" "$1" 0
  local a t0 t1
  t0=$(date +%s.%N)
  a=$(run_agent); pids+=("$a")
  # The pending gauge is refreshed once a second; the end is when the created counter last
  # moved before the gauge reached 0.
  local created="" last="" t1="$t0"
  while :; do
    created=$(metric 'iomt_fhir_resources_saved_total{sink="fhir",outcome="created"}')
    if [ "$created" != "$last" ]; then last="$created"; t1=$(date +%s.%N); fi
    [ "$(metric 'iomt_buffer_pending_records{sink="fhir"}')" = "0" ] && [ -n "$created" ] && break
    sleep 0.05
  done
  # CPU seconds of the agent and of the server over the drain (utime + stime, clock ticks).
  local tck; tck=$(getconf CLK_TCK)
  local acpu; acpu=$(awk -v t="$tck" '{ printf "%.1f", ($14 + $15) / t }' "/proc/$a/stat")
  stop_agent "$a"
  echo "$(echo "$t1 - $t0" | bc) $created $acpu"
}

# Server-side span of a run: first to last FHIR request in the server's log.
span() { curl -s "$base/\$test/log?since=0" | python3 -c '
import json, sys
from datetime import datetime
e = [x for x in json.load(sys.stdin)["entries"] if x.get("endpoint") == "fhir" and not x["url"].startswith("/$test")]
t = [datetime.fromisoformat(x["at"].replace("Z", "+00:00")).timestamp() for x in e]
print("%.2f" % (max(t) - min(t)) if t else "0")'; }

single() { # $1 = label
  local secs obs acpu reqs aspan
  read -r secs obs acpu < <(drain "")
  curl -s "$base/\$test/stats" >"$work/stats.json"
  reqs=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["total"])' "$work/stats.json")
  aspan=$(span)
  if [ -n "${BENCH_KEEP:-}" ]; then curl -s "$base/\$test/log?since=0" >"$work/log-$1.json"; fi
  echo "agent $(echo "$reqs / $aspan" | bc -l)" >>"$work/rates"
  echo "agent single requests ($1): $N readings, $obs Observations, $reqs requests in ${secs}s: $(echo "$obs / $secs" | bc) Observations/s, $(echo "$reqs / $secs" | bc) requests/s; agent CPU ${acpu}s; server-side span ${aspan}s = $(echo "$reqs / $aspan" | bc) requests/s"
}

loadgen() { # $1 = label, $2 = request file (default requests.json)
  curl -s -X POST "$base/\$test/reset" >/dev/null
  local out lspan
  out=$(node "$root/bench/fhir-loadgen.mjs" "$base" "$work/${2:-requests.json}" "$C")
  lspan=$(span)
  if [ -n "${BENCH_KEEP:-}" ]; then curl -s "$base/\$test/log?since=0" >"$work/log-loadgen-$1.json"; fi
  python3 -c '
import json, sys
r = json.loads(sys.argv[1]); span = float(sys.argv[3])
print("loadgen same mix (%s): %d requests in %.2fs (client clock): %.0f requests/s; statuses %s; server-side span %.2fs = %.0f requests/s" % (
    sys.argv[2], r["requests"], r["seconds"], r["rps"], r["byStatus"], span, r["requests"] / span))
open(sys.argv[4], "a").write("loadgen %f\n" % (r["requests"] / span))' "$out" "$1" "$lspan" "$work/rates"
}

# The first run warms the server up (Node's JIT) and gives the request mix.
single "warm-up"
if [ -n "${BENCH_VERBOSE:-}" ]; then cat "$work/stats.json" >&2; fi
# The same request mix for the load generator: the server's log plus bodies from its export.
curl -s "$base/\$test/log?since=0" >"$work/log.json"
curl -s "$base/\$test/export" >"$work/export.ndjson"
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
bodies = {}
for line in open(f"{work}/export.ndjson"):
    if line.strip():
        r = json.loads(line)
        r.pop("meta", None)
        bodies[f"/{r['resourceType']}/{r['id']}"] = r
reqs = []
for e in json.load(open(f"{work}/log.json"))["entries"]:
    if e.get("endpoint") != "fhir" or e["url"].startswith("/$test") or e["url"].startswith("/metadata"):
        continue
    r = {"method": e["method"], "url": e["url"]}
    if e["method"] == "PUT":
        r["body"] = bodies[e["url"].split("?")[0]]
    reqs.append(r)
json.dump(reqs, open(f"{work}/requests.json", "w"))
# The same requests with every Observation search before every write: what batch Bundles do
# (a batch's searches all see the store as it was before the batch).
obs_get = [r for r in reqs if r["method"] == "GET" and r["url"].startswith("/Observation")]
rest = [r for r in reqs if not (r["method"] == "GET" and r["url"].startswith("/Observation"))]
json.dump(obs_get + rest, open(f"{work}/requests-searches-first.json", "w"))
PY
: >"$work/rates"
for round in $(seq "${ROUNDS:-3}"); do
  single "measured $round"
  loadgen "$round"
done
python3 - "$work/rates" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
agent = [float(v) for k, v in rows if k == "agent"]
gen = [float(v) for k, v in rows if k == "loadgen"]
ratios = [a / g for a, g in zip(agent, gen)]
print("agent / server capacity (same mix, same concurrency), per round: %s; median %.0f%%" % (
    ", ".join("%.0f%%" % (100 * r) for r in ratios), 100 * statistics.median(ratios)))
PY
loadgen "searches first" requests-searches-first.json >/dev/null
loadgen "searches first" requests-searches-first.json
read -r secs obs acpu < <(drain "batch_bundle = true")
aspan=$(span)
reqs=$(curl -s "$base/\$test/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["total"], s["entries"]["total"], s["byMethodType"])')
if [ -n "${BENCH_VERBOSE:-}" ]; then curl -s "$base/\$test/stats" >&2; fi
echo "agent batch bundles: $N readings, $obs Observations in ${secs}s: $(echo "$obs / $secs" | bc) Observations/s (requests, bundle entries, by type: $reqs); agent CPU ${acpu}s; server-side span ${aspan}s"
