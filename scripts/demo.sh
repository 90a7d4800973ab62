#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (as root): installs what is missing, builds
# and installs pg_dscsa into PostgreSQL 15, starts a cluster it owns (run by the
# unprivileged postgres user), and runs the demo in demo/demo.sql. Safe to re-run: the
# cluster is reused and the demo database is recreated.
source "$(dirname "$0")/common.sh"
require_root
cd "${REPO_ROOT}"

DEMO_DATADIR="${DSCSA_DEMO_DATADIR:-/var/lib/pg_dscsa/demo}"
DEMO_PORT="${DSCSA_DEMO_PORT:-55433}"

bash scripts/setup.sh

log "Starting the demo cluster in ${DEMO_DATADIR} (port ${DEMO_PORT}, owned by postgres)"
mkdir -p "$(dirname "${DEMO_DATADIR}")"
# No dscsa.kms_command: the embedded default, the bundled development hook, keeps its KEK
# in ${DEMO_DATADIR}/pg_dscsa_dev.kek. Production sets dscsa.kms_command (docs/KMS.md).
start_cluster "${DEMO_DATADIR}" "${DEMO_PORT}"
# pg_dscsa is preloaded (its audit worker and shared memory need it) and keeps the demo's
# audit trail in the demo database. Kept in a file of its own, rewritten on every run, so
# that a cluster made by an earlier version of this script gets the settings too.
cat <<CONF | as_postgres tee "${DEMO_DATADIR}/pg_dscsa_demo.conf" >/dev/null
shared_preload_libraries = 'pg_dscsa'
dscsa.audit_database = 'dscsa_demo'
CONF
grep -q "^include_if_exists = 'pg_dscsa_demo.conf'" "${DEMO_DATADIR}/postgresql.conf" \
    || echo "include_if_exists = 'pg_dscsa_demo.conf'" | as_postgres tee -a "${DEMO_DATADIR}/postgresql.conf" >/dev/null
# The server was started before this build was installed on an earlier run: reload the library.
as_postgres "${PG_BIN}/pg_ctl" -D "${DEMO_DATADIR}" -l "${DEMO_DATADIR}/server.log" -w restart >/dev/null

psql_demo() { as_postgres psql -X -h /tmp -p "${DEMO_PORT}" "$@"; }
# FORCE: the audit worker stays connected to the demo database.
psql_demo -q -d postgres -c "DROP DATABASE IF EXISTS dscsa_demo WITH (FORCE)" -c "CREATE DATABASE dscsa_demo"

log "Running demo/demo.sql"
psql_demo -d dscsa_demo -v ON_ERROR_STOP=1 --echo-queries -f "${REPO_ROOT}/demo/demo.sql"

log "Demo finished. Explore it with: sudo -u postgres psql -h /tmp -p ${DEMO_PORT} dscsa_demo"
