#!/bin/bash
# Recovery time: `strata serve` (defaults: index checkpoint every 30 s) under
# 4 KiB random writes (fio, QD32) and, in another volume, 1 MiB sequential
# writes, is killed with SIGKILL after SECONDS; then the time until a
# restarted daemon has opened the pool and answers (`strata status`), and
# what it replayed (from its log). Target (issue 12): under 5 s.
# Usage: bench/recovery.sh [SECONDS] [ROUNDS]   (default 45 3)
set -euo pipefail
SECS=${1:-45}
ROUNDS=${2:-3}
BIN=${STRATA:-$(pwd)/bin/strata}
W=$(mktemp -d "${TMPDIR:-/tmp}/strrec.XXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
serve() { "$BIN" --data "$W/d" serve --listen "" --volume r=4GiB --volume s=16GiB >>"$W/serve.log" 2>&1 & SP=$!; PIDS+=($SP); }
up() { for _ in $(seq 600); do "$BIN" --data "$W/d" status >/dev/null 2>&1 && return 0; sleep 0.01; done; return 1; }
for round in $(seq "$ROUNDS"); do
  rm -rf "$W/d"; : > "$W/serve.log"
  serve; up
  fio --name=r --ioengine=nbd --uri="nbd+unix:///r?socket=$W/d/nbd.sock" --rw=randwrite --bs=4k --iodepth=32 --size=4G \
      --time_based --runtime=$((SECS + 30)) --output=/dev/null >/dev/null 2>&1 & F1=$!; PIDS+=($F1)
  fio --name=s --ioengine=nbd --uri="nbd+unix:///s?socket=$W/d/nbd.sock" --rw=write --bs=1M --iodepth=8 --size=16G \
      --rate=200m --time_based --runtime=$((SECS + 30)) --output=/dev/null >/dev/null 2>&1 & F2=$!; PIDS+=($F2)
  sleep "$SECS"
  JOURNAL=$(du -sb "$W/d/journal" | cut -f1)
  kill -9 "$SP"; wait "$SP" 2>/dev/null || true
  # The clients lost their server; fio's rate limiter would spin on the dead
  # connection instead of exiting. fio runs each job in a child process:
  # kill every fio of this run (they name its socket).
  kill -9 "$F1" "$F2" 2>/dev/null || true
  pkill -9 -f "$W/d/nbd.sock" 2>/dev/null || true
  wait "$F1" "$F2" 2>/dev/null || true
  : > "$W/serve.log"
  s=$(date +%s.%N)
  serve
  up
  e=$(date +%s.%N)
  replay=$(grep -o 'records_replayed=[0-9]*.*took=[^ ]*' "$W/serve.log" | head -1)
  python3 -c "import sys; print(f'round $round: killed after $SECS s of writes (journal {int(sys.argv[3])/2**30:.1f} GiB); pool open and serving in {float(sys.argv[2])-float(sys.argv[1]):.2f} s; $replay')" "$s" "$e" "$JOURNAL"
  kill "$SP"; wait "$SP" 2>/dev/null || true
done
