#!/usr/bin/env bash
# Creates (idempotently) the Python environment that plays BlueZ for the BLE integration test:
# a venv of Debian's own interpreter with --system-site-packages, so that dbus-python and
# PyGObject come from apt (python3-dbus, python3-gi: nothing to compile), plus python-dbusmock
# from PyPI, pinned (0.38.1 sets dict-typed properties such as ManufacturerData, which
# Debian 12's python3-dbusmock 0.28.7 cannot).
#
#   tests/ble-mock/setup-venv.sh            # venv in tests/ble-mock/.venv
#   BLE_MOCK_VENV=/path tests/ble-mock/setup-venv.sh
#
# Prints the venv's python path on the last line.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV=${BLE_MOCK_VENV:-$HERE/.venv}
DBUSMOCK_VERSION=0.38.1
# Debian's interpreter, never a pyenv/conda python3 that may come first on PATH (it would
# lack the apt-installed dbus and gi modules).
SYS_PY=${BLE_MOCK_SYSTEM_PYTHON:-/usr/bin/python3}
if [ -x "$VENV/bin/python" ] &&
  "$VENV/bin/python" -c "import dbus, gi, dbusmock, importlib.metadata as m; assert m.version('python-dbusmock') == '$DBUSMOCK_VERSION'" 2>/dev/null; then
  echo "$VENV/bin/python"
  exit 0
fi
"$SYS_PY" -c "import dbus, gi" || {
  echo "Debian's $SYS_PY lacks python3-dbus / python3-gi (apt-get install python3-dbus python3-gi)" >&2
  exit 1
}
rm -rf "$VENV"
"$SYS_PY" -m venv --system-site-packages "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "python-dbusmock==$DBUSMOCK_VERSION"
"$VENV/bin/python" -c "import dbus, gi, dbusmock"
echo "$VENV/bin/python"
