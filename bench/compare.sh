#!/usr/bin/env bash
# Quick side-by-side: Strata vs nbdkit's file plugin, same fio client over a
# Unix socket, jobs alternating between the systems (A B A B ...) so machine
# noise hits both. Prints median IOPS / MB/s / p99 per job and Strata's ratio.
# A thin wrapper over the benchmark runner (bench/README.md); results go to
# bench/results/compare/.
#
#   bench/compare.sh            # 2 rounds, 15 s per job, 1 GiB working set
#   ROUNDS=3 RUNTIME=30 SIZE=2G bench/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
args=(-systems strata,nbdkit
	-jobs randread-4k-qd32,randwrite-4k-qd32,seqread-1m-qd32,seqwrite-1m-qd32
	-rounds "${ROUNDS:-2}" -runtime "${RUNTIME:-15}s" -size "${SIZE:-1G}"
	-out "${OUT:-bench/results/compare}")
[ -n "${STRATA:-}" ] && args+=(-strata "$STRATA")
[ "${WARM:-1}" = 1 ] || args+=(-warm 0)
exec go run ./bench/runner "${args[@]}" "$@"
