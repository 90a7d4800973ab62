#!/usr/bin/env bash
# Runs the whole pg_dscsa test suite, installing what is missing first (as root):
#   1. cargo fmt --check, cargo clippy -D warnings, the upgrade script up to date
#   2. the pure-Rust core: unit, property, test-vector and 10-million-nonce tests
#   3. #[pg_test] tests inside a PostgreSQL backend (cargo pgrx test, as user postgres)
#   4. pg_regress tests (tests/regress) and isolation specs (tests/isolation) against a
#      private cluster
#   5. client integration tests (tests/integration) against the same cluster, with
#      pgbouncer (transaction pooling) in front of it for the pooler tests
#   6. the search_path pass: 4 and 5 again with a booby-trapped schema
#      (tests/trap/trap.sql) in every session's search_path; the run fails if any
#      trap was reached. Log hygiene last, over the whole server log.
#   7. the benchmarks (`make bench`) end to end at toy size, so that they keep running:
#      every part and its own checks (plans, answers, every spelling of a unit), with the
#      timings printed and never asserted.
# The cluster preloads pg_dscsa and keeps its audit trail in database dscsa_audit; a
# streaming replica (hot standby) forwards its audit records to it. Real KMS providers
# (SoftHSM2, moto, OpenBao: scripts/kms_providers.sh) serve the production hooks' tests.
# Test files are found by listing their folders: a new file runs without being named here.
# Safe to re-run: the test cluster is rebuilt from scratch each time.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/kms_providers.sh"
require_root
cd "${REPO_ROOT}"

TEST_ROOT="${DSCSA_TEST_ROOT:-/tmp/pg_dscsa_test}"
TEST_PORT="${DSCSA_TEST_PORT:-55432}"
POOLER_PORT="${DSCSA_TEST_POOLER_PORT:-55436}"
DATADIR="${TEST_ROOT}/data"
KEKDIR="${TEST_ROOT}/kms"
POOLERDIR="${TEST_ROOT}/pgbouncer"
STANDBY_PORT="${DSCSA_TEST_STANDBY_PORT:-55437}"
STANDBY_DIR="${TEST_ROOT}/standby"
KMS_PROVIDERS_DIR="${TEST_ROOT}/kms-providers"
MOTO_PORT="${DSCSA_TEST_MOTO_PORT:-55438}"
BAO_PORT="${DSCSA_TEST_BAO_PORT:-55439}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"

# A clean run takes about 5 GiB of build tree and 5 GiB of test clusters.
require_free_space 6 12 "${REPO_ROOT}/target" "${TEST_ROOT}"

bash scripts/setup.sh --deps-only
install_test_packages

log "1/7 Formatting, lints, upgrade script"
cargo fmt --all -- --check
cargo clippy --workspace --exclude dscsa-hooks --all-targets --features pg_test -- -D warnings
# The hooks in the profile they are built and installed with (one build of the AWS SDK).
cargo clippy --profile hooks -p dscsa-hooks --all-targets -- -D warnings
for delta in sql/upgrade/*--"${VERSION}".sql; do
    [ -e "${delta}" ] || continue
    from="$(basename "${delta}" .sql)"; from="${from%%--*}"
    bash scripts/gen_upgrade.sh --check "${from}" "${VERSION}"
done

log "2/7 Core unit, property and test-vector tests (dscsa-core)"
cargo test -p dscsa-core

log "3/7 #[pg_test] tests in a PostgreSQL ${PG_MAJOR} backend"
# The development hook must sit next to postgres for the embedded default hook.
cargo build --release -q -p dscsa-core --bins
install -m 0755 target/release/pg_dscsa_devkms "${PG_BIN}/pg_dscsa_devkms"
rm -rf /tmp/pg_dscsa_pgrx_test
cargo pgrx test pg${PG_MAJOR} --runas postgres --pgdata /tmp/pg_dscsa_pgrx_test

log "Installing the release build (replaces the pg_test build cargo pgrx test installed) and the KMS hooks"
bash scripts/setup.sh
log "The KMS hooks' own unit tests"
cargo test --profile hooks -q -p dscsa-hooks
# The released installation scripts, so that the upgrade tests can start from them.
for old in sql/archive/pg_dscsa--*.sql; do
    install -m 0644 "${old}" "$("${PG_CONFIG}" --sharedir)/extension/$(basename "${old}")"
done

log "Starting a fresh test cluster on port ${TEST_PORT}, pgbouncer on ${POOLER_PORT}, a hot standby on ${STANDBY_PORT}"
stop_pooler "${POOLERDIR}"
stop_cluster "${STANDBY_DIR}"
stop_cluster "${DATADIR}"
rm -rf "${TEST_ROOT}"
mkdir -p "${KEKDIR}"
chown postgres:postgres "${TEST_ROOT}" "${KEKDIR}"
chmod 700 "${KEKDIR}"
trap 'stop_kms_providers "${KMS_PROVIDERS_DIR}"; stop_pooler "${POOLERDIR}"; stop_cluster "${STANDBY_DIR}"; stop_cluster "${DATADIR}"' EXIT
start_cluster "${DATADIR}" "${TEST_PORT}" \
    "shared_preload_libraries = 'pg_dscsa, pg_stat_statements'" \
    "pg_stat_statements.track = all" \
    "log_statement = 'all'" \
    "log_min_messages = debug1" \
    "log_line_prefix = '%m [%p] %q%u@%d '" \
    "dscsa.kms_command = '${PG_BIN}/pg_dscsa_devkms --kek-file ${KEKDIR}/dev.kek'" \
    "dscsa.audit_database = 'dscsa_audit'" \
    "dscsa.audit_anchor_records = 1000" \
    "dscsa.audit_anchor_interval = 5"
psql_test() { "${PG_BIN}/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${TEST_PORT}" -U postgres "$@"; }
psql_test -d postgres -c "CREATE DATABASE dscsa_audit"
psql_test -d dscsa_audit -c "CREATE EXTENSION pg_dscsa" \
    -c "CREATE ROLE itest_forwarder LOGIN IN ROLE dscsa_audit_forwarder" \
    -c "CREATE ROLE itest_auditor LOGIN IN ROLE dscsa_auditor"
wait_for_audit_worker "${TEST_PORT}" dscsa_audit
start_standby "${DATADIR}" "${TEST_PORT}" "${STANDBY_DIR}" "${STANDBY_PORT}" \
    "cluster_name = 'standby1'" \
    "dscsa.audit_forward_to = 'host=127.0.0.1 port=${TEST_PORT} dbname=dscsa_audit user=itest_forwarder'"
start_pooler "${POOLERDIR}" "${POOLER_PORT}" "${TEST_PORT}" \
    postgres itest_admin itest_writer itest_reader itest_nobody itest_owner itest_planter
log "Starting the KMS providers: SoftHSM2, moto (AWS KMS API) on ${MOTO_PORT}, OpenBao (transit) on ${BAO_PORT}"
install_kms_providers
start_kms_providers "${KMS_PROVIDERS_DIR}" "${MOTO_PORT}" "${BAO_PORT}"

export DSCSA_TEST_PORT="${TEST_PORT}" DSCSA_TEST_DATADIR="${DATADIR}" \
       DSCSA_TEST_KEK="${KEKDIR}/dev.kek" DSCSA_TEST_PG_BIN="${PG_BIN}" \
       DSCSA_TEST_POOLER_PORT="${POOLER_PORT}" DSCSA_TEST_STANDBY_PORT="${STANDBY_PORT}" \
       DSCSA_TEST_STANDBY_DATADIR="${STANDBY_DIR}" DSCSA_TEST_KMS_DIR="${KMS_PROVIDERS_DIR}" \
       DSCSA_TEST_KMS_VENV="${KMS_VENV}" DSCSA_TEST_BAO_PORT="${BAO_PORT}" DSCSA_TEST_MOTO_PORT="${MOTO_PORT}"

# One of PostgreSQL's test drivers (pgxs's test/regress/pg_regress or
# test/isolation/pg_isolation_regress) over every test its folder holds, in database DB.
#   run_pgxs_tests DRIVER INPUTDIR SUBDIR SUFFIX DB LABEL
run_pgxs_tests() {
    local driver="$1" inputdir="$2" subdir="$3" suffix="$4" db="$5" label="$6"
    local out="${TEST_ROOT}/${label}" pgxs_dir
    mkdir -p "${out}"
    pgxs_dir="$(dirname "$("${PG_CONFIG}" --pgxs)")"
    if ! "${pgxs_dir}/../test/${driver}" \
            --inputdir="${inputdir}" --outputdir="${out}" \
            --host=127.0.0.1 --port="${TEST_PORT}" --user=postgres \
            --use-existing --dbname="${db}" \
            $(cd "${inputdir}/${subdir}" && ls -- *"${suffix}" | sed "s/\\${suffix}\$//" | sort); then
        cat "${out}/regression.diffs" >&2 || true
        die "${label} tests failed"
    fi
}

# pg_regress against a database made here, whose search_path is the pass's.
run_regress() {
    psql_test -d postgres -c "DROP DATABASE IF EXISTS dscsa_regress" -c "CREATE DATABASE dscsa_regress"
    psql_test -d dscsa_regress -c "CREATE EXTENSION pg_dscsa" \
        -c "ALTER DATABASE dscsa_regress SET search_path = $1"
    run_pgxs_tests regress/pg_regress tests/regress sql .sql dscsa_regress "regress-$2"
}

# The isolation specs (tests/isolation/specs: concurrent sessions interleaved in fixed
# orders by PostgreSQL's isolationtester), against a database made here with their keys.
run_isolation() {
    psql_test -d postgres -c "DROP DATABASE IF EXISTS dscsa_isolation" -c "CREATE DATABASE dscsa_isolation"
    psql_test -d dscsa_isolation -c "CREATE EXTENSION pg_dscsa" \
        -c "SELECT dscsa.create_key('iso'), dscsa.create_key('iso_rot'), dscsa.create_blind_index_key('iso_bidx')" \
        -c "ALTER DATABASE dscsa_isolation SET search_path = $1" >/dev/null
    run_pgxs_tests isolation/pg_isolation_regress tests/isolation specs .spec dscsa_isolation "isolation-$2"
}

# Every integration test file but log_hygiene (which must see the whole run's log).
run_integration() {
    local targets=()
    for f in tests/integration/tests/*.rs; do
        local name
        name="$(basename "${f}" .rs)"
        [ "${name}" = log_hygiene ] || targets+=(--test "${name}")
    done
    cargo test --no-fail-fast -p pg_dscsa_itest "${targets[@]}"
}

log "4/7 pg_regress and isolation tests"
run_regress "public, dscsa" plain
run_isolation "public, dscsa" plain

log "5/7 Client integration tests"
run_integration

log "6/7 The search_path pass: regress and integration tests with a booby-trapped schema in every search_path"
psql_test -d template1 -f tests/trap/trap.sql
# (template1 of the standby gets it by replication.)
export DSCSA_TEST_TRAP=1
run_regress "public, dscsa_trap, dscsa" trap
run_isolation "public, dscsa_trap, dscsa" trap
run_integration
if grep -nE '(LOG|ERROR): +dscsa_trap_sprung' "${DATADIR}/server.log" | head -n 20; then
    die "a trap planted in the search_path was reached (lines above): some routine does not pin search_path"
fi
unset DSCSA_TEST_TRAP
cargo test -p pg_dscsa_itest --test log_hygiene

log "7/7 The benchmarks at toy size (every part of make bench on 2,000 units, one 1-second round each; timings not asserted)"
# The test servers are done: stopped first, so that none of their connections holds a port
# the benchmark's servers must bind, and those ports are taken below Linux's ephemeral
# range (32768-60999), where no outgoing connection picks its local port. (In a CI run the
# benchmark's default pooler port, 55440, was once the local port of a live connection.)
stop_kms_providers "${KMS_PROVIDERS_DIR}"; stop_pooler "${POOLERDIR}"; stop_cluster "${STANDBY_DIR}"; stop_cluster "${DATADIR}"
DSCSA_BENCH_PORT=25434 DSCSA_BENCH_POOLER_PORT=25440 DSCSA_BENCH_MOTO_PORT=25441 DSCSA_BENCH_BAO_PORT=25442 \
ROWS=2000 MROWS=2000 REPS=1 MIG_ROUNDS=1 VRS_ROUNDS=1 SECONDS_PER_RUN=1 KMS_SECONDS=1 KMS_LOADS=5 \
    INSTR_N1=20 INSTR_N2=40 bash scripts/bench.sh >"${TEST_ROOT}/bench.log" 2>&1 \
    || { tail -n 40 "${TEST_ROOT}/bench.log" >&2; die "the benchmarks failed at toy size (whole log: ${TEST_ROOT}/bench.log)"; }
# Every part printed its result (a part that stopped being run would pass silently).
for result in "Per-row cost (microseconds) and ratios" "Median per mode, and ratios" "Migration of 2000 rows: median of 1 rounds" \
    "GS1 parsing and product-identifier index of 2000 identifiers" "pooled throughput, cache on / cache off" \
    " transit  | off " "Lookup inside one backend" "Instructions per transaction (callgrind" \
    "trail sync/trail off throughput"; do
    grep -qF -- "${result}" "${TEST_ROOT}/bench.log" || die "the benchmarks at toy size printed no \"${result}\" (${TEST_ROOT}/bench.log)"
done
[[ "$(grep -c '^Median of 1 rounds' "${TEST_ROOT}/bench.log")" == 4 ]] \
    || die "the benchmarks at toy size did not print the medians of their four pgbench parts (${TEST_ROOT}/bench.log)"

log "All test layers passed"
