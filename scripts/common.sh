# Shared settings and helpers for the scripts in this folder. Sourced, not run.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_MAJOR=15
PGRX_VERSION=0.18.1
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
PG_CONFIG="${PG_BIN}/pg_config"
export PATH="${HOME}/.cargo/bin:${PATH}"
# One set of rustflags for every cargo command these scripts run: none. cargo-pgrx adds
# `-C link-arg=-Wl,--no-gc-sections` (with --config) to the builds it starts, cargo test
# and clippy do not, and a change of flags rebuilds every crate, so `cargo pgrx test`
# built all dependencies twice (6 minutes of CI). A RUSTFLAGS variable, even empty, takes
# precedence over any configured rustflags. The extension does not need the flag: its
# SQL entities and V1 functions are exported symbols, which the linker keeps (the
# schema generator finds all of them, and every test layer loads the library).
if [ "$(uname -s)" = Linux ]; then
    export RUSTFLAGS=""
fi

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

require_root() {
    [ "$(id -u)" -eq 0 ] || die "run this as root (it installs packages and the extension into PostgreSQL ${PG_MAJOR})"
}

# Fail before building when a path's filesystem has less than MIN GiB free: a full disk
# otherwise shows up late, as an unrelated-looking test failure (ENOSPC in a temporary
# file of some query), after most of the run.
#   require_free_space MIN_GIB WARN_GIB PATH...
require_free_space() {
    local min="$1" warn="$2" path free; shift 2
    for path in "$@"; do
        while [ ! -e "${path}" ]; do path="$(dirname "${path}")"; done
        free="$(df -P -BG "${path}" | awk 'NR == 2 { sub("G", "", $4); print $4 }')"
        [ "${free}" -ge "${min}" ] || die "only ${free} GiB free on the filesystem of ${path}; this run needs about ${warn} GiB (build tree and test clusters): free some space first"
        [ "${free}" -ge "${warn}" ] || printf '\nWARNING: only %s GiB free on the filesystem of %s; this run needs about %s GiB\n' "${free}" "${path}" "${warn}" >&2
    done
    return 0
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

# Debian packages the tests need beyond the build: pgbouncer for the pooler tests.
install_test_packages() {
    local missing=()
    for p in pgbouncer; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "Installing Debian packages for the tests: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Start pgbouncer in transaction pooling mode on 127.0.0.1, in front of a local cluster,
# run by postgres (pgbouncer refuses root). Users are accepted without a password
# (auth_type trust), as the cluster does.
#   start_pooler DIR PORT SERVER_PORT USER...
start_pooler() {
    local dir="$1" port="$2" server_port="$3"; shift 3
    mkdir -p "${dir}"
    : > "${dir}/userlist.txt"
    for u in "$@"; do printf '"%s" ""\n' "$u" >> "${dir}/userlist.txt"; done
    cat > "${dir}/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=${server_port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${port}
unix_socket_dir =
auth_type = trust
auth_file = ${dir}/userlist.txt
pool_mode = transaction
max_client_conn = 200
default_pool_size = 4
ignore_startup_parameters = extra_float_digits,options
logfile = ${dir}/pgbouncer.log
pidfile = ${dir}/pgbouncer.pid
INI
    chown -R postgres:postgres "${dir}"
    as_postgres /usr/sbin/pgbouncer -d -q "${dir}/pgbouncer.ini" \
        || { tail -n 20 "${dir}/pgbouncer.log" >&2 || true; die "pgbouncer did not start"; }
    for _ in $(seq 1 50); do
        (echo > "/dev/tcp/127.0.0.1/${port}") 2>/dev/null && return 0
        sleep 0.1
    done
    die "pgbouncer is not listening on ${port}"
}

stop_pooler() {
    local dir="$1"
    if [ -f "${dir}/pgbouncer.pid" ]; then
        kill "$(cat "${dir}/pgbouncer.pid")" 2>/dev/null || true
        rm -f "${dir}/pgbouncer.pid"
    fi
}

# Waits (up to SECONDS, default 30) until pg_dscsa's audit worker writes the trail in
# DATABASE.
#   wait_for_audit_worker PORT DATABASE [SECONDS]
wait_for_audit_worker() {
    local port="$1" db="$2" seconds="${3:-30}"
    for _ in $(seq 1 $((seconds * 10))); do
        if [ "$("${PG_BIN}/psql" -X -qAt -h 127.0.0.1 -p "${port}" -U postgres -d "${db}" \
                -c "SELECT worker_ready FROM dscsa.audit_status()" 2>/dev/null)" = "t" ]; then
            return 0
        fi
        sleep 0.1
    done
    die "the pg_dscsa audit worker did not become ready in database ${db}"
}

# Makes a streaming replica (hot standby) of a local primary and starts it.
#   start_standby PRIMARY_DATADIR PRIMARY_PORT STANDBY_DATADIR STANDBY_PORT [conf lines...]
start_standby() {
    local primary="$1" pport="$2" dir="$3" port="$4"; shift 4
    rm -rf "${dir}"
    mkdir -p "${dir}"
    chown postgres:postgres "${dir}"
    chmod 700 "${dir}"
    as_postgres "${PG_BIN}/pg_basebackup" -h 127.0.0.1 -p "${pport}" -U postgres -D "${dir}" -R -X stream -c fast \
        || die "pg_basebackup of the primary failed"
    {
        echo "port = ${port}"
        for line in "$@"; do echo "${line}"; done
    } | as_postgres tee -a "${dir}/postgresql.conf" >/dev/null
    as_postgres "${PG_BIN}/pg_ctl" -D "${dir}" -l "${dir}/server.log" -w -t 60 start >/dev/null \
        || { tail -n 30 "${dir}/server.log" >&2 || true; die "the standby did not start"; }
}
