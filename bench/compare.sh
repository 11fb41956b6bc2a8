#!/usr/bin/env bash
# Quick side-by-side: Strata vs nbdkit's file plugin, same fio client over a
# Unix socket, jobs alternating between the systems (A B A B ...) so machine
# noise hits both. Prints median IOPS / MB/s per job and Strata's ratio.
#
#   bench/compare.sh            # 2 rounds, 15 s per job, 1 GiB working set
#   ROUNDS=3 RUNTIME=30 SIZE=2G bench/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
RUNTIME=${RUNTIME:-15}
SIZE=${SIZE:-1G}
STRATA=${STRATA:-bin/strata}
for t in fio nbdkit; do command -v $t >/dev/null || { echo "bench: $t is not installed (make test-deps)"; exit 1; }; done
[ -x "$STRATA" ] || go build -o "$STRATA" ./cmd/strata

work=$(mktemp -d /tmp/strata-bench.XXXX)
# Virtual machines fault guest memory in slowly the first time it is used;
# touch some once so neither system pays that inside its measurements.
if [ -d /dev/shm ] && [ "${WARM:-1}" = 1 ]; then
	dd if=/dev/zero of=/dev/shm/strata-bench-warm bs=1M count=${WARM_MB:-4096} status=none || true
	rm -f /dev/shm/strata-bench-warm
fi
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$STRATA" serve --data "$work/strata" --listen "" --volume "bench=$SIZE" >"$work/strata.log" 2>&1 &
pids+=($!)
truncate -s "$SIZE" "$work/nbdkit.raw"
nbdkit -f -U "$work/nbdkit.sock" file "$work/nbdkit.raw" >"$work/nbdkit.log" 2>&1 &
pids+=($!)
for i in $(seq 100); do [ -S "$work/strata/nbd.sock" ] && [ -S "$work/nbdkit.sock" ] && break; sleep 0.1; done

declare -A URI=(
	[strata]="nbd+unix:///bench?socket=$work/strata/nbd.sock"
	[nbdkit]="nbd+unix:///?socket=$work/nbdkit.sock"
)
systems=(strata nbdkit)

# Prefill both so reads hit real data, not holes.
for s in "${systems[@]}"; do
	fio --name=fill --ioengine=nbd --uri="${URI[$s]}" --rw=write --bs=1M --iodepth=8 --size="$SIZE" --output-format=terse >/dev/null
done
# Write the prefill back to disk now, not during the first measurements.
sync

jobs=(
	"randread-4k-qd32:--rw=randread --bs=4k --iodepth=32"
	"randwrite-4k-qd32:--rw=randwrite --bs=4k --iodepth=32"
	"seqread-1m-qd8:--rw=read --bs=1M --iodepth=8"
	"seqwrite-1m-qd8:--rw=write --bs=1M --iodepth=8"
)
results="$work/results.csv"
for r in $(seq "$ROUNDS"); do
	for j in "${jobs[@]}"; do
		name=${j%%:*}; args=${j#*:}
		for s in "${systems[@]}"; do
			# terse v3: field 8 read IOPS, 49 write IOPS, 7 read KB/s, 48 write KB/s
			line=$(fio --name="$name" --ioengine=nbd --uri="${URI[$s]}" $args --size="$SIZE" \
				--time_based --runtime="$RUNTIME" --output-format=terse --terse-version=3)
			# fio's nbd engine may print a "connected" line: keep the terse one.
			echo "$line" | awk -F';' -v s="$s" -v n="$name" -v r="$r" \
				'$1 == "3" {printf "%s,%s,%s,%.0f,%.1f\n", r, n, s, $8+$49, ($7+$48)/1024}' >>"$results"
		done
	done
done

echo "Strata vs nbdkit file plugin: fio nbd engine, Unix socket, $ROUNDS round(s) x ${RUNTIME}s, working set $SIZE"
echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
printf "%-20s %14s %14s %14s %14s %8s\n" job "strata IOPS" "nbdkit IOPS" "strata MB/s" "nbdkit MB/s" ratio
for j in "${jobs[@]}"; do
	name=${j%%:*}
	med() { grep ",$name,$1," "$results" | cut -d, -f"$2" | sort -n | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
	si=$(med strata 4); ni=$(med nbdkit 4); sm=$(med strata 5); nm=$(med nbdkit 5)
	ratio=$(awk -v a="$si" -v b="$ni" 'BEGIN{ if (b>0) printf "%.2fx", a/b; else print "-" }')
	printf "%-20s %14s %14s %14s %14s %8s\n" "$name" "$si" "$ni" "$sm" "$nm" "$ratio"
done
