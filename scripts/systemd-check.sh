#!/usr/bin/env bash
# Checks the systemd files in systemd/ without a running systemd (no PID 1 needed):
#
#   1. no trailing comments in the unit and the drop-in examples (systemd has none: a `#`
#      after a value becomes part of the value, see shared/docs/eventhubs-cross-systemd.md §3.1);
#   2. `systemd-analyze verify` of the unit, alone and with each drop-in example: FAILS ON ANY
#      OUTPUT, because verify exits 0 on most bad values (unknown keys, bad durations, bad
#      device rights...). ExecStart= must name an existing executable, so the unit is checked
#      from a temporary copy whose /usr/bin/iomt-agent points at a stub (the check is about the
#      unit, not the binary);
#   3. `systemd-analyze security --offline=yes`: prints the exposure and fails above
#      MAX_EXPOSURE (default 2.5, "OK");
#   4. the sysusers.d and tmpfiles.d files applied to a scratch root with `systemd-sysusers
#      --root` and `systemd-tmpfiles --root`: user iomt-edge exists, is in dialout, and the
#      directories get their owners and modes.
#
# Installs Debian's `systemd` package if systemd-analyze is missing (it provides
# systemd-analyze, systemd-sysusers and systemd-tmpfiles; nothing is started).
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXPOSURE=${MAX_EXPOSURE:-2.5}
UNIT=systemd/iomt-agent.service
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
note() { echo "::: systemd-check: $*"; }
fail() { echo "::: systemd-check: FAILED: $*" >&2; exit 1; }

if ! command -v systemd-analyze >/dev/null 2>&1; then
  note "installing Debian package: systemd (for systemd-analyze, -sysusers, -tmpfiles)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
note "$(systemd-analyze --version | head -1)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. Trailing comments: a non-comment line with whitespace then `#`.
bad=$(grep -nE '^[[:space:]]*[^#;[:space:]].*[[:space:]][#;]' "$UNIT" systemd/*.conf.example || true)
[ -z "$bad" ] || fail "trailing comments (systemd keeps them as part of the value):"$'\n'"$bad"
note "no trailing comments"

# 2. verify, against a copy whose binary is a stub.
mkdir -p "$tmp/bin" "$tmp/units"
printf '#!/bin/sh\nexit 0\n' >"$tmp/bin/iomt-agent"
chmod 755 "$tmp/bin/iomt-agent"
sed "s#/usr/bin/iomt-agent#$tmp/bin/iomt-agent#g" "$UNIT" >"$tmp/units/iomt-agent.service"
# SYSTEMD_UNIT_PATH makes verify load drop-ins from $tmp/units/iomt-agent.service.d/ (without
# it they are silently ignored); the trailing ":" keeps the default search path after it.
analyze() { (cd "$tmp/units" && SYSTEMD_UNIT_PATH="$tmp/units:" systemd-analyze "$@"); }
verify() {
  local out
  out=$(analyze verify --man=no ./iomt-agent.service 2>&1) ||
    fail "systemd-analyze verify $1 exited non-zero:"$'\n'"$out"
  [ -z "$out" ] || fail "systemd-analyze verify $1 printed (any output is a failure):"$'\n'"$out"
  note "verify $1: clean"
}
verify "the unit"
# Each drop-in example, on its own, as a ward would install it.
for d in systemd/*.conf.example; do
  rm -rf "$tmp/units/iomt-agent.service.d"
  mkdir -p "$tmp/units/iomt-agent.service.d"
  cp "$d" "$tmp/units/iomt-agent.service.d/$(basename "$d" .example)"
  verify "the unit + $(basename "$d")"
done
# Self-test, so that this check cannot pass by not looking: a bad drop-in must be reported.
printf '[Service]\nDeviceAllow=/dev/ttyUSB0 rwx\n' >"$tmp/units/iomt-agent.service.d/bad.conf"
analyze verify --man=no ./iomt-agent.service 2>&1 | grep -q "Invalid device rights" ||
  fail "self-test: verify did not report a bad drop-in, so drop-ins are not being checked"
rm -rf "$tmp/units/iomt-agent.service.d"

# 3. security exposure (0 = most restricted, 10 = unrestricted), for the unit as shipped and
#    with the serial-ports drop-in a ward with serial devices adds.
security() {
  local what=$1 exposure
  analyze security --offline=yes --no-pager ./iomt-agent.service >"$tmp/security.txt" 2>&1 || true
  exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$tmp/security.txt")
  [ -n "$exposure" ] || { cat "$tmp/security.txt"; fail "no exposure level in the security output"; }
  grep -E '^\s*✗' "$tmp/security.txt" | sed 's/^/    /' || true
  note "security exposure, $what: $exposure $(sed -n 's/.*Overall exposure level for [^:]*: [0-9.]* \([A-Z]*\).*/\1/p' "$tmp/security.txt") (max $MAX_EXPOSURE)"
  awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' ||
    fail "exposure $exposure ($what) is above $MAX_EXPOSURE"
}
security "unit as shipped"
mkdir -p "$tmp/units/iomt-agent.service.d"
cp systemd/serial-ports.conf.example "$tmp/units/iomt-agent.service.d/serial-ports.conf"
security "with serial-ports.conf"
rm -rf "$tmp/units/iomt-agent.service.d"

# 4. sysusers.d and tmpfiles.d in a scratch root.
root=$tmp/root
mkdir -p "$root/etc"
# The groups a Debian base system has (dialout is 20 there).
printf 'root:x:0:\ndialout:x:20:\n' >"$root/etc/group"
printf 'root:x:0:0:root:/root:/bin/bash\n' >"$root/etc/passwd"
# Installed where the package puts them, then applied as at package configuration.
install -D -m 644 systemd/iomt-edge.sysusers "$root/usr/lib/sysusers.d/iomt-edge.conf"
install -D -m 644 systemd/iomt-edge.tmpfiles "$root/usr/lib/tmpfiles.d/iomt-edge.conf"
systemd-sysusers --root="$root"
grep -q '^iomt-edge:x:[0-9]*:[0-9]*:[^:]*:/var/lib/iomt-edge:/usr/sbin/nologin$' "$root/etc/passwd" ||
  { cat "$root/etc/passwd"; fail "sysusers did not create user iomt-edge as expected"; }
grep -qE '^dialout:x:20:(.*,)?iomt-edge(,.*)?$' "$root/etc/group" ||
  { cat "$root/etc/group"; fail "iomt-edge is not in dialout"; }
note "sysusers: $(grep '^iomt-edge:' "$root/etc/passwd" | cut -d: -f1,3,4,6,7), $(grep '^dialout:' "$root/etc/group")"
systemd-tmpfiles --root="$root" --create
uid=$(grep '^iomt-edge:' "$root/etc/passwd" | cut -d: -f3)
[ "$(stat -c '%a %u' "$root/var/lib/iomt-edge")" = "700 $uid" ] ||
  fail "tmpfiles: /var/lib/iomt-edge is $(stat -c '%a %u' "$root/var/lib/iomt-edge"), want 700 $uid"
[ "$(stat -c '%a %u' "$root/etc/iomt-edge/credentials")" = "700 0" ] ||
  fail "tmpfiles: /etc/iomt-edge/credentials is $(stat -c '%a %u' "$root/etc/iomt-edge/credentials"), want 700 0"
note "tmpfiles: /var/lib/iomt-edge 0700 iomt-edge, /etc/iomt-edge/credentials 0700 root"
note "ok (${SECONDS}s)"
