#!/usr/bin/env bash
# Installs what the test suite needs and is not there yet. Idempotent; quiet when all is
# present. Uses sudo when not root.
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

need_apt=()
# mosquitto (+ mosquitto_passwd): the MQTT source tests start a real broker; socat: the serial
# source tests make pty links that can be unplugged; openssl: the MQTT tests make a CA.
for pkg_bin in "pkg-config:pkg-config" "mosquitto:mosquitto" "mosquitto:mosquitto_passwd" \
               "socat:socat" "openssl:openssl"; do
  pkg=${pkg_bin%%:*}; bin=${pkg_bin##*:}
  command -v "$bin" >/dev/null 2>&1 || [[ " ${need_apt[*]} " == *" $pkg "* ]] || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
