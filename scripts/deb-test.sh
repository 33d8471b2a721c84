#!/usr/bin/env bash
# Builds the iomt-edge Debian package with cargo-deb and checks it without touching the host:
#
#   scripts/deb-test.sh              # amd64, and arm64 when the aarch64 cross gcc is installed
#   scripts/deb-test.sh amd64 arm64  # explicit (arm64 needs scripts/cross-test.sh's toolchain)
#
# Per architecture:
#   1. `cargo deb -p iomt-agent` (arm64: `--target aarch64-unknown-linux-gnu`, in the same target
#      dir as scripts/cross-test.sh, so a cross build made there is reused);
#   2. the control data: name, architecture, Depends (systemd), conffiles, and every maintainer
#      script through `sh -n` and shellcheck (installed with apt if missing);
#   3. the file list: every expected path is there, nothing unexpected;
#   4. install into a scratch root with `dpkg --root=<tmp> --force-script-chrootless`, so the
#      maintainer scripts really run (with DPKG_ROOT=<tmp>): user iomt-edge in dialout, state
#      and credentials directories with their owners and modes, the unit enabled but NOT started
#      and no ward.toml written; the installed binary runs (arm64: under qemu) and maps the
#      installed example message with the installed templates;
#   5. purge from the scratch root: the files and the enable link are gone, the durable log
#      directory is kept.
#
# Environment: CARGO_TARGET_DIR (amd64 build; default <repo>/target), CROSS_TARGET_BASE (as in
# scripts/cross-test.sh, default <repo>/target/cross), DEB_OUT (default <target dir>/debian-test).
# Installs cargo-deb (`cargo install cargo-deb --locked`, a few minutes) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
HOST_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CROSS_BASE=${CROSS_TARGET_BASE:-$ROOT/target/cross}
OUT=${DEB_OUT:-$HOST_TARGET_DIR/debian-test}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
note() { echo "::: deb: $*"; }
fail() { echo "::: deb: FAILED: $*" >&2; exit 1; }
declare -a SUMMARY=()

if ! command -v cargo-deb >/dev/null 2>&1; then
  note "installing cargo-deb (cargo install cargo-deb --locked)"
  t0=$SECONDS
  cargo install cargo-deb --locked
  note "cargo-deb installed in $((SECONDS - t0))s"
fi
if ! command -v shellcheck >/dev/null 2>&1; then
  note "installing Debian package: shellcheck"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends shellcheck >/dev/null
fi
note "$(cargo deb --version 2>/dev/null || echo cargo-deb)"

# Paths the package must contain (data part), sorted; anything else is unexpected.
expected_files() {
  {
    cat <<'EOF'
./etc/iomt-edge/ward.toml.example
./lib/systemd/system/iomt-agent.service
./usr/bin/iomt-agent
./usr/lib/sysusers.d/iomt-edge.conf
./usr/lib/tmpfiles.d/iomt-edge.conf
./usr/share/doc/iomt-edge/README.md
./usr/share/doc/iomt-edge/copyright
./usr/share/doc/iomt-edge/examples/dbus/iomt-edge-bluez.conf.example
./usr/share/doc/iomt-edge/examples/systemd/credentials.conf.example
./usr/share/doc/iomt-edge/examples/systemd/serial-ports.conf.example
./usr/share/doc/iomt-edge/examples/ward.toml.example
./usr/share/doc/iomt-edge/operations.md
./usr/share/iomt-edge/templates/README.md
EOF
    (cd templates && for f in *.json; do echo "./usr/share/iomt-edge/templates/$f"; done)
    (cd examples && for f in *.toml; do echo "./usr/share/doc/iomt-edge/examples/$f"; done)
    (cd templates/examples && for f in *.msg.json; do echo "./usr/share/iomt-edge/templates/examples/$f"; done)
  } | LC_ALL=C sort
}

check_deb() {
  local arch=$1 deb=$2 runner=$3 tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN

  note "$arch: $(basename "$deb"), $(stat -c %s "$deb") bytes"
  [ "$(dpkg-deb -f "$deb" Package)" = iomt-edge ] || fail "package name is $(dpkg-deb -f "$deb" Package)"
  [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "architecture is $(dpkg-deb -f "$deb" Architecture), want $arch"
  local depends
  depends=$(dpkg-deb -f "$deb" Depends)
  echo "    Depends: $depends"
  grep -qw systemd <<<"$depends" || fail "Depends does not name systemd"

  # Control part: conffiles and maintainer scripts.
  dpkg-deb -e "$deb" "$tmp/control"
  grep -qx /etc/iomt-edge/ward.toml.example "$tmp/control/conffiles" ||
    fail "conffiles lacks /etc/iomt-edge/ward.toml.example: $(cat "$tmp/control/conffiles" 2>/dev/null)"
  ! grep -q '^/etc/iomt-edge/ward.toml$' "$tmp/control/conffiles" || fail "the package must not own ward.toml"
  local s
  for s in postinst prerm postrm; do
    [ -x "$tmp/control/$s" ] || fail "maintainer script $s missing or not executable"
    sh -n "$tmp/control/$s" || fail "$s: sh -n"
    shellcheck -s sh "$tmp/control/$s" || fail "$s: shellcheck"
  done
  echo "    maintainer scripts postinst prerm postrm: sh -n and shellcheck clean"

  # Data part: exactly the expected files.
  dpkg-deb --fsys-tarfile "$deb" | tar -t | grep -v '/$' | LC_ALL=C sort >"$tmp/files"
  expected_files >"$tmp/expected"
  if ! diff -u "$tmp/expected" "$tmp/files" >"$tmp/files.diff"; then
    cat "$tmp/files.diff"
    fail "file list differs from the expected one (- missing, + unexpected)"
  fi
  echo "    $(wc -l <"$tmp/files") files, as expected"

  # Scratch root with the few base files the maintainer scripts rely on.
  local R=$tmp/root
  mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/lib/dpkg/triggers" "$R/var/log" "$R/etc" "$R/run"
  : >"$R/var/lib/dpkg/status"
  printf 'root:x:0:\ndialout:x:20:\n' >"$R/etc/group"
  printf 'root:x:0:0:root:/root:/bin/bash\n' >"$R/etc/passwd"
  local -a DPKG=(dpkg "--root=$R" --force-script-chrootless --force-depends --force-architecture
    "--log=$R/var/log/dpkg.log" "--admindir=$R/var/lib/dpkg")
  "${DPKG[@]}" -i "$deb" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "dpkg -i into the scratch root"; }
  grep -vE '^(Selecting|\(Reading|Preparing|Unpacking|Setting up|dpkg: warning: .*(depend|architecture)|dpkg: .*: dependency problems|\s*iomt-edge depends|\s*Package .* is not installed|\s*$)' "$tmp/install.log" | sed 's/^/    | /' || true

  grep -q '^iomt-edge:x:' "$R/etc/passwd" || fail "postinst did not create user iomt-edge"
  grep -qE '^dialout:x:20:(.*,)?iomt-edge(,|$)' "$R/etc/group" || fail "iomt-edge is not in dialout"
  local uid
  uid=$(grep '^iomt-edge:' "$R/etc/passwd" | cut -d: -f3)
  [ "$(stat -c '%a %u' "$R/var/lib/iomt-edge")" = "700 $uid" ] || fail "/var/lib/iomt-edge is $(stat -c '%a %u' "$R/var/lib/iomt-edge")"
  [ "$(stat -c '%a %u' "$R/etc/iomt-edge/credentials")" = "700 0" ] || fail "/etc/iomt-edge/credentials is $(stat -c '%a %u' "$R/etc/iomt-edge/credentials")"
  local wants=$R/etc/systemd/system/multi-user.target.wants/iomt-agent.service
  [ -L "$wants" ] || fail "postinst did not enable iomt-agent.service (no $wants)"
  [ ! -e "$R/etc/iomt-edge/ward.toml" ] || fail "the package wrote /etc/iomt-edge/ward.toml"
  echo "    installed: user iomt-edge (uid $uid, in dialout), state 0700, credentials 0700 root, unit enabled -> $(readlink "$wants"), no ward.toml, nothing started"

  local out rc=0
  out=$($runner "$R/usr/bin/iomt-agent" --version) || fail "installed binary: --version"
  $runner "$R/usr/bin/iomt-agent" map \
    --device-mapping "$R/usr/share/iomt-edge/templates/vitals.device.json" \
    --fhir-mapping "$R/usr/share/iomt-edge/templates/vitals.fhir.json" \
    "$R/usr/share/iomt-edge/templates/examples/spo2.msg.json" >"$tmp/map.json" || rc=$?
  [ "$rc" = 0 ] || fail "installed binary: map exited $rc"
  local n
  n=$(grep -cE '"resourceType" *: *"Observation"' "$tmp/map.json" || true)
  [ "$n" -ge 1 ] || fail "installed binary + installed templates: map printed no Observation"
  echo "    installed binary: $out; map with the installed templates: $n Observation(s)"
  if $runner "$R/usr/bin/iomt-agent" --help | grep -qE '^ +validate '; then
    sed -e "s#/usr/share/iomt-edge#$R/usr/share/iomt-edge#g" -e "s#/var/lib/iomt-edge#$tmp/state#g" \
      "$R/etc/iomt-edge/ward.toml.example" >"$tmp/ward.toml"
    $runner "$R/usr/bin/iomt-agent" validate --config "$tmp/ward.toml" >"$tmp/validate.out" 2>&1 ||
      { cat "$tmp/validate.out"; fail "validate of the shipped ward.toml.example exited $?"; }
    echo "    the shipped ward.toml.example validates"
  else
    echo "    (no 'validate' command in this binary yet: ward.toml.example not validated)"
  fi

  "${DPKG[@]}" --purge iomt-edge >"$tmp/purge.log" 2>&1 || { cat "$tmp/purge.log"; fail "dpkg --purge in the scratch root"; }
  [ ! -e "$R/usr/bin/iomt-agent" ] || fail "purge left /usr/bin/iomt-agent"
  [ ! -e "$R/etc/iomt-edge/ward.toml.example" ] || fail "purge left ward.toml.example"
  [ ! -L "$wants" ] || fail "purge left the enable link"
  [ ! -L "$R/etc/systemd/system/iomt-agent.service" ] || fail "purge left a mask link"
  [ -d "$R/var/lib/iomt-edge" ] || fail "purge deleted /var/lib/iomt-edge (it may hold undelivered readings)"
  echo "    purged: files, conffile and enable link gone; /var/lib/iomt-edge kept"
  SUMMARY+=("$arch: $(basename "$deb") $(stat -c %s "$deb") bytes, ok")
}

build_amd64() {
  rm -f "$OUT"/iomt-edge_*_amd64.deb
  note "amd64: cargo deb"
  local t0=$SECONDS deb
  CARGO_TARGET_DIR=$HOST_TARGET_DIR cargo deb -p iomt-agent --output "$OUT/" -- --locked >"$OUT/build-amd64.log" 2>&1 ||
    { tail -30 "$OUT/build-amd64.log"; fail "cargo deb (amd64)"; }
  local debs=("$OUT"/iomt-edge_*_amd64.deb)
  { [ ${#debs[@]} = 1 ] && [ -f "${debs[0]}" ]; } || fail "expected one iomt-edge_*_amd64.deb in $OUT, found: ${debs[*]}"
  deb=${debs[0]}
  note "amd64: built in $((SECONDS - t0))s"
  check_deb amd64 "$deb" ""
}

build_arm64() {
  local triple=aarch64-unknown-linux-gnu prefix=aarch64-linux-gnu
  command -v "$prefix-gcc" >/dev/null || fail "arm64 needs $prefix-gcc: run scripts/cross-test.sh aarch64 first"
  rm -f "$OUT"/iomt-edge_*_arm64.deb
  note "arm64: cargo deb --target $triple"
  local t0=$SECONDS deb
  CARGO_TARGET_DIR=$CROSS_BASE/$triple \
    CC_aarch64_unknown_linux_gnu=$prefix-gcc AR_aarch64_unknown_linux_gnu=$prefix-ar \
    PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_aarch64_unknown_linux_gnu=$prefix-pkg-config \
    cargo deb -p iomt-agent --target "$triple" --output "$OUT/" -- --locked >"$OUT/build-arm64.log" 2>&1 ||
    { tail -30 "$OUT/build-arm64.log"; fail "cargo deb (arm64)"; }
  local debs=("$OUT"/iomt-edge_*_arm64.deb)
  { [ ${#debs[@]} = 1 ] && [ -f "${debs[0]}" ]; } || fail "expected one iomt-edge_*_arm64.deb in $OUT, found: ${debs[*]}"
  deb=${debs[0]}
  note "arm64: built in $((SECONDS - t0))s"
  check_deb arm64 "$deb" "env -u QEMU_LD_PREFIX qemu-aarch64"
}

mkdir -p "$OUT"
if [ $# -eq 0 ]; then
  set -- amd64
  command -v aarch64-linux-gnu-gcc >/dev/null && set -- amd64 arm64
fi
for a in "$@"; do
  case $a in
    amd64) build_amd64 ;;
    arm64) build_arm64 ;;
    *) fail "unknown architecture '$a' (amd64|arm64)" ;;
  esac
done
for s in "${SUMMARY[@]}"; do note "$s"; done
note "ok (${SECONDS}s)"
