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
# The server was started before this build was installed on an earlier run: reload the library.
as_postgres "${PG_BIN}/pg_ctl" -D "${DEMO_DATADIR}" -l "${DEMO_DATADIR}/server.log" -w restart >/dev/null

psql_demo() { as_postgres psql -X -h /tmp -p "${DEMO_PORT}" "$@"; }
psql_demo -q -d postgres -c "DROP DATABASE IF EXISTS dscsa_demo" -c "CREATE DATABASE dscsa_demo"

log "Running demo/demo.sql"
psql_demo -d dscsa_demo -v ON_ERROR_STOP=1 --echo-queries -f "${REPO_ROOT}/demo/demo.sql"

log "Demo finished. Explore it with: sudo -u postgres psql -h /tmp -p ${DEMO_PORT} dscsa_demo"
