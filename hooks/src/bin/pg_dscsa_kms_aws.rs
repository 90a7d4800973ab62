//! pg_dscsa KMS hook for AWS KMS (protocol 1): `pg_dscsa_kms_aws [--check] CONFIG`.
//! See dscsa_hooks::aws and docs/KMS.md, "AWS KMS".

fn main() -> std::process::ExitCode {
    dscsa_hooks::main(dscsa_hooks::aws::AwsProvider::from_config)
}
