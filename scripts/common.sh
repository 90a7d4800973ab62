# Shared settings and helpers for the scripts in this folder. Sourced, not run.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_MAJOR=15
PGRX_VERSION=0.18.1
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
PG_CONFIG="${PG_BIN}/pg_config"
export PATH="${HOME}/.cargo/bin:${PATH}"

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

require_root() {
    [ "$(id -u)" -eq 0 ] || die "run this as root (it installs packages and the extension into PostgreSQL ${PG_MAJOR})"
}

# Run a command as the unprivileged postgres OS user (PostgreSQL refuses to run as root).
as_postgres() { sudo -u postgres -H -- "$@"; }

# Start (or reuse) a private cluster owned by postgres.
#   start_cluster DATADIR PORT [extra postgresql.conf lines...]
start_cluster() {
    local datadir="$1" port="$2"; shift 2
    if [ ! -f "${datadir}/PG_VERSION" ]; then
        mkdir -p "${datadir}"
        chown postgres:postgres "${datadir}"
        chmod 700 "${datadir}"
        as_postgres "${PG_BIN}/initdb" -D "${datadir}" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 >/dev/null
        {
            echo "port = ${port}"
            echo "listen_addresses = '127.0.0.1'"
            echo "unix_socket_directories = '/tmp'"
            echo "max_connections = 50"
            for line in "$@"; do echo "${line}"; done
        } | as_postgres tee -a "${datadir}/postgresql.conf" >/dev/null
    fi
    if ! as_postgres "${PG_BIN}/pg_ctl" -D "${datadir}" status >/dev/null 2>&1; then
        as_postgres "${PG_BIN}/pg_ctl" -D "${datadir}" -l "${datadir}/server.log" -w -t 60 start >/dev/null \
            || { tail -n 30 "${datadir}/server.log" >&2 || true; die "PostgreSQL did not start in ${datadir}"; }
    fi
}

stop_cluster() {
    local datadir="$1"
    if [ -f "${datadir}/PG_VERSION" ]; then
        as_postgres "${PG_BIN}/pg_ctl" -D "${datadir}" -m fast -w stop >/dev/null 2>&1 || true
    fi
}
