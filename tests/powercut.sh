#!/usr/bin/env bash
# Power-loss simulation for the durable log (docs: buffer-store.md §2.3; decision 0001).
#
# Each cut: the store lives on ext4 on a loop device; the random writer (`buffer_crash writer`)
# runs for 0.1-1.5 s; it is frozen with SIGSTOP (no more writes or syncs); the backing image is
# copied, so the copy holds exactly what the block device had received (dirty page cache that
# was never written back is absent, as after a power cut); the writer is SIGKILLed; the copy is
# mounted (ext4 replays its journal) and `buffer_crash check` opens the store and checks it
# against the writer's protocol log. The checked copy becomes the image of the next cut, so the
# store is carried across cuts. A control run first proves the method: an un-fsynced file must
# be missing from a copy, an fsynced one complete.
#
# Needs root, losetup, mkfs.ext4 and mount (util-linux, e2fsprogs). Does not model torn sectors,
# reordering in a device cache or storage that lies about flushes: repeat on the real gateway.
#
# Usage: sudo tests/powercut.sh            (CUTS=50 SEED=1 IMG_MB=512 by default)
#        WRITER_MODE=writer-lying CUTS=20 tests/powercut.sh
#          negative control: the writer logs "committed" before its commit; the checks must
#          then report lost acknowledged appends on some cuts (the script exits non-zero).
set -euo pipefail

CUTS=${CUTS:-50}
WRITER_MODE=${WRITER_MODE:-writer}
SEED=${SEED:-1}
IMG_MB=${IMG_MB:-512}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BIN:-$TARGET/release/examples/buffer_crash}

if [ "$(id -u)" != 0 ]; then
  echo "powercut.sh needs root (loop devices and mounts)" >&2
  exit 2
fi
for tool in losetup mkfs.ext4 mount umount; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done
if [ -z "${BIN_PREBUILT:-}" ]; then
  (cd "$ROOT" && cargo build --quiet --release -p iomt-agent --example buffer_crash)
fi

WORK=$(mktemp -d /tmp/powercut.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT"
LOOP=""
WRITER=""

cleanup() {
  set +e
  [ -n "$WRITER" ] && kill -KILL "$WRITER" 2>/dev/null
  mountpoint -q "$MNT" && umount "$MNT"
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

attach_mount() { # image
  LOOP=$(losetup -f --show "$1")
  mount -t ext4 "$LOOP" "$MNT"
}
unmount_detach() {
  umount "$MNT"
  losetup -d "$LOOP"
  LOOP=""
}

# --- control run: validates that a copy of the image loses what was not fsynced
truncate -s 64M "$WORK/img"
mkfs.ext4 -q -F "$WORK/img"
attach_mount "$WORK/img"
dd if=/dev/urandom of="$MNT/unsynced" bs=1M count=10 status=none
dd if=/dev/urandom of="$MNT/synced" bs=1M count=10 conv=fsync status=none
cp --sparse=always "$WORK/img" "$WORK/copy.img"
unmount_detach
attach_mount "$WORK/copy.img"
unsynced=$(stat -c %s "$MNT/unsynced" 2>/dev/null || echo missing)
synced=$(stat -c %s "$MNT/synced" 2>/dev/null || echo missing)
unmount_detach
echo "control: unsynced file in copy: $unsynced bytes (want 0 or missing); synced: $synced bytes (want 10485760)"
if [ "$synced" != 10485760 ] || { [ "$unsynced" != 0 ] && [ "$unsynced" != missing ]; }; then
  echo "control run failed: this machine's loop/page-cache behaviour does not simulate a power cut" >&2
  exit 3
fi

# --- the cuts
rm -f "$WORK/img" "$WORK/copy.img"
truncate -s "${IMG_MB}M" "$WORK/img"
mkfs.ext4 -q -F "$WORK/img"
RANDOM=$SEED
ok=0
failed=0
for i in $(seq 1 "$CUTS"); do
  attach_mount "$WORK/img"
  "$BIN" "$WRITER_MODE" "$MNT/buffer.db" "$WORK/run-$i.log" $((SEED * 1000 + i)) 2>"$WORK/writer-$i.err" &
  WRITER=$!
  ms=$((100 + RANDOM % 1400))
  sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
  if ! kill -STOP "$WRITER" 2>/dev/null; then
    echo "cut $i: writer died by itself: $(cat "$WORK/writer-$i.err")" >&2
    exit 4
  fi
  cp --sparse=always "$WORK/img" "$WORK/copy.img"
  kill -KILL "$WRITER"
  wait "$WRITER" 2>/dev/null || true
  WRITER=""
  unmount_detach
  attach_mount "$WORK/copy.img"
  if out=$("$BIN" check "$MNT/buffer.db" "$WORK/run-$i.log" "$WORK/carried"); then
    ok=$((ok + 1))
  else
    failed=$((failed + 1))
  fi
  echo "cut $i after ${ms} ms: $out"
  unmount_detach
  mv "$WORK/copy.img" "$WORK/img"
done
echo "power cuts: $CUTS, passed: $ok, failed: $failed"
[ "$failed" = 0 ]
