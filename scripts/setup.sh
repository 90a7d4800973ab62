#!/usr/bin/env bash
# Installs everything pg_dscsa needs on Debian 12 (as root), then builds and installs the
# extension, its development KMS hook, the production KMS hooks (docs/KMS.md) and the
# offline audit verifier into the local PostgreSQL 15. Safe to re-run: each step checks
# whether it is already done.
source "$(dirname "$0")/common.sh"
require_root

install_packages() {
    local wanted=(postgresql-${PG_MAJOR} postgresql-client-${PG_MAJOR} postgresql-server-dev-${PG_MAJOR}
                  libclang-dev clang pkg-config sudo make ca-certificates)
    local missing=()
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "Installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

install_cargo_pgrx() {
    command -v cargo >/dev/null || die "cargo (Rust 1.95) is required: install it with rustup first"
    if ! cargo pgrx --version 2>/dev/null | grep -q "${PGRX_VERSION}"; then
        log "Installing cargo-pgrx ${PGRX_VERSION} (about 7 minutes on 2 cores)"
        cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked
    fi
    if ! grep -q "pg${PG_MAJOR}" "${HOME}/.pgrx/config.toml" 2>/dev/null; then
        log "Pointing pgrx at the system PostgreSQL ${PG_MAJOR}"
        cargo pgrx init --pg${PG_MAJOR} "${PG_CONFIG}" >/dev/null
    fi
}

install_extension() {
    cd "${REPO_ROOT}"
    log "Building and installing the pg_dscsa extension (release)"
    cargo pgrx install --release --pg-config "${PG_CONFIG}" >/dev/null
    log "Installing the development KMS hook and the offline audit verifier next to postgres"
    cargo build --release -q -p dscsa-core --bins
    install -m 0755 target/release/pg_dscsa_devkms "${PG_BIN}/pg_dscsa_devkms"
    install -m 0755 target/release/pg_dscsa_audit_verify "${PG_BIN}/pg_dscsa_audit_verify"
    log "Building the production KMS hooks: PKCS#11, AWS KMS, Vault/OpenBao transit (the AWS SDK takes a few minutes the first time)"
    cargo build --profile hooks -q -p dscsa-hooks
    for hook in pg_dscsa_kms_pkcs11 pg_dscsa_kms_aws pg_dscsa_kms_transit; do
        install -m 0755 "target/hooks/${hook}" "${PG_BIN}/${hook}"
    done
}

install_packages
install_cargo_pgrx
if [ "${1:-}" != "--deps-only" ]; then
    install_extension
fi
