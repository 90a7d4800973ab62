#!/usr/bin/env bash
# Benchmarks pg_dscsa against plaintext and pgcrypto baselines in one run on the same
# data (bench/bench.sql). Timings are printed, never asserted: these machines are noisy.
#   ROWS=1000000 REPS=5 bash scripts/bench.sh
source "$(dirname "$0")/common.sh"
require_root
cd "${REPO_ROOT}"

BENCH_ROOT="${DSCSA_BENCH_ROOT:-/tmp/pg_dscsa_bench}"
BENCH_PORT="${DSCSA_BENCH_PORT:-55434}"
ROWS="${ROWS:-1000000}"
REPS="${REPS:-5}"

bash scripts/setup.sh

log "Starting a fresh benchmark cluster on port ${BENCH_PORT}"
stop_cluster "${BENCH_ROOT}/data"
rm -rf "${BENCH_ROOT}"
mkdir -p "${BENCH_ROOT}/kms"
chown -R postgres:postgres "${BENCH_ROOT}"
chmod 700 "${BENCH_ROOT}/kms"
trap 'stop_cluster "${BENCH_ROOT}/data"' EXIT
start_cluster "${BENCH_ROOT}/data" "${BENCH_PORT}" \
    "shared_buffers = '1GB'" "work_mem = '64MB'" "max_parallel_workers_per_gather = 0" \
    "dscsa.kms_command = '${PG_BIN}/pg_dscsa_devkms --kek-file ${BENCH_ROOT}/kms/dev.kek'"

log "Running bench/bench.sql with ${ROWS} rows, median of ${REPS} runs"
as_postgres psql -X -q -h /tmp -p "${BENCH_PORT}" -d postgres -c "CREATE EXTENSION pg_dscsa"
as_postgres psql -X -q -h /tmp -p "${BENCH_PORT}" -d postgres -v ON_ERROR_STOP=1 \
    -v rows="${ROWS}" -v reps="${REPS}" -f "${REPO_ROOT}/bench/bench.sql"
