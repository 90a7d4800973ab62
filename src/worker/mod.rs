//! pg_dscsa's background worker: one per cluster, registered when the library is in
//! `shared_preload_libraries`, restarted by the postmaster a second after it exits.
//!
//! On a primary it is the single writer of the audit trail (`writer`): it takes the
//! events the backends queued in shared memory (src/shmem.rs), chains them with the audit
//! key, writes them to `dscsa.audit_log` in the database named by `dscsa.audit_database`,
//! anchors the chain in the server log, and raises tamper alerts. On a hot standby, where
//! nothing can be written, it forwards the standby's events to the primary (`forward`).
//! It frees queue slots only after what they held is committed (on the primary) or
//! acknowledged (by the primary), so restarting it loses nothing.

mod alerts;
mod forward;
mod libpq;
mod writer;

pub use writer::AUDIT_KEY_NAME;

use std::time::Duration;

use dscsa_core::audit::record::{canonical_json, Counter, Event};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::{guc, shmem};

/// Registers the worker (only while shared_preload_libraries are processed).
pub fn register() {
    // SAFETY: reads a postmaster global during _PG_init.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("pg_dscsa worker")
        .set_type("pg_dscsa worker")
        .set_library("pg_dscsa")
        .set_function("dscsa_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn dscsa_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    shmem::register_worker(false);
    // SAFETY: reads shared recovery state.
    let standby = unsafe { pg_sys::RecoveryInProgress() };
    if standby {
        forward::run();
    } else {
        let database = guc::AUDIT_DATABASE
            .get()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|| "postgres".into());
        BackgroundWorker::connect_worker_to_spi(Some(&database), None);
        writer::run(&database);
    }
    shmem::unregister_worker();
    // Exit code 1: the postmaster starts the worker again (0 would unregister it).
    // SAFETY: ends this process the way PostgreSQL processes end.
    unsafe { pg_sys::proc_exit(1) }
}

/// Sleeps until the latch is set (a backend queued events) or `timeout` passes. Returns
/// false when the worker should stop (SIGTERM, postmaster gone).
fn wait(timeout: Duration) -> bool {
    BackgroundWorker::wait_latch(Some(timeout)) && !BackgroundWorker::sigterm_received()
}

/// Re-reads the configuration files after SIGHUP; returns whether it did.
fn reload_if_asked() -> bool {
    if BackgroundWorker::sighup_received() {
        // SAFETY: what PostgreSQL processes do on SIGHUP, from the main loop.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        true
    } else {
        false
    }
}

fn flush_interval() -> Duration {
    Duration::from_millis(guc::AUDIT_FLUSH_INTERVAL_MS.get().max(10) as u64)
}

/// An event the worker itself records (start, configuration reloads, problems).
fn worker_event(
    record_type: &str,
    operation: &str,
    outcome: &str,
    detail: serde_json::Value,
) -> Event {
    Event {
        ts_micros: crate::audit::now_micros(),
        origin: crate::audit::origin(),
        epoch: shmem::epoch().unwrap_or(0),
        record_type: record_type.into(),
        database: None,
        session_user: Some("pg_dscsa worker".into()),
        current_user: None,
        client_addr: None,
        application: None,
        // SAFETY: reads MyProcPid.
        backend_pid: Some(unsafe { pg_sys::MyProcPid }),
        backend_start: None,
        statement_id: None,
        query_id: None,
        statement: None,
        operation: operation.into(),
        key_id: None,
        key_name: None,
        key_version: None,
        field_kind: None,
        context: None,
        outcome: outcome.into(),
        count: 0,
        detail: Some(canonical_json(&detail)),
    }
}

fn set_or_not(v: String) -> String {
    if v.trim().is_empty() {
        "not set"
    } else {
        "set"
    }
    .to_string()
}

/// The audit settings a reload can change, as text, to record what changed.
fn audit_settings() -> Vec<(&'static str, String)> {
    let s = |v: Option<std::ffi::CString>| {
        v.map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    vec![
        ("dscsa.audit", guc::on_off(guc::AUDIT.get())),
        (
            "dscsa.audit_durability",
            format!("{:?}", guc::AUDIT_DURABILITY.get()).to_lowercase(),
        ),
        (
            "dscsa.audit_statement_text",
            guc::on_off(guc::AUDIT_STATEMENT_TEXT.get()),
        ),
        (
            "dscsa.audit_flush_interval",
            guc::AUDIT_FLUSH_INTERVAL_MS.get().to_string(),
        ),
        (
            "dscsa.audit_anchor_records",
            guc::AUDIT_ANCHOR_RECORDS.get().to_string(),
        ),
        (
            "dscsa.audit_anchor_interval",
            guc::AUDIT_ANCHOR_INTERVAL_S.get().to_string(),
        ),
        (
            "dscsa.alert_interval",
            guc::ALERT_INTERVAL_S.get().to_string(),
        ),
        // Whether a command or a primary is set, not the strings (they may hold secrets).
        (
            "dscsa.alert_command",
            set_or_not(s(guc::ALERT_COMMAND.get())),
        ),
        (
            "dscsa.audit_forward_to",
            set_or_not(s(guc::AUDIT_FORWARD_TO.get())),
        ),
    ]
}

/// Events for the settings a reload changed.
fn config_changes(
    before: &[(&'static str, String)],
    after: &[(&'static str, String)],
) -> Vec<Event> {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b.1 != a.1)
        .map(|(b, a)| {
            worker_event(
                "config",
                "reload",
                "changed",
                serde_json::json!({ "setting": b.0, "old": b.1, "new": a.1, "scope": "server" }),
            )
        })
        .collect()
}

/// An anchor: the running completeness counters of every (origin, epoch, database) the
/// batch carries (docs/AUDIT.md, "Anchors"). Written by the primary's writer into the
/// trail, and by a standby's forwarder with its own records.
fn anchor_event(batch: &shmem::Batch) -> Event {
    let mut totals = serde_json::Map::new();
    for c in &batch.counters {
        let mut m = serde_json::Map::new();
        for counter in Counter::ALL {
            m.insert(counter.name().into(), c.values[counter.index()].into());
        }
        totals.insert(c.name(), serde_json::Value::Object(m));
    }
    let mut e = worker_event(
        "anchor",
        "anchor",
        "ok",
        serde_json::json!({ "totals": totals }),
    );
    e.epoch = batch.epoch;
    e
}
