//! pg_dscsa KMS hook for Vault / OpenBao transit (protocol 1):
//! `pg_dscsa_kms_transit [--check] CONFIG`. See dscsa_hooks::transit and docs/KMS.md,
//! "Vault / OpenBao transit".

fn main() -> std::process::ExitCode {
    dscsa_hooks::main(dscsa_hooks::transit::TransitProvider::from_config)
}
