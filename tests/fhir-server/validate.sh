#!/usr/bin/env bash
# Creates tests/fhir-server/.venv with fhirkit-rs (idempotent: skipped when the
# venv already has the requirements.txt it was built from), then runs
# validate.py with all arguments. `validate.sh --install-only` just installs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
stamp="$venv/.iomt-requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$stamp"; then
  start_ns=$(date +%s%N)
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes -r "$here/requirements.txt" >&2
  cp "$here/requirements.txt" "$stamp"
  echo "fhir-server: validator venv ready in $(( ($(date +%s%N) - start_ns) / 1000000 )) ms" >&2
fi
if [ "${1:-}" = "--install-only" ]; then exit 0; fi
exec "$venv/bin/python" "$here/validate.py" "$@"
