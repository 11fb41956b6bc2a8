#!/bin/bash
# Synchronous mirror over loopback: 4 KiB random writes (fio's nbd engine,
# QD32) to a mirrored volume against an unmirrored volume of the same
# daemon, in the same run, rounds rotated; with a flush every 64 writes and
# without. (fio's fsync=64 at QD32 fills every free queue slot with a flush
# at each 64th write until one completes: about one flush per two writes.)
# Both daemons and the witness run on this machine, so the mirrored case
# pays for the second host's CPU too.
# PIN=1 emulates two hosts: the primary, the witness and fio share CPU 0,
# the secondary has CPU 1 to itself, and the plain volume runs on CPU 0
# alone too (the secondary then idles), so both cases get one host's CPU.
# Check first that the machine allows it: on some virtual machines a vCPU
# slows to a quarter whenever the other one wakes up, even for an idle
# process's timers (docs/ha.md, "Measured"), which makes the plain case the
# slow one.
# Usage: [PIN=1] bench/mirror.sh [ROUNDS] [SECONDS] (default 3 rounds of 8 s)
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-8}
BIN=${STRATA:-$(pwd)/bin/strata}
W=$(mktemp -d /tmp/stmirror.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done; rm -rf "$W"; }
trap cleanup EXIT
head -c 24 /dev/urandom | base64 > "$W/token"
P=$((20000 + RANDOM % 20000))
HOST_A=() HOST_B=()
if [ "${PIN:-0}" = 1 ]; then
  [ "$(nproc)" -ge 2 ] || { echo "PIN=1 needs 2 CPUs" >&2; exit 2; }
  HOST_A=(taskset -c 0) HOST_B=(taskset -c 1)
fi
"${HOST_A[@]}" "$BIN" witness --listen 127.0.0.1:$((P + 2)) --data "$W/w" --token-file "$W/token" >"$W/w.log" 2>&1 & PIDS+=($!)
"${HOST_A[@]}" "$BIN" --data "$W/a" serve --listen "" --replica-listen 127.0.0.1:$P --replica-token-file "$W/token" >"$W/a.log" 2>&1 & PIDS+=($!)
"${HOST_B[@]}" "$BIN" --data "$W/b" serve --listen "" --replica-listen 127.0.0.1:$((P + 1)) --replica-token-file "$W/token" >"$W/b.log" 2>&1 & PIDS+=($!)
sleep 1.5
for v in plain mirrored; do "$BIN" --data "$W/a" volume create $v --size 2GiB >/dev/null; done
# Prefill both (overwrites are what the job measures).
for v in plain mirrored; do
  fio --name=fill --ioengine=nbd --uri="nbd+unix:///$v?socket=$W/a/nbd.sock" --rw=write --bs=1M --size=1G --iodepth=8 --end_fsync=1 --output=/dev/null
done
"$BIN" --data "$W/a" mirror add mirrored --to strata://127.0.0.1:$((P + 1)) --token-file "$W/token" --witness 127.0.0.1:$((P + 2)) >/dev/null
for i in $(seq 100); do
  "$BIN" --data "$W/a" mirror list | grep -q "in sync" && break
  sleep 0.3
done
"$BIN" --data "$W/a" mirror list
# job VOL FSYNC: write IOPS of one run.
job() {
  local extra=()
  [ "$2" != 0 ] && extra=(--fsync="$2")
  "${HOST_A[@]}" fio --name=j --ioengine=nbd --uri="nbd+unix:///$1?socket=$W/a/nbd.sock" --rw=randwrite --bs=4k --size=1G --iodepth=32 \
      --time_based --runtime="$SECS" --randrepeat=0 "${extra[@]}" --output-format=json --output="$W/j.json" >/dev/null
  python3 -c "import json;print(round(json.load(open('$W/j.json'))['jobs'][0]['write']['iops']))"
}
for fs in 64 0; do
  ratios=()
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then p=$(job plain $fs); m=$(job mirrored $fs); else m=$(job mirrored $fs); p=$(job plain $fs); fi
    ratio=$(python3 -c "print(f'{$m/$p:.2f}')")
    ratios+=("$ratio")
    echo "fsync=$fs round $r: plain $p IOPS, mirrored $m IOPS: ${ratio}x"
  done
  echo "fsync=$fs: median mirrored/plain $(printf '%s\n' "${ratios[@]}" | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p")x"
done
"$BIN" --data "$W/a" mirror list
