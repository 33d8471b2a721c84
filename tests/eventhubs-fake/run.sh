#!/usr/bin/env bash
# Creates tests/eventhubs-fake/.venv with python-qpid-proton (idempotent: skipped when the
# venv already holds the requirements.txt it was built from; concurrent first installs are
# serialised with flock), then runs fake_eventhubs.py in the foreground via exec, so the PID
# of this script is the fake's PID (stop it with kill <pid>). All arguments go to
# fake_eventhubs.py (see its --help); its stdout's first line is `LISTENING 127.0.0.1:<port>`,
# install output goes to stderr.
#   run.sh --install-only     install and exit
#   PYTHON=/path/to/python3   build the venv with another interpreter (>= 3.9)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
stamp="$venv/.iomt-requirements"
if command -v flock >/dev/null 2>&1; then
  exec 9>"${TMPDIR:-/tmp}/iomt-eventhubs-fake-venv.lock"
  flock 9
fi
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$stamp"; then
  start_ns=$(date +%s%N)
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
    -r "$here/requirements.txt" >&2
  cp "$here/requirements.txt" "$stamp"
  echo "eventhubs-fake: venv ready in $(( ($(date +%s%N) - start_ns) / 1000000 )) ms" >&2
fi
exec 9>&- # release the install lock; the fake must not hold it
if [ "${1:-}" = "--install-only" ]; then exit 0; fi
exec "$venv/bin/python" -u "$here/fake_eventhubs.py" "$@"
