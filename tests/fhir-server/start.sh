#!/usr/bin/env bash
# Installs the FHIR test server's npm packages (npm ci, skipped when node_modules
# already matches package-lock.json) and runs server.mjs in the foreground via
# exec, so the PID of this script is the server's PID (stop it with kill <pid>).
# All arguments go to server.mjs (see README.md); stdout's first line is
# `LISTENING 127.0.0.1:<port>`, install and log output go to stderr.
#   start.sh --install-only   install and exit
#   FHIR_NODE=/path/to/node   use another Node.js binary (>= 20.10)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
node_bin="${FHIR_NODE:-node}"
npm_bin="${FHIR_NPM:-npm}"

stamp=node_modules/.iomt-lock-installed
# Serialise concurrent first installs (e.g. smoke.sh and node --test started together).
if command -v flock >/dev/null 2>&1; then
  exec 9>"${TMPDIR:-/tmp}/iomt-fhir-server-npm-ci.lock"
  flock 9
fi
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  start_ns=$(date +%s%N)
  # EBADENGINE warnings on Node 20 are expected (see README.md): --loglevel=error.
  "$npm_bin" ci --no-audit --no-fund --loglevel=error >&2
  cp package-lock.json "$stamp"
  echo "fhir-server: npm ci took $(( ($(date +%s%N) - start_ns) / 1000000 )) ms" >&2
fi
exec 9>&- # release the install lock; the server must not hold it
if [ "${1:-}" = "--install-only" ]; then exit 0; fi

# @medplum/core 5.2.13 needs a global WebSocket at import time: built into
# Node >= 22; Node 20.10+/21 provide it behind --experimental-websocket.
read -r major minor < <("$node_bin" -p 'process.versions.node.split(".").slice(0,2).join(" ")')
flags=()
if [ "$major" -lt 20 ]; then
  echo "fhir-server: Node.js >= 20.10 required, found $("$node_bin" --version)" >&2
  exit 1
elif [ "$major" -lt 22 ]; then
  flags+=(--experimental-websocket)
fi
exec "$node_bin" "${flags[@]}" server.mjs "$@"
