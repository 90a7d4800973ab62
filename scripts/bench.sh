#!/usr/bin/env bash
# Benchmarks pg_dscsa against plaintext and pgcrypto baselines in one run on the same
# data (bench/bench.sql). Timings are printed, never asserted: these machines are noisy.
#   ROWS=1000000 REPS=5 bash scripts/bench.sh
#   BENCH_ONLY=micro|migration|vrs runs one part (default: all three)
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

wants() { [[ -z "${BENCH_ONLY:-}" || "${BENCH_ONLY}" == "$1" ]]; }
as_postgres psql -X -q -h /tmp -p "${BENCH_PORT}" -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE EXTENSION pg_dscsa" -c "SELECT dscsa.create_key('bench')"
if wants micro; then
log "Running bench/bench.sql with ${ROWS} rows, median of ${REPS} runs"
as_postgres psql -X -q -h /tmp -p "${BENCH_PORT}" -d postgres -v ON_ERROR_STOP=1 \
    -v rows="${ROWS}" -v reps="${REPS}" -f "${REPO_ROOT}/bench/bench.sql"
fi

MROWS="${MROWS:-${ROWS}}"
if wants migration; then
log "Migration benchmark (bench/migration.sql) with ${MROWS} rows"
as_postgres psql -X -q -h /tmp -p "${BENCH_PORT}" -d postgres -v ON_ERROR_STOP=1 \
    -v mrows="${MROWS}" -f "${REPO_ROOT}/bench/migration.sql"
fi

if ! wants vrs; then exit 0; fi
VRS_ROWS="${VRS_ROWS:-${ROWS}}"
CLIENTS="${CLIENTS:-8}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-30}"
log "VRS lookup benchmark: ${VRS_ROWS} units, ${CLIENTS} clients, ${SECONDS_PER_RUN} s per run (pgbench)"
as_postgres psql -X -q -h /tmp -p "${BENCH_PORT}" -d postgres -v ON_ERROR_STOP=1 \
    -v rows="${VRS_ROWS}" -f "${REPO_ROOT}/bench/vrs_setup.sql"

# Runs one pgbench script; prints tps and per-transaction latency percentiles (ms),
# computed from pgbench's per-transaction log (latency in microseconds, column 3).
run_pgbench() {
    local name="$1" script="$2"
    local dir="${BENCH_ROOT}/pgbench_${name}"
    rm -rf "${dir}"; mkdir -p "${dir}"; chown postgres:postgres "${dir}"
    local out
    out="$(cd "${dir}" && as_postgres "${PG_BIN}/pgbench" -n -h /tmp -p "${BENCH_PORT}" -c "${CLIENTS}" -j 2 \
        -M prepared -T "${SECONDS_PER_RUN}" -D rows="${VRS_ROWS}" -D loaded=0 -f "${REPO_ROOT}/bench/${script}" \
        --log --log-prefix="${dir}/tx" postgres)" || die "pgbench ${name} failed"
    local tps
    tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"${out}" | head -1)"
    [[ -n "${tps}" ]] || die "pgbench ${name}: no tps in its output"
    cat "${dir}"/tx* | awk '{print $3}' | sort -n | awk -v name="${name}" -v tps="${tps}" '
        { a[NR] = $1 }
        END {
            if (NR == 0) { print "no transactions logged" > "/dev/stderr"; exit 1 }
            i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
            i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
            printf "%-10s tps %10.1f  p50 %7.3f ms  p99 %7.3f ms  max %8.3f ms  (%d transactions)\n",
                name, tps, a[i50] / 1000, a[i99] / 1000, a[NR] / 1000, NR
        }' | tee -a "${BENCH_ROOT}/vrs_results.txt"
}
rm -f "${BENCH_ROOT}/vrs_results.txt"
run_pgbench plaintext vrs_plain.pgbench
run_pgbench encrypted vrs_encrypted.pgbench
awk '/^plaintext/ {p = $3} /^encrypted/ {e = $3} END { printf "encrypted/plaintext throughput: %.2f\n", e / p }' \
    "${BENCH_ROOT}/vrs_results.txt"
