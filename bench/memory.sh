#!/bin/bash
# Memory of `strata serve` with its defaults (256 MiB read cache, 64 MiB
# index cache) while WRITTEN GiB of 4 KiB random writes, then WRITTEN GiB of
# 1 MiB sequential writes, go to volumes of VOLUME GiB (P5: memory is bounded
# by configuration, not by volume size or data written). After each step it
# prints the resident memory (now and peak), the index's memory (head map
# pages, memtables, index block cache) and the index's memory per GiB
# written, and the bound docs/operations.md states: read cache + index
# cache + about 400 MiB (memtables, journal buffers, request buffers, the
# Go runtime and its collector's headroom).
# Usage: bench/memory.sh [WRITTEN_GIB] [VOLUME_GIB]   (default 20 100; the
# journal needs 2 x WRITTEN GiB of disk under $TMPDIR)
set -euo pipefail
WRITTEN=${1:-20}
VOL=${2:-100}
BIN=${STRATA:-$(pwd)/bin/strata}
W=$(mktemp -d "${TMPDIR:-/tmp}/strmem.XXXX")
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
"$BIN" --data "$W/d" serve --listen "" --volume rand=${VOL}GiB --volume seq=${VOL}GiB >"$W/serve.log" 2>&1 &
PID=$!
for _ in $(seq 100); do [ -S "$W/d/nbd.sock" ] && break; sleep 0.1; done
kb() { awk -v k="$1:" '$1==k {print $2}' /proc/$PID/status; }
START=$(kb VmRSS)
report() { # LABEL GIB_WRITTEN
  "$BIN" --data "$W/d" status --json > "$W/st.json"
  python3 - "$W/st.json" "$1" "$2" "$(kb VmRSS)" "$(kb VmHWM)" "$START" <<'PY'
import json, sys
st = json.load(open(sys.argv[1]))["pool"]
label, gib, rss, hwm, start = sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
im = st["index_memory"]
idx = im["head_map_bytes"] + im["memtable_bytes"] + im["block_cache_bytes"]
mib = lambda b: b / (1 << 20)
bound = 256 + 64 + 400
print(f"{label}: {gib:.0f} GiB written; RSS {rss/1024:.0f} MiB (peak {hwm/1024:.0f} MiB, {start/1024:.0f} MiB at start; bound {bound} MiB = "
      f"256 MiB read cache + 64 MiB index cache + 400 MiB) -> {'within' if hwm/1024 <= bound else 'OVER'}")
print(f"  index in memory {mib(idx):.1f} MiB (head map {mib(im['head_map_bytes']):.1f}, memtables {mib(im['memtable_bytes']):.1f}, "
      f"block cache {mib(im['block_cache_bytes']):.1f}): {mib(idx)/gib:.2f} MiB per GiB written; index on disk {mib(st['index_bytes']):.0f} MiB")
PY
}
fio --name=rand --ioengine=nbd --uri="nbd+unix:///rand?socket=$W/d/nbd.sock" --rw=randwrite --bs=4k --iodepth=32 \
    --size=${VOL}G --io_size=${WRITTEN}G --norandommap --randrepeat=0 --output=/dev/null
report "4 KiB random writes to a ${VOL} GiB volume" "$WRITTEN"
fio --name=seq --ioengine=nbd --uri="nbd+unix:///seq?socket=$W/d/nbd.sock" --rw=write --bs=1M --iodepth=32 \
    --size=${VOL}G --io_size=${WRITTEN}G --output=/dev/null
report "then 1 MiB sequential writes to another ${VOL} GiB volume" "$((WRITTEN * 2))"
