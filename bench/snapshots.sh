#!/usr/bin/env bash
# 4 KiB random-write IOPS over NBD (fio, Unix socket, QD32) with no
# snapshots and with 10 snapshots taken during the run, alternating the two
# (A B A B ...) so machine noise hits both. Goal: within 10%.
#
#   bench/snapshots.sh                # 3 rounds of 20 s each
#   ROUNDS=5 RUNTIME=30 bench/snapshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-20}
SIZE=${SIZE:-1G}
STRATA=${STRATA:-bin/strata}
command -v fio >/dev/null || { echo "bench: fio is not installed (make test-deps)"; exit 1; }
[ -x "$STRATA" ] || go build -o "$STRATA" ./cmd/strata

work=$(mktemp -d /tmp/strata-snapbench.XXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$STRATA" serve --data "$work/d" --listen "" --gc-interval 0 --volume "bench=$SIZE" >"$work/log" 2>&1 &
pid=$!
for i in $(seq 100); do [ -S "$work/d/nbd.sock" ] && break; sleep 0.1; done
uri="nbd+unix:///bench?socket=$work/d/nbd.sock"
export STRATA_DATA="$work/d"
fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size="$SIZE" --output-format=terse >/dev/null
sync

run() { # $1: snapshots during the run
	local snaps=$1 line
	if [ "$snaps" -gt 0 ]; then
		(
			for k in $(seq "$snaps"); do
				sleep "$(awk -v r="$RUNTIME" -v n="$snaps" 'BEGIN{print r/(n+1)}')"
				"$STRATA" snapshot create bench "r${round}-s${k}-$RANDOM" >/dev/null
			done
		) &
	fi
	line=$(fio --name=rw --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 --size="$SIZE" \
		--time_based --runtime="$RUNTIME" --output-format=terse --terse-version=3 | awk -F';' '$1 == "3" {print $49}')
	wait
	echo "$line"
}
declare -a a b
for round in $(seq "$ROUNDS"); do
	a+=("$(run 0)")
	b+=("$(run 10)")
done
med() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END{print (NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2}'; }
ma=$(med "${a[@]}"); mb=$(med "${b[@]}")
echo "4 KiB random write, QD32, Unix socket, $ROUNDS round(s) x ${RUNTIME}s:"
echo "  no snapshots:            ${a[*]} IOPS (median $ma)"
echo "  10 snapshots during run: ${b[*]} IOPS (median $mb)"
awk -v a="$ma" -v b="$mb" 'BEGIN{printf "  with snapshots / without: %.2fx\n", b/a}'
echo "  snapshots taken: $("$STRATA" snapshot list bench --json | grep -c '"name"')"
