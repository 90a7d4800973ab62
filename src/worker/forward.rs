//! On a hot standby nothing can be written, yet decryptions there must be audited. The
//! standby's worker sends its queued events to the primary named by
//! `dscsa.audit_forward_to` (`SELECT dscsa.audit_ingest($1)`, a role with
//! dscsa_audit_forwarder), where the primary's worker chains them into the one trail
//! like its own. The shared-memory queue is the bounded spool: while the primary is
//! unreachable events wait there, and when it is full decryption on the standby is
//! refused (fail closed). Slots are freed only once the primary committed the batch.
//! The standby anchors its own counters (origin = this standby), forwarded the same way.

use std::time::Duration;

use dscsa_core::audit::record::Event;

use super::libpq::Connection;
use super::{anchor_event, flush_interval, reload_if_asked, wait, worker_event};
use crate::{guc, shmem};

pub fn run() {
    // Ready at once: events are held in the queue until the primary takes them.
    shmem::register_worker(true);
    let mut conn: Option<Connection> = None;
    let mut since_anchor: u64 = 0;
    let mut last_anchor = std::time::Instant::now();
    let mut last_complaint: Option<std::time::Instant> = None;
    let mut pending = vec![worker_event(
        "worker",
        "start",
        "ok",
        serde_json::json!({ "role": "forwarder" }),
    )];
    loop {
        if reload_if_asked() {
            // dscsa.audit_forward_to may name another primary now.
            conn = None;
        }
        shmem::heartbeat();
        // SAFETY: reads shared recovery state.
        if !unsafe { pgrx::pg_sys::RecoveryInProgress() } {
            return; // promoted: restart as the trail's writer
        }
        if let Some(batch) = shmem::peek_pending() {
            let anchor_due = since_anchor + batch.events.len() as u64
                >= guc::AUDIT_ANCHOR_RECORDS.get().max(1) as u64
                || (since_anchor + batch.events.len() as u64 > 0
                    && last_anchor.elapsed()
                        >= Duration::from_secs(guc::AUDIT_ANCHOR_INTERVAL_S.get().max(1) as u64));
            if !batch.events.is_empty() || !pending.is_empty() || anchor_due {
                let mut events: Vec<Event> = std::mem::take(&mut pending);
                for queued in &batch.events {
                    if let Some(e) = crate::audit::decode_queued(queued) {
                        events.push(e);
                    }
                }
                if anchor_due {
                    events.push(anchor_event(&batch));
                }
                match send(&mut conn, &events) {
                    Ok(()) => {
                        shmem::mark_durable(batch.end_ticket, events.len() as u64, None);
                        if anchor_due {
                            since_anchor = 0;
                            last_anchor = std::time::Instant::now();
                        } else {
                            since_anchor += events.len() as u64;
                        }
                    }
                    Err(e) => {
                        // Keep everything queued; the non-queued extras go back too.
                        pending = events
                            .into_iter()
                            .filter(|e| e.record_type == "worker")
                            .collect();
                        conn = None;
                        if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                            pgrx::warning!(
                                "pg_dscsa: cannot forward audit records to the primary: {e}"
                            );
                            last_complaint = Some(std::time::Instant::now());
                        }
                    }
                }
            }
        }
        if !wait(flush_interval()) {
            return;
        }
    }
}

fn send(conn: &mut Option<Connection>, events: &[Event]) -> Result<(), String> {
    let target = guc::AUDIT_FORWARD_TO
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    if target.trim().is_empty() {
        return Err("dscsa.audit_forward_to is not set".into());
    }
    if conn.as_ref().is_none_or(|c| !c.is_ok()) {
        let info = if target.contains("connect_timeout") {
            target
        } else {
            format!("{target} connect_timeout=5")
        };
        *conn = Some(Connection::connect(&info)?);
    }
    let c = conn.as_mut().ok_or("no connection")?;
    let body = serde_json::to_string(events).map_err(|e| e.to_string())?;
    c.exec_with_text("SELECT dscsa.audit_ingest($1)", &body)
}
