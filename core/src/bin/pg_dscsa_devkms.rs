//! pg_dscsa_devkms: the development KMS hook (see docs/KMS.md).
//!
//! Usage: pg_dscsa_devkms --kek-file PATH                   (the hook itself)
//!        pg_dscsa_devkms --kek-file PATH --add-kek         (new current KEK; prints its fingerprint)
//!        pg_dscsa_devkms --kek-file PATH --remove-kek FP   (drop an old KEK)
//!        pg_dscsa_devkms --kek-file PATH --list            (fingerprints, current first)
//! As a hook it reads one protocol request on stdin, answers on stdout, exits 0; on
//! failure it prints one line to stderr and exits 1 (2 for a usage error). It never
//! prints key material.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use dscsa_core::devkms::DevKeks;
use dscsa_core::kms::{Operation, Request, MAX_RESPONSE_LEN};
use dscsa_core::Error;
use zeroize::Zeroizing;

enum Command {
    Serve,
    AddKek,
    RemoveKek(String),
    List,
}

fn parse_args() -> Option<(PathBuf, Command)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--kek-file", path] => Some((PathBuf::from(path), Command::Serve)),
        ["--kek-file", path, "--add-kek"] => Some((PathBuf::from(path), Command::AddKek)),
        ["--kek-file", path, "--list"] => Some((PathBuf::from(path), Command::List)),
        ["--kek-file", path, "--remove-kek", fp] => {
            Some((PathBuf::from(path), Command::RemoveKek(fp.to_string())))
        }
        _ => None,
    }
}

fn admin(path: &std::path::Path, command: Command) -> Result<Zeroizing<Vec<u8>>, Error> {
    let out = match command {
        Command::AddKek => DevKeks::load(path, true)?.add_kek()?,
        Command::RemoveKek(fp) => {
            DevKeks::load(path, false)?.remove_kek(&fp)?;
            fp
        }
        Command::List => DevKeks::load(path, false)?.fingerprints().join("\n"),
        Command::Serve => return serve(path),
    };
    Ok(Zeroizing::new(format!("{out}\n").into_bytes()))
}

fn serve(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut input = Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(MAX_RESPONSE_LEN as u64 + 1)
        .read_to_end(&mut input)
        .map_err(|e| Error::Kms(format!("cannot read stdin: {e}")))?;
    let request = Request::decode(&input)?;
    // Only wrap (creating a key) may create the KEK file; unwrap needs the existing one.
    let kek = DevKeks::load(path, request.operation == Operation::Wrap)?;
    Ok(kek.handle(&request)?.encode())
}

fn main() -> ExitCode {
    let Some((path, command)) = parse_args() else {
        eprintln!("usage: pg_dscsa_devkms --kek-file PATH [--add-kek | --remove-kek FINGERPRINT | --list]");
        return ExitCode::from(2);
    };
    match admin(&path, command) {
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
