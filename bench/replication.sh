#!/bin/bash
# Replication over loopback: shipping throughput of `strata replicate --once`
# (a first run, which copies the volume, then a run of journal records)
# against a plain copy of the same journal bytes over TCP into a file on the
# same disk (cat | nc style, fsync at the end), measured in the same run; then
# the lag of continuous replication under a steady 4 KiB random-write load.
# Each timed copy starts with the page cache dropped (as root), so Strata's
# run and the plain copy both read the journal from the disk: the journal
# is written with O_DIRECT and only reads bring it into the page cache, so
# without this the plain copy read what the runs before it had just read
# (and the kernel's reclaim decided how much of that was left).
# Usage: bench/replication.sh [SIZE_MIB] (default 512)
set -euo pipefail
SIZE=${1:-512}
BIN=${STRATA:-$(pwd)/bin/strata}
W=$(mktemp -d /tmp/strepl.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
head -c 24 /dev/urandom | base64 > "$W/token"
PORT=$((20000 + RANDOM % 20000))
"$BIN" --data "$W/a" serve --listen "" >"$W/a.log" 2>&1 & PIDS+=($!)
"$BIN" --data "$W/b" serve --listen "" --replica-listen 127.0.0.1:$PORT --replica-token-file "$W/token" >"$W/b.log" 2>&1 & PIDS+=($!)
sleep 1.5
"$BIN" --data "$W/a" volume create v --size $((SIZE * 2))MiB >/dev/null
URI="nbd+unix:///v?socket=$W/a/nbd.sock"
# write NAME OFFSET_MIB SIZE_MIB: incompressible data, as 1 MiB records.
write() {
  fio --name="$1" --ioengine=nbd --uri="$URI" --rw=write --bs=1M --offset="$2"M --size="$3"M --iodepth=8 \
      --refill_buffers --randrepeat=0 --end_fsync=1 --output=/dev/null
  sync
}
# cold: write back and drop the page cache, where allowed.
cold() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches
  elif [ -z "${WARNED:-}" ]; then WARNED=1; echo "note: not root, page cache not dropped: copies may read from memory" >&2; fi
}
# ship LABEL: one timed `replicate --once`, reported.
ship() {
  local s e
  cold
  s=$(date +%s.%N)
  "$BIN" --data "$W/a" replicate v --to strata://127.0.0.1:$PORT --token-file "$W/token" --once --json > "$W/ship.json"
  e=$(date +%s.%N)
  python3 - "$W/ship.json" "$s" "$e" "$1" <<'PY'
import json,sys
r=json.load(open(sys.argv[1])); t=float(sys.argv[3])-float(sys.argv[2])
print(f"strata replicate --once, {sys.argv[4]}: {r['data_bytes']/1e6:.0f} MB of data in {r['records']} records, {r['stored_bytes']/1e6:.0f} MB sent, {t:.2f} s wall: {r['data_bytes']/1e6/t:.0f} MB/s")
PY
}
write fill 0 "$SIZE"
ship "full copy"
# The steady state: a second run ships journal records (half as much new data).
write more "$SIZE" $((SIZE / 2))
ship "records"
# Baseline: the journal's bytes through TCP into a file, fsynced.
JB=$(cat "$W"/a/journal/*.seg | wc -c)
python3 - "$W/copy" $((PORT+1)) > "$W/nc.out" <<'PY' &
import os,socket,sys
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[2]))); s.listen(1)
c,_=s.accept(); f=open(sys.argv[1],"wb")
while True:
    b=c.recv(1<<20)
    if not b: break
    f.write(b)
f.flush(); os.fsync(f.fileno()); print("done")
PY
NCP=$!
sleep 0.5
cold
S=$(date +%s.%N)
cat "$W"/a/journal/*.seg > /dev/tcp/127.0.0.1/$((PORT+1))
wait $NCP
E=$(date +%s.%N)
python3 -c "import sys; b=$JB; t=$E-$S; print(f'plain copy (cat journal > /dev/tcp, receiver writes + fsyncs): {b/1e6:.0f} MB in {t:.2f} s: {b/1e6/t:.0f} MB/s')"
rm -f "$W/copy"

# Lag under a steady 4 KiB random-write load (2000 IOPS for 20 s).
"$BIN" --data "$W/a" replication add v --to strata://127.0.0.1:$PORT --token-file "$W/token" >/dev/null
sleep 2
fio --name=load --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --size=${SIZE}M --iodepth=4 \
    --rate_iops=2000 --time_based --runtime=20 --randrepeat=0 --output=/dev/null &
FIO=$!
: > "$W/lag"
while kill -0 $FIO 2>/dev/null; do
  "$BIN" --data "$W/a" replication list --json >> "$W/lag"; echo "---" >> "$W/lag"; sleep 0.5
done
sleep 3
"$BIN" --data "$W/a" replication list --json > "$W/lag-after"
python3 - "$W/lag" "$W/lag-after" <<'PY'
import json,sys
secs=[];recs=[]
for chunk in open(sys.argv[1]).read().split("---"):
    if not chunk.strip(): continue
    for s in json.loads(chunk):
        if s["mode"]=="continuous":
            secs.append(s["lag_seconds"]); recs.append(s["lag_records"])
secs.sort(); recs.sort()
med=lambda a: a[len(a)//2]
print(f"continuous lag under 2000 x 4 KiB writes/s ({len(secs)} samples): seconds median {med(secs):.2f} max {secs[-1]:.2f}; records median {med(recs)} max {recs[-1]}")
after=[s for s in json.load(open(sys.argv[2])) if s["mode"]=="continuous"][0]
print(f"3 s after the load stopped: lag {after['lag_records']} records, {after['lag_seconds']:.2f} s")
PY
