# Instructions per transaction, counted by callgrind: the one measurement here that does
# not move with the host. Sourced by scripts/bench.sh (BENCH_ONLY=instructions), after the
# lookup part's setup, on the benchmark cluster.
#
# The pgbench ratios of the lookup and insert parts move by 10-30% from one run to the
# next on a shared host (docs/BENCHMARKS.md). Here the same workloads run under valgrind:
# the cluster is restarted under `valgrind --tool=callgrind --trace-children=yes`, each
# configuration runs as one pgbench client with prepared statements (the application's
# protocol, as in the pgbench parts) for N1 and then N2 transactions with the same random
# seed, and the backend's instruction count for N2 minus the one for N1, divided by
# N2 - N1, is what one transaction costs the server: connection start-up, key loading and
# the first planning cancel out. The same binary, data and statements give the same count
# on every run, whatever else the machine does.
#
# `lk_shape` is the bound the view's lookup is measured against: the same plan without
# pg_dscsa (bench/lookup_setup.sql's lookup_shape_plain: an index condition computed from
# the parameter at each execution and a recheck, through a security_invoker view, with
# builtin functions of trivial cost), i.e. what PostgreSQL alone spends on that shape.
#
# What it does not see: memory and cache effects (a bigger table costs more misses, not
# more instructions), the scheduler, the client, and CPU extensions valgrind does not
# emulate. SHA-256 is one of them: valgrind's CPU has no SHA extensions, so the blind
# index's HMAC runs in software under it (about 7,000 instructions per lookup; a few
# hundred with the extensions, on the hosts measured here). The part prints that share
# separately.

INSTR_N1="${INSTR_N1:-2000}"
INSTR_N2="${INSTR_N2:-12000}"

# The callgrind file of the backend that served one pgbench run. callgrind writes a
# process's file when it exits: wait until the postmaster's children that were not there
# before the run (its backend, pgbench's start-up connection's if still exiting) are
# gone, then take the largest new file (the start-up connection and a KMS hook, if one
# ran, leave small ones). Autovacuum is off under callgrind, so no worker adds one.
#   instr_backend_file DIR BEFORE_FILES BEFORE_CHILDREN
instr_backend_file() {
    local dir="$1" before="$2" children_before="$3" waited=0 pm pid f
    pm="$(head -1 "${BENCH_ROOT}/data/postmaster.pid")"
    for pid in $(comm -13 <(echo "${children_before}") <(pgrep -P "${pm}" | sort)); do
        while kill -0 "${pid}" 2>/dev/null; do
            (( waited < 1200 )) || die "callgrind: backend ${pid} did not exit"
            sleep 0.5; waited=$((waited + 1))
        done
    done
    for f in $(comm -13 <(echo "${before}") <(ls "${dir}"/cg.* 2>/dev/null | sort)); do
        grep -q '^totals:' "${f}" || die "callgrind: ${f} is incomplete"
        grep -q "^cmd: *${PG_BIN}/postgres" "${f}" && echo "$(sed -n 's/^summary: //p' "${f}") ${f}"
    done | sort -n | tail -1 | awk '{print $2}'
}

# instr_run NAME SCRIPT PGOPTIONS TRANSACTIONS: prints the instruction count of the run's
# backend and the instructions it spent in SHA-256's software block function.
instr_run() {
    local name="$1" script="$2" options="$3" t="$4" dir="${BENCH_ROOT}/callgrind" before file children
    before="$(ls "${dir}"/cg.* 2>/dev/null | sort)"
    children="$(pgrep -P "$(head -1 "${BENCH_ROOT}/data/postmaster.pid")" | sort)"
    as_postgres env PGOPTIONS="${options}" "${PG_BIN}/pgbench" -n -h /tmp -p "${BENCH_PORT}" -c 1 -j 1 \
        -M prepared -t "${t}" --random-seed=11 -D rows="${VRS_ROWS}" -D loaded=0 \
        -f "${REPO_ROOT}/bench/${script}" postgres >"${dir}/pgbench_${name}_${t}.log" 2>&1 \
        || { tail -n 20 "${dir}/pgbench_${name}_${t}.log" >&2; die "pgbench ${name} under callgrind failed"; }
    file="$(instr_backend_file "${dir}" "${before}" "${children}")"
    [[ -n "${file}" ]] || die "callgrind: no profile of the ${name} backend"
    # Self cost of SHA-256's software block function (inclusive counts would count
    # recursive frames twice).
    echo "$(sed -n 's/^summary: //p' "${file}") $(callgrind_annotate --threshold=100 "${file}" 2>/dev/null |
        awk '/sha2::sha256::(soft::)?compress256/ {gsub(",", "", $1); s += $1} END {print s + 0}')"
}

bench_instructions() {
    if ! command -v valgrind >/dev/null || ! command -v callgrind_annotate >/dev/null; then
        log "Installing valgrind (Debian) for the instruction counts"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null \
            || die "valgrind could not be installed"
    fi
    local dir="${BENCH_ROOT}/callgrind" waited=0
    rm -rf "${dir}"; mkdir -p "${dir}"; chown postgres:postgres "${dir}"
    log "Instruction counts: restarting the benchmark cluster under callgrind (slow: about 50 times)"
    stop_cluster "${BENCH_ROOT}/data"
    as_postgres bash -c "cd '${dir}' && exec valgrind --tool=callgrind --trace-children=yes \
        --callgrind-out-file='${dir}/cg.%p' '${PG_BIN}/postgres' -D '${BENCH_ROOT}/data' -c autovacuum=off \
        -c dscsa.key_cache_ttl=3600" \
        >"${dir}/postmaster.log" 2>&1 &
    local valgrind_job=$!
    until "${PG_BIN}/pg_isready" -q -h /tmp -p "${BENCH_PORT}"; do
        (( waited < 600 )) || { tail -n 20 "${dir}/postmaster.log" >&2; die "the cluster did not start under callgrind"; }
        sleep 0.5; waited=$((waited + 1))
    done
    # The audit worker starts about 50 times slower too.
    wait_for_audit_worker "${BENCH_PORT}" postgres 300
    # The keys into the cluster's key cache now, and kept there for the whole part (TTL
    # above): otherwise the first run that uses a key, N1 transactions, also counts a
    # call of the KMS hook that N2 does not, and that configuration comes out low.
    as_postgres psql -X -q -h /tmp -p "${BENCH_PORT}" -d postgres -v ON_ERROR_STOP=1 \
        -c "SELECT dscsa.load_key('bench') + dscsa.load_key('lookup_bidx')" >/dev/null

    local results="${dir}/results.txt" spec name script options
    : >"${results}"
    for spec in \
        "lk_plain|lookup_plain.pgbench|" \
        "lk_view|lookup_view.pgbench|" \
        "lk_trl_off|lookup_view.pgbench|-c dscsa.audit=off" \
        "lk_shape|lookup_shape.pgbench|" \
        "ins_plain|insert_plain.pgbench|" \
        "ins_view|insert_view.pgbench|-c dscsa.key_name=bench" \
        "ins_direct|insert_direct.pgbench|-c dscsa.key_name=bench"; do
        IFS='|' read -r name script options <<<"${spec}"
        log "callgrind: ${name}, ${INSTR_N1} and ${INSTR_N2} transactions"
        local a b
        # One short uncounted run first: what the first use of a configuration does once
        # for the whole cluster (hint bits on fresh pages, a key's first load) would
        # otherwise fall in N1 alone.
        instr_run "${name}" "${script}" "${options}" 5 >/dev/null
        a="$(instr_run "${name}" "${script}" "${options}" "${INSTR_N1}")"
        b="$(instr_run "${name}" "${script}" "${options}" "${INSTR_N2}")"
        awk -v name="${name}" -v a="${a}" -v b="${b}" -v n=$((INSTR_N2 - INSTR_N1)) 'BEGIN {
            split(a, x, " "); split(b, y, " ")
            printf "%s %.0f %.0f\n", name, (y[1] - x[1]) / n, (y[2] - x[2]) / n
        }' | tee -a "${results}"
    done
    stop_cluster "${BENCH_ROOT}/data"
    wait "${valgrind_job}" || true

    echo
    echo "Instructions per transaction (callgrind; one client, prepared statements; the"
    echo "difference of ${INSTR_N2} and ${INSTR_N1} transactions). 'sha256' is the blind index's"
    echo "SHA-256 in software (valgrind has no SHA extensions); 'ratio' is the baseline's count"
    echo "over the configuration's (throughput at equal speed), 'ratio w/o sha' leaves that share out:"
    awk '
        { n[NR] = $1; i[NR] = $2; s[NR] = $3; idx[$1] = NR }
        function base(name) { return name ~ /^lk_/ ? idx["lk_plain"] : idx["ins_plain"] }
        END {
            printf "%-10s %12s %8s %7s %13s\n", "config", "instructions", "sha256", "ratio", "ratio w/o sha"
            for (k = 1; k <= NR; k++) {
                b = base(n[k])
                # A few transactions (the test suite runs this part with 20 and 40) leave
                # one-time work of the backend in the difference: no ratio then.
                if (i[k] <= s[k] || i[b] <= 0) {
                    printf "%-10s %12d %8d %7s %13s  (too few transactions to count)\n", n[k], i[k], s[k], "-", "-"
                    continue
                }
                printf "%-10s %12d %8d %7.3f %13.3f\n", n[k], i[k], s[k], i[b] / i[k], i[b] / (i[k] - s[k])
            }
        }' "${results}"
    # Back to normal for the parts that follow (and DSCSA_BENCH_KEEP).
    start_cluster "${BENCH_ROOT}/data" "${BENCH_PORT}"
    wait_for_audit_worker "${BENCH_PORT}" postgres
}
