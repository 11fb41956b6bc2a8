#!/bin/bash
# By-hand A/B of strata builds (and nbdkit's file plugin) on the runner's
# fio job files: each run starts the system on a new 1 GiB target (a
# volume, or for nbdkit a file), prefills it with 1 MiB sequential writes
# (not with FRESH=1), and runs the job; the order of the systems rotates
# every round. Read the ratios of the same round; the runner (make bench) is
# the real comparison.
#
# Usage: bench/ab.sh "JOB ..." [ROUNDS] [SECONDS]
#   SYSTEMS="nbdkit bin/strata /tmp/strata-old"  (default: nbdkit bin/strata)
#   FRESH=1 VSIZE=4GiB TSIZE=4G JSIZE=4G   for the -fresh jobs on a new daemon
#   FRESH=vol VSIZE=4GiB TSIZE=4G JSIZE=4G as the runner runs them: Strata's
#     daemon first prefills a 1 GiB volume, then the job writes a new one
# Example: bench/ab.sh "vm-boot-qd8 seqread-1m-qd1" 3 8
set -uo pipefail
JOBS=${1:?usage: bench/ab.sh \"JOB ...\" [ROUNDS] [SECONDS]}; ROUNDS=${2:-3}; RT=${3:-8}
read -r -a SYS <<< "${SYSTEMS:-nbdkit bin/strata}"
J=$(cd "$(dirname "$0")" && pwd)/jobs
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
run_one() { # SYSTEM JOB
  local W URI P
  W=$(mktemp -d /tmp/ab.XXXX)
  if [ "$1" = nbdkit ]; then
    mkdir -p "$W/d"; truncate -s "${TSIZE:-1G}" "$W/f"
    nbdkit -f -U "$W/d/nbd.sock" file "$W/f" > "$W/log" 2>&1 &
    P=$!; URI="nbd+unix:///?socket=$W/d/nbd.sock"
  else
    local VOLS=(--volume "bench=${VSIZE:-1GiB}")
    [ "${FRESH:-}" = vol ] && VOLS=(--volume main=1GiB --volume "bench=${VSIZE:-1GiB}")
    "$1" serve --data "$W/d" --listen= "${VOLS[@]}" --cache-size 1280MiB > "$W/log" 2>&1 &
    P=$!; URI="nbd+unix:///bench?socket=$W/d/nbd.sock"
  fi
  PIDS+=("$P")
  for _ in $(seq 100); do [ -S "$W/d/nbd.sock" ] && break; sleep 0.1; done
  if [ "${FRESH:-}" = vol ] && [ "$1" != nbdkit ]; then
    fio --name=fill --ioengine=nbd --uri="nbd+unix:///main?socket=$W/d/nbd.sock" --rw=write --bs=1M --size=1G --iodepth=8 --output=/dev/null > /dev/null
  fi
  if [ -z "${FRESH:-}" ]; then
    fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --size=1G --iodepth=8 --output=/dev/null > /dev/null
  fi
  sync; sleep 1
  fio --ioengine=nbd --uri="$URI" --size="${JSIZE:-1G}" --time_based --runtime="$RT" \
      --output-format=json --output="$W/out.json" "$J/$2.fio" > /dev/null 2>&1
  python3 - "$W/out.json" "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
iops = sum(j['read']['iops'] + j['write']['iops'] for j in d['jobs'])
bw = sum(j['read']['bw_bytes'] + j['write']['bw_bytes'] for j in d['jobs'])
print(f"{sys.argv[3]:24s} {sys.argv[2]:24s} IOPS {iops:9.0f}  MB/s {bw/1e6:8.1f}")
PY
  kill "$P"; wait "$P" 2>/dev/null; rm -rf "$W"
}
for r in $(seq "$ROUNDS"); do
  for job in $JOBS; do
    n=${#SYS[@]}
    for k in $(seq 0 $((n - 1))); do run_one "${SYS[$(((k + r) % n))]}" "$job"; done
  done
done
