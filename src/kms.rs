//! Calls the KMS hook from a backend: resolves the command, applies the time limit, keeps
//! cancel and statement_timeout working while waiting, and validates the answer.

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dscsa_core::kms::{FailureClass, Operation, Request, Response};
use dscsa_core::{hook, Error};
use pgrx::prelude::*;
use zeroize::Zeroizing;

use crate::{breaker, guc};

static DEV_HOOK_WARNED: AtomicBool = AtomicBool::new(false);

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The bundled development hook: `pg_dscsa_devkms` installed next to the `postgres`
/// executable, with its KEK file `pg_dscsa_dev.kek` in the data directory.
fn development_command() -> String {
    // SAFETY: my_exec_path and DataDir are set by PostgreSQL before any backend runs SQL.
    let (exec_path, data_dir) = unsafe {
        let exec = CStr::from_ptr((&raw const pg_sys::my_exec_path).cast()).to_string_lossy();
        let data = if pg_sys::DataDir.is_null() {
            ".".into()
        } else {
            CStr::from_ptr(pg_sys::DataDir).to_string_lossy()
        };
        (exec.into_owned(), data.into_owned())
    };
    let bindir = std::path::Path::new(&exec_path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| ".".into());
    format!(
        "{} --kek-file {}",
        shell_quote(&format!("{bindir}/pg_dscsa_devkms")),
        shell_quote(&format!("{data_dir}/pg_dscsa_dev.kek"))
    )
}

fn command() -> String {
    let configured = guc::KMS_COMMAND
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !configured.trim().is_empty() {
        return configured;
    }
    if !DEV_HOOK_WARNED.swap(true, Ordering::Relaxed) {
        pgrx::warning!(
            "pg_dscsa is using the bundled development KMS hook (KEK file in the data directory); set dscsa.kms_command for production"
        );
    }
    development_command()
}

/// A short name for the configured hook, for messages and dscsa.kms_status: the
/// program's file name (never its arguments, which name configuration files).
pub fn provider_name(command: &str) -> String {
    let configured = guc::KMS_COMMAND
        .get()
        .map(|c| !c.to_string_lossy().trim().is_empty())
        .unwrap_or(false);
    if !configured {
        return "development hook (pg_dscsa_devkms)".into();
    }
    let program = command
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_matches(['\'', '"']);
    std::path::Path::new(program)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "KMS hook".into())
}

/// The configured hook command (for dscsa.kms_status and kms_health: only its name is
/// shown).
pub fn configured_command() -> String {
    command()
}

/// Runs one hook operation. The request carries key material only for `Wrap`.
pub fn call(
    operation: Operation,
    kek: &str,
    key_id: u32,
    key_name: &str,
    key_version: u32,
    data: Zeroizing<Vec<u8>>,
) -> Result<Response, Error> {
    let request = Request {
        operation,
        kek: kek.to_string(),
        key_id,
        key_name: key_name.to_string(),
        key_version,
        data,
    }
    .encode()?;
    let timeout = Duration::from_millis(guc::KMS_TIMEOUT_MS.get().max(1) as u64);
    let command = command();
    let gate = breaker::enter(&command, &provider_name(&command))?;
    let started = Instant::now();
    let result = hook::run(&command, &request, timeout, || {
        pgrx::check_for_interrupts!();
    })
    .and_then(|output| Response::decode(operation, &output));
    let latency_us = started.elapsed().as_micros() as i64;
    breaker::leave(
        gate,
        result.as_ref().map(|_| ()).map_err(FailureClass::of),
        latency_us,
    );
    let response = result?;
    pgrx::debug1!(
        "pg_dscsa: KMS hook {} succeeded for key \"{}\" version {} (key id {})",
        operation.name(),
        key_name,
        key_version,
        key_id
    );
    Ok(response)
}
