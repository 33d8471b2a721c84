#!/usr/bin/env bash
# Builds iomt-agent for the ARM gateway targets WITHOUT Docker and smoke-tests it under qemu-user.
#
#   scripts/cross-test.sh                 # aarch64 (what CI runs)
#   scripts/cross-test.sh aarch64 armv7   # both
#
# Steps per target:
#   1. install (idempotent, quiet when present): the rustup target, Debian's cross gcc and libc
#      headers, qemu-user, and through dpkg multiarch the target's libc6 and libdbus-1-dev.
#      libdbus is for btleplug/BlueZ (libdbus-sys finds it through <prefix>-pkg-config). The
#      multiarch libc6 is also what makes glibc binaries
#      work under qemu: with `qemu-aarch64 -L /usr/aarch64-linux-gnu` (the cross sysroot) the
#      first thread spawn hangs (shared/docs/eventhubs-cross-systemd.md §2.2), so qemu runs
#      here WITHOUT -L and finds the multiarch loader in /lib.
#   2. `cargo build --release --locked -p iomt-agent --target <triple>`, in a target dir of its own
#      (<CROSS_TARGET_BASE>/<triple>), timed; prints the binary's size once stripped and the
#      shared libraries it needs.
#   3. smoke under qemu: `--version`; `map` of templates/examples/spo2.msg.json (exit 0 and at
#      least one Observation); and when the binary has them, `validate` of examples/demo.toml
#      (exit 0, and 78 on a config with an unknown key) and a short `run` of examples/demo.toml
#      with a temporary state dir (clean exit 0 on SIGINT, Observation lines in the outbox).
#
# Environment:
#   CROSS_TARGET_BASE   parent of the per-target target dirs (default: <repo>/target/cross)
#   CROSS_SKIP_INSTALL  1: install nothing (fail if something is missing)
#   CROSS_TESTS         1: also run `cargo test -p iomt-agent --target <triple>` under qemu (slow:
#                       a debug build of every test binary for the target)
#   CROSS_RUN_SECS      length of the `run` smoke in seconds (default 8; qemu is slow to start)
#   CROSS_TEST_SKIP     test-name filters skipped under CROSS_TESTS (default: the buffer SIGKILL
#                       harness, which re-executes its own binary: without binfmt_misc for qemu
#                       that child cannot start, exit 127). Set it empty to run everything.
#
# Linkers come from .cargo/config.toml; the C compilers (for crates that build C, e.g. rusqlite's
# bundled SQLite, aws-lc-sys) and the qemu runner are exported here for the target only.
# armv7 differs: no multiarch (see arch_info), qemu-arm runs with -L /usr/arm-linux-gnueabihf.
# musl targets are not built here: Debian has no aarch64 musl cross gcc; see cross/Cross.toml
# and docs/operations.md for the cargo-zigbuild / cross routes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
TARGET_BASE=${CROSS_TARGET_BASE:-$ROOT/target/cross}
RUN_SECS=${CROSS_RUN_SECS:-8}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

declare -a SUMMARY=()
note() { echo "::: cross: $*"; }
fail() { echo "::: cross: FAILED: $*" >&2; exit 1; }

# arch -> triple, Debian arch, GNU prefix, qemu binary, multiarch (yes/no).
# aarch64 uses multiarch (libc6:arm64 for qemu, libdbus-1-dev:arm64 for BlueZ). armv7 does NOT:
# its cross sysroot works under `qemu-arm -L` (no thread hang there), and adding armhf to dpkg
# makes every later `apt-get update` on the machine depend on the armhf indexes too (seen here:
# a stale armhf security index broke apt-get update until the architecture was removed again).
# libdbus for armv7 therefore comes from the agent's `ble-vendored-dbus` feature (libdbus built
# from source with the cross gcc), passed below for every target without multiarch.
arch_info() {
  case $1 in
    aarch64) echo "aarch64-unknown-linux-gnu arm64 aarch64-linux-gnu qemu-aarch64 yes" ;;
    armv7) echo "armv7-unknown-linux-gnueabihf armhf arm-linux-gnueabihf qemu-arm no" ;;
    *) return 1 ;;
  esac
}

# A mirror mid-sync makes `apt-get update` fail on one index now and then: retry once, then go on
# (the install below fails if what it needs is really missing).
apt_update() {
  $SUDO apt-get update -qq || { sleep 10; $SUDO apt-get update -qq; } ||
    note "apt-get update reported errors; trying the install anyway"
}

deb_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

install_deps() {
  local triple=$1 debarch=$2 prefix=$3 multiarch=$4
  if ! rustup target list --installed | grep -qx "$triple"; then
    note "rustup target add $triple"
    rustup target add "$triple"
  fi
  local -a need=()
  local p
  local -a pkgs=("gcc-$prefix" "libc6-dev-$debarch-cross" qemu-user)
  [ "$multiarch" = yes ] && pkgs+=("libc6:$debarch" "libdbus-1-dev:$debarch")
  for p in "${pkgs[@]}"; do
    deb_installed "$p" || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  [ -n "${CROSS_SKIP_INSTALL:-}" ] && fail "missing Debian packages: ${need[*]}"
  if [ "$multiarch" = yes ] && ! dpkg --print-foreign-architectures | grep -qx "$debarch"; then
    note "dpkg --add-architecture $debarch"
    $SUDO dpkg --add-architecture "$debarch"
  fi
  note "installing Debian packages: ${need[*]}"
  apt_update
  # libc6:<arch> must have the same version as the host's libc6; apt upgrades the host's if needed.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# Runs the target binary under qemu: aarch64 with the multiarch loader (no -L: see the header),
# armv7 with the cross sysroot (-L).
qrun() { env -u QEMU_LD_PREFIX "${QEMU[@]}" "$BIN" "$@"; }

smoke() {
  local tmp=$1 out rc
  note "smoke: --version"
  out=$(qrun --version) || fail "--version exited $?"
  echo "    $out"
  case $out in iomt-agent\ *) ;; *) fail "--version printed '$out'" ;; esac

  note "smoke: map templates/examples/spo2.msg.json"
  rc=0
  qrun map --device-mapping templates/vitals.device.json --fhir-mapping templates/vitals.fhir.json \
    templates/examples/spo2.msg.json >"$tmp/map.json" || rc=$?
  [ "$rc" = 0 ] || { cat "$tmp/map.json"; fail "map exited $rc"; }
  local n
  n=$(grep -cE '"resourceType" *: *"Observation"' "$tmp/map.json" || true)
  [ "$n" -ge 1 ] || { head -c 2000 "$tmp/map.json"; fail "map printed no Observation"; }
  echo "    exit 0, $n Observation(s)"

  local help
  help=$(qrun --help)
  if grep -qE '^ +validate ' <<<"$help"; then
    note "smoke: validate examples/demo.toml"
    qrun validate --config examples/demo.toml >"$tmp/validate.out" 2>&1 ||
      { cat "$tmp/validate.out"; fail "validate of examples/demo.toml exited $?"; }
    sed 's/^/    /' "$tmp/validate.out" | head -5
    # An unknown key must be a configuration error: exit 78, which the unit does not restart on.
    sed 's/^ward = /wrad = /' examples/demo.toml >"$tmp/bad.toml"
    sed -i "s#\"\\.\\./#\"$ROOT/#" "$tmp/bad.toml"
    rc=0
    qrun validate --config "$tmp/bad.toml" >"$tmp/validate-bad.out" 2>&1 || rc=$?
    [ "$rc" = 78 ] || { cat "$tmp/validate-bad.out"; fail "validate of a config with an unknown key exited $rc, want 78"; }
    echo "    bad config: exit 78"
  else
    note "smoke: this binary has no 'validate' command yet: skipped"
  fi

  if grep -qE '^ +run ' <<<"$help"; then
    local port state="$tmp/state"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    note "smoke: run examples/demo.toml for ${RUN_SECS}s (state $state, admin 127.0.0.1:$port)"
    rc=0
    timeout --preserve-status -s INT -k 20 "$RUN_SECS" env -u QEMU_LD_PREFIX "${QEMU[@]}" "$BIN" run \
      --config examples/demo.toml --state-dir "$state" --admin-addr "127.0.0.1:$port" \
      >"$tmp/run.out" 2>&1 &
    local pid=$!
    sleep $((RUN_SECS - 2))
    if command -v curl >/dev/null; then
      echo "    /readyz: $(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || echo unreachable)"
    fi
    wait "$pid" || rc=$?
    tail -5 "$tmp/run.out" | sed 's/^/    /'
    [ "$rc" = 0 ] || fail "run exited $rc on SIGINT, want 0 (clean shutdown)"
    n=$(cat "$state"/outbox/*.ndjson 2>/dev/null | grep -cE '"resourceType" *: *"Observation"' || true)
    [ "$n" -ge 1 ] || fail "run wrote no Observation to $state/outbox"
    echo "    exit 0, $n Observation line(s) in the outbox"
  else
    note "smoke: this binary has no 'run' command yet: skipped"
  fi
}

one_target() {
  local arch=$1 triple debarch prefix qemu multiarch
  read -r triple debarch prefix qemu multiarch < <(arch_info "$arch") || fail "unknown target '$arch' (aarch64|armv7)"
  QEMU=("$qemu")
  [ "$multiarch" = yes ] || QEMU+=(-L "/usr/$prefix")
  local t0=$SECONDS
  install_deps "$triple" "$debarch" "$prefix" "$multiarch"
  local t_install=$((SECONDS - t0))

  local tvar=${triple//-/_}
  local TVAR=${tvar^^}
  export "CC_$tvar=$prefix-gcc" "AR_$tvar=$prefix-ar"
  export "CARGO_TARGET_${TVAR}_RUNNER=${QEMU[*]}"
  export PKG_CONFIG_ALLOW_CROSS=1 "PKG_CONFIG_$tvar=$prefix-pkg-config"
  export CARGO_TARGET_DIR=$TARGET_BASE/$triple

  note "build $triple (release) in $CARGO_TARGET_DIR"
  t0=$SECONDS
  local TIMEFORMAT="    build: %R s wall, %U s user, %S s sys"
  local FEATURES=()
  [ "$multiarch" = yes ] || FEATURES=(--features ble-vendored-dbus)
  time cargo build --release --locked -p iomt-agent --bin iomt-agent --target "$triple" "${FEATURES[@]}"
  local t_build=$((SECONDS - t0))
  BIN=$CARGO_TARGET_DIR/$triple/release/iomt-agent
  [ -x "$BIN" ] || fail "no binary at $BIN"

  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  "$prefix-strip" -o "$tmp/iomt-agent.stripped" "$BIN"
  local size stripped
  size=$(stat -c %s "$BIN")
  stripped=$(stat -c %s "$tmp/iomt-agent.stripped")
  note "binary $BIN: $size bytes as built, $stripped bytes stripped ($(awk "BEGIN{printf \"%.2f\", $stripped/1048576}") MiB)"
  echo "    $(file -b "$BIN" | cut -d, -f1-2)"
  echo "    NEEDED: $("$prefix-readelf" -d "$BIN" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"

  t0=$SECONDS
  smoke "$tmp"
  local t_smoke=$((SECONDS - t0))

  local t_tests=-
  if [ -n "${CROSS_TESTS:-}" ]; then
    note "cargo test -p iomt-agent --target $triple (under ${QEMU[*]})"
    t0=$SECONDS
    local -a skip=()
    local f
    for f in ${CROSS_TEST_SKIP-sigkill_never_loses_acknowledged_data}; do skip+=(--skip "$f"); done
    time cargo test --locked --no-fail-fast -p iomt-agent --target "$triple" "${FEATURES[@]}" -- "${skip[@]}"
    t_tests=$((SECONDS - t0))
  fi
  rm -rf "$tmp"
  trap - EXIT
  SUMMARY+=("$triple: install ${t_install}s, build ${t_build}s, smoke ${t_smoke}s, tests ${t_tests}s, stripped ${stripped} bytes")
}

[ $# -gt 0 ] || set -- aarch64
for a in "$@"; do
  one_target "$a"
done
for s in "${SUMMARY[@]}"; do note "$s"; done
note "ok (${SECONDS}s)"
