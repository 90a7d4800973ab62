# The KMS part of the benchmarks (issue 9), sourced by bench.sh after its cluster is up:
#   1. a packaging-line workload behind pgbouncer in transaction mode (8 clients, each
#      transaction loads its key with scope 'transaction' and encrypts one serial), with
#      the key cache on and off: transactions per second and hook runs;
#   2. key load latency through each provider (development hook, SoftHSM2 via PKCS#11,
#      moto via the AWS KMS API, OpenBao transit): median and p99, cache off and on.
# Printed, never asserted.

source "${REPO_ROOT}/scripts/kms_providers.sh"

bench_kms() {
    local pooler_dir="${BENCH_ROOT}/pgbouncer" pooler_port="${DSCSA_BENCH_POOLER_PORT:-55440}"
    local providers_dir="${BENCH_ROOT}/kms-providers"
    local seconds="${KMS_SECONDS:-20}" loads="${KMS_LOADS:-200}"
    local q=(as_postgres psql -X -q -h /tmp -p "${BENCH_PORT}" -v ON_ERROR_STOP=1)
    # Expanded now: the function's locals are gone when the script exits.
    trap "stop_pooler '${pooler_dir}'; stop_kms_providers '${providers_dir}'; stop_cluster '${BENCH_ROOT}/data'" EXIT

    start_pooler "${pooler_dir}" "${pooler_port}" "${BENCH_PORT}" postgres
    "${q[@]}" -d postgres -c "SELECT dscsa.grant_key('bench', 'postgres', 'encrypt')" >/dev/null

    hook_runs() {
        "${q[@]}" -d postgres -At -c "SELECT coalesce(sum(hook_runs), 0) FROM dscsa.kms_status"
    }
    set_cache() {
        if [ "$1" = on ]; then
            "${q[@]}" -d postgres -c "ALTER SYSTEM RESET dscsa.key_cache_max_ttl" -c "SELECT pg_reload_conf()" >/dev/null
        else
            "${q[@]}" -d postgres -c "ALTER SYSTEM SET dscsa.key_cache_max_ttl = 0" -c "SELECT pg_reload_conf()" >/dev/null
        fi
        sleep 1
    }

    log "KMS: pooled transactions (pgbouncer, transaction mode), ${CLIENTS:-8} clients, ${seconds} s, key cache on vs off"
    local results="${BENCH_ROOT}/kms_pooled.txt"
    : > "${results}"
    for cache in on off on off; do
        set_cache "${cache}"
        "${q[@]}" -d postgres -c "SELECT dscsa.flush_key_cache()" >/dev/null
        local before after out tps
        before="$(hook_runs)"
        out="$(as_postgres "${PG_BIN}/pgbench" -n -h 127.0.0.1 -p "${pooler_port}" -c "${CLIENTS:-8}" -j 2 \
            -M simple -T "${seconds}" -f "${REPO_ROOT}/bench/kms_pooled.pgbench" postgres)" \
            || die "pgbench (pooled, cache ${cache}) failed"
        after="$(hook_runs)"
        tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"${out}" | head -1)"
        local txns
        txns="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"${out}")"
        [[ -n "${tps}" && -n "${txns}" ]] || die "pgbench (pooled): no results in its output"
        printf 'cache_%-3s tps %9.1f  transactions %8d  hook_runs %7d\n' \
            "${cache}" "${tps}" "${txns}" "$((after - before))" | tee -a "${results}"
    done
    set_cache on
    awk '$1 == "cache_on" {on += $3; n1++} $1 == "cache_off" {off += $3; n2++}
         END { printf "pooled throughput, cache on / cache off: %.1fx (mean of %d runs each)\n",
               (on / n1) / (off / n2), n1 }' "${results}"
    stop_pooler "${pooler_dir}"

    log "KMS: key load latency per provider, ${loads} loads each, cache off and on"
    install_kms_providers
    start_kms_providers "${providers_dir}" "${DSCSA_BENCH_MOTO_PORT:-55441}" "${DSCSA_BENCH_BAO_PORT:-55442}"
    local spec name command kek
    for spec in \
        "devkms|${PG_BIN}/pg_dscsa_devkms --kek-file ${BENCH_ROOT}/kms/dev.kek|default" \
        "pkcs11|${PG_BIN}/pg_dscsa_kms_pkcs11 ${providers_dir}/pkcs11.conf|pg_dscsa-kek-1" \
        "aws|${PG_BIN}/pg_dscsa_kms_aws ${providers_dir}/aws.conf|alias/pg-dscsa-kek-1" \
        "transit|${PG_BIN}/pg_dscsa_kms_transit ${providers_dir}/transit.conf|pg-dscsa-kek"; do
        IFS='|' read -r name command kek <<<"${spec}"
        local db="kms_${name}"
        "${q[@]}" -d postgres -c "DROP DATABASE IF EXISTS ${db}" -c "CREATE DATABASE ${db}" \
            -c "ALTER DATABASE ${db} SET dscsa.kms_command = '${command}'" >/dev/null
        "${q[@]}" -d "${db}" -c "CREATE EXTENSION pg_dscsa" >/dev/null
        "${q[@]}" -d "${db}" -v kek="${kek}" >/dev/null <<'SQL'
SELECT CASE WHEN :'kek' = 'default' THEN dscsa.create_key('k') ELSE dscsa.create_key('k', :'kek') END;
SQL
        for cache in off on; do
            set_cache "${cache}"
            "${q[@]}" -d "${db}" -v provider="${name}" -v cache="${cache}" -v n="${loads}" \
                -f "${REPO_ROOT}/bench/kms_latency.sql" >/dev/null
        done
        "${q[@]}" -d "${db}" -c "SELECT provider, cache, count(*) AS loads,
               round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 3) AS median_ms,
               round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 3) AS p99_ms
          FROM kms_latency GROUP BY provider, cache ORDER BY cache DESC"
    done
    stop_kms_providers "${providers_dir}"
}
