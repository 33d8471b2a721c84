#!/usr/bin/env bash
# Installs what the test suite needs and is not there yet. Idempotent; quiet when all is
# present. Uses sudo when not root.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# Debian packages (checked with dpkg, host architecture):
#   pkg-config, libdbus-1-dev: build btleplug's libdbus-sys (the agent's `ble` feature)
#   dbus-daemon, python3-dbus, python3-gi, python3-venv: the BLE integration test's private
#   bus and python-dbusmock (tests/ble-mock/setup-venv.sh)
arch=$(dpkg --print-architecture)
need_apt=()
# package:command pairs; a package is installed when its command is missing.
for pkg_bin in \
  "pkg-config:pkg-config" \
  "e2fsprogs:mkfs.ext4" \
  "util-linux:losetup" \
  "curl:curl" \
  "nodejs:node" \
  "npm:npm" \
  "python3-venv:python3" \
  "gcc:cc" \
  "mosquitto:mosquitto" \
  "mosquitto:mosquitto_passwd" \
  "socat:socat" \
  "openssl:openssl" \
  ; do
  pkg=${pkg_bin%%:*}; bin=${pkg_bin##*:}
  command -v "$bin" >/dev/null 2>&1 || [[ " ${need_apt[*]} " == *" $pkg "* ]] || need_apt+=("$pkg")
done
for pkg in pkg-config libdbus-1-dev dbus-daemon python3-dbus python3-gi python3-venv; do
  dpkg -s "$pkg:$arch" >/dev/null 2>&1 || dpkg -s "$pkg" 2>/dev/null | grep -q "^Architecture: all" ||
    need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
# PyPI: python-dbusmock in a venv of Debian's python3 (idempotent; prints its python).
tests/ble-mock/setup-venv.sh >/dev/null
