//! pg_dscsa_audit_verify: checks an exported audit trail without the database.
//!
//! Usage: pg_dscsa_audit_verify --export FILE --kms-command 'CMD' [--log SERVER_LOG]...
//!
//! The export (dscsa.audit_export(), JSON Lines) names its audit key versions in wrapped
//! form; CMD is a KMS hook (protocol 1, docs/KMS.md) that can unwrap them. Server logs,
//! if given, supply the anchors the worker wrote ("pg_dscsa audit anchor: seq=... mac=..."),
//! which reveal a cut-off tail. Prints the result; exits 0 when the trail verifies, 1 at
//! the first break (named with its kind and sequence number), 2 on a usage or input error.

use std::io::{BufRead, BufReader};
use std::process::ExitCode;
use std::time::Duration;

use dscsa_core::audit::chain::{AuditKey, AuditKeys};
use dscsa_core::audit::export;
use dscsa_core::audit::verify::{LoggedAnchor, Verifier};

struct Args {
    export: String,
    kms_command: String,
    logs: Vec<String>,
}

fn parse_args() -> Option<Args> {
    let mut export = None;
    let mut kms_command = None;
    let mut logs = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--export" => export = Some(it.next()?),
            "--kms-command" => kms_command = Some(it.next()?),
            "--log" => logs.push(it.next()?),
            _ => return None,
        }
    }
    Some(Args {
        export: export?,
        kms_command: kms_command?,
        logs,
    })
}

/// The anchors in a server log, read line by line (logs can be large and need not be
/// UTF-8 throughout).
fn anchors_in_log(path: &str) -> std::io::Result<Vec<LoggedAnchor>> {
    let mut found = Vec::new();
    for line in BufReader::new(std::fs::File::open(path)?).split(b'\n') {
        if let Some(a) = LoggedAnchor::parse_log_line(&String::from_utf8_lossy(&line?)) {
            found.push(a);
        }
    }
    Ok(found)
}

fn main() -> ExitCode {
    let Some(args) = parse_args() else {
        eprintln!(
            "usage: pg_dscsa_audit_verify --export FILE --kms-command 'CMD' [--log SERVER_LOG]..."
        );
        return ExitCode::from(2);
    };
    let file = match std::fs::File::open(&args.export) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot read {}: {e}", args.export);
            return ExitCode::from(2);
        }
    };
    let (header, records) = match export::read(BufReader::new(file)) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut keys = AuditKeys::new();
    for k in &header.audit_keys {
        match k.unwrap_with(&args.kms_command, Duration::from_secs(30)) {
            Ok(raw) => keys.add(AuditKey::new(k.key_id, &raw)),
            Err(e) => {
                eprintln!(
                    "cannot unwrap audit key {} version {}: {e}",
                    k.key_id, k.version
                );
                return ExitCode::from(2);
            }
        }
    }
    let mut anchors = Vec::new();
    for path in &args.logs {
        match anchors_in_log(path) {
            Ok(found) => anchors.extend(found),
            Err(e) => {
                eprintln!("cannot read {path}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    // An export of a range ends where it was asked to: anchors past that end say
    // nothing about it. An export to the end of the trail is checked against every
    // anchor logged before it was taken.
    if let Some(to) = header.to_seq {
        anchors.retain(|a| a.seq <= to);
    }
    // Anchors logged after the export was taken are past its end by nature.
    anchors.retain(|a| a.precedes(header.exported_at_micros));
    let mut v = Verifier::new(&keys, &anchors);
    for r in records {
        if v.broken() {
            break;
        }
        match r {
            Ok(r) => v.push(r),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    let report = v.finish();
    if report.anchors_logged_ignored > 0 {
        println!(
            "{} anchor-like lines in the logs ignored: their tag does not verify (not written by the audit worker)",
            report.anchors_logged_ignored
        );
    }
    println!(
        "database {}: {} records ({}..{}), {} anchors in the trail, {} logged anchors checked, {} counter intervals checked",
        header.database,
        report.records,
        report.first_seq.map_or("-".into(), |s| s.to_string()),
        report.last_seq.map_or("-".into(), |s| s.to_string()),
        report.anchors_in_trail,
        report.anchors_logged_checked,
        report.intervals_checked
    );
    match report.first_break {
        None => {
            println!("ok: the trail verifies");
            ExitCode::SUCCESS
        }
        Some(b) => {
            println!("BROKEN {} at {}: {b}", b.kind(), b.seq());
            ExitCode::from(1)
        }
    }
}
