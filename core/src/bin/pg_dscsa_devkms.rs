//! pg_dscsa_devkms: the development KMS hook (see docs/KMS.md).
//!
//! Usage: pg_dscsa_devkms --kek-file PATH
//! Reads one protocol request on stdin, answers on stdout, exits 0; on failure prints one
//! line to stderr and exits 1 (2 for a usage error). Never prints key material.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use dscsa_core::devkms::DevKek;
use dscsa_core::kms::{Operation, Request, MAX_RESPONSE_LEN};
use dscsa_core::Error;
use zeroize::Zeroizing;

fn kek_path() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next(), args.next()) {
        (Some("--kek-file"), Some(path), None) => Some(PathBuf::from(path)),
        _ => None,
    }
}

fn serve(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut input = Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(MAX_RESPONSE_LEN as u64 + 1)
        .read_to_end(&mut input)
        .map_err(|e| Error::Kms(format!("cannot read stdin: {e}")))?;
    let request = Request::decode(&input)?;
    // Only wrap (creating a key) may create the KEK file; unwrap needs the existing one.
    let kek = DevKek::load(path, request.operation == Operation::Wrap)?;
    Ok(kek.handle(&request)?.encode())
}

fn main() -> ExitCode {
    let Some(path) = kek_path() else {
        eprintln!("usage: pg_dscsa_devkms --kek-file PATH");
        return ExitCode::from(2);
    };
    match serve(&path) {
        Ok(out) => {
            if std::io::stdout().write_all(&out).is_err() {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pg_dscsa_devkms: {e}");
            ExitCode::from(1)
        }
    }
}
