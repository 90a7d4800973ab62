#!/usr/bin/env bash
# Runs the whole pg_dscsa test suite, installing what is missing first (as root):
#   1. cargo fmt --check and cargo clippy -D warnings
#   2. the pure-Rust core: unit, property, test-vector and 10-million-nonce tests
#   3. #[pg_test] tests inside a PostgreSQL backend (cargo pgrx test, as user postgres)
#   4. pg_regress tests (tests/regress) against a private cluster
#   5. client integration tests (itest/) against the same cluster; log hygiene last
# Safe to re-run: the test cluster is rebuilt from scratch each time.
source "$(dirname "$0")/common.sh"
require_root
cd "${REPO_ROOT}"

TEST_ROOT="${DSCSA_TEST_ROOT:-/tmp/pg_dscsa_test}"
TEST_PORT="${DSCSA_TEST_PORT:-55432}"
DATADIR="${TEST_ROOT}/data"
KEKDIR="${TEST_ROOT}/kms"

bash scripts/setup.sh --deps-only

log "1/5 Formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features pg_test -- -D warnings

log "2/5 Core unit, property and test-vector tests (dscsa-core)"
cargo test -p dscsa-core

log "3/5 #[pg_test] tests in a PostgreSQL ${PG_MAJOR} backend"
# The development hook must sit next to postgres for the embedded default hook.
cargo build --release -q -p dscsa-core --bin pg_dscsa_devkms
install -m 0755 target/release/pg_dscsa_devkms "${PG_BIN}/pg_dscsa_devkms"
rm -rf /tmp/pg_dscsa_pgrx_test
cargo pgrx test pg${PG_MAJOR} --runas postgres --pgdata /tmp/pg_dscsa_pgrx_test

log "Installing the release build (replaces the pg_test build cargo pgrx test installed)"
bash scripts/setup.sh
# The released 0.1.0 installation script, so that the upgrade test can start from it.
install -m 0644 sql/archive/pg_dscsa--0.1.0.sql "$("${PG_CONFIG}" --sharedir)/extension/pg_dscsa--0.1.0.sql"

log "Starting a fresh test cluster on port ${TEST_PORT}"
stop_cluster "${DATADIR}"
rm -rf "${TEST_ROOT}"
mkdir -p "${KEKDIR}"
chown postgres:postgres "${TEST_ROOT}" "${KEKDIR}"
chmod 700 "${KEKDIR}"
trap 'stop_cluster "${DATADIR}"' EXIT
start_cluster "${DATADIR}" "${TEST_PORT}" \
    "shared_preload_libraries = 'pg_dscsa, pg_stat_statements'" \
    "pg_stat_statements.track = all" \
    "log_statement = 'all'" \
    "log_min_messages = debug1" \
    "log_line_prefix = '%m [%p] %q%u@%d '" \
    "dscsa.kms_command = '${PG_BIN}/pg_dscsa_devkms --kek-file ${KEKDIR}/dev.kek'"

log "4/5 pg_regress tests"
REGRESS_OUT="${TEST_ROOT}/regress"
mkdir -p "${REGRESS_OUT}"
PGXS_DIR="$(dirname "$("${PG_CONFIG}" --pgxs)")"
if ! "${PGXS_DIR}/../test/regress/pg_regress" \
        --inputdir=tests/regress --outputdir="${REGRESS_OUT}" \
        --host=127.0.0.1 --port="${TEST_PORT}" --user=postgres \
        --dbname=dscsa_regress --load-extension=pg_dscsa \
        $(cd tests/regress/sql && ls *.sql | sed 's/\.sql$//' | sort); then
    cat "${REGRESS_OUT}/regression.diffs" >&2 || true
    die "pg_regress tests failed"
fi

log "5/5 Client integration tests"
export DSCSA_TEST_PORT="${TEST_PORT}" DSCSA_TEST_DATADIR="${DATADIR}" \
       DSCSA_TEST_KEK="${KEKDIR}/dev.kek" DSCSA_TEST_PG_BIN="${PG_BIN}"
cargo test --no-fail-fast -p pg_dscsa_itest --test roundtrip --test privileges --test kms_hook --test dump_copy --test reencrypt --test erp --test erp_keys --test upgrade
cargo test -p pg_dscsa_itest --test log_hygiene

log "All test layers passed"
