//! pg_dscsa KMS hook for a PKCS#11 HSM (protocol 1): `pg_dscsa_kms_pkcs11 [--check] CONFIG`.
//! See dscsa_hooks::pkcs11 and docs/KMS.md, "PKCS#11 HSM".

fn main() -> std::process::ExitCode {
    dscsa_hooks::main(dscsa_hooks::pkcs11::Pkcs11Provider::from_config)
}
