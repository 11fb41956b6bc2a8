#!/usr/bin/env bash
# 4 KiB random-write IOPS over NBD (fio, Unix socket, QD32) with no
# snapshots and with 10 snapshots taken during the run, alternating the two
# (A B A B ...) so machine noise hits both. Goal: within 10%.
# A thin wrapper over the benchmark runner (bench/README.md); results go to
# bench/results/snapshots/.
#
#   bench/snapshots.sh                # 3 rounds of 20 s each
#   ROUNDS=5 RUNTIME=30 bench/snapshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
args=(-systems strata,strata-snap10 -jobs randwrite-4k-qd32
	-rounds "${ROUNDS:-3}" -runtime "${RUNTIME:-20}s" -size "${SIZE:-1G}"
	-out "${OUT:-bench/results/snapshots}")
[ -n "${STRATA:-}" ] && args+=(-strata "$STRATA")
exec go run ./bench/runner "${args[@]}" "$@"
