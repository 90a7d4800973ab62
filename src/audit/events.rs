//! Building and queueing the individual audit events: tamper detections, key lifecycle,
//! migration jobs, changes of audit settings.

use dscsa_core::audit::record::{canonical_json, Event};
use dscsa_core::envelope::FieldKind;
use pgrx::pg_sys;

use super::{enabled, session, Op};
use crate::{keys, shmem};

pub fn serialize(e: &Event) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(e).unwrap_or_default();
    if bytes.len() > shmem::SLOT_DATA {
        // Only a statement text can be this long; drop it rather than the record.
        let mut e = e.clone();
        e.statement = Some("[statement too long for the audit queue]".into());
        bytes = serde_json::to_vec(&e).unwrap_or_default();
    }
    bytes
}

/// Fills in key id, name and version (as this session knows them), kind and context.
pub fn set_key(e: &mut Event, key_id: u32, kind: Option<FieldKind>, context: &[u8]) {
    e.key_id = i32::try_from(key_id).ok();
    if let Some((name, version)) = keys::describe(key_id) {
        e.key_name = Some(name);
        e.key_version = Some(version);
    }
    e.field_kind = kind.map(|k| k.name().to_string());
    e.context = Some(String::from_utf8_lossy(context).into_owned());
}

/// Queues events that describe what already happened: waits up to a second for room,
/// then reports in the server log what could not be queued (without values; the
/// counters still count them). Returns the ticket of the last one queued. `wake`: the
/// worker should take them now (else at its next round).
pub fn enqueue_or_log(events: &[Event], wake: bool) -> Option<u64> {
    if events.is_empty() || !shmem::available() {
        return None;
    }
    super::forget_group();
    for _ in 0..100 {
        match super::enqueue(events, false, wake) {
            Ok(ticket) => return Some(ticket),
            Err(shmem::QueueError::NotPreloaded) => return None,
            Err(shmem::QueueError::Full) => {
                // SAFETY: sleeps this backend only.
                unsafe { pg_sys::pg_usleep(10_000) };
            }
        }
    }
    super::count_lost(events);
    pgrx::log!(
        "pg_dscsa: the audit queue stayed full; {} audit records of this backend were not queued (the counters show the gap)",
        events.len()
    );
    None
}

/// A value failed authentication: one record at once (the worker raises the alert).
pub fn tamper(op: Op, key_id: u32, kind: Option<FieldKind>, context: &[u8], where_: Option<&str>) {
    if !enabled() {
        return;
    }
    let mut e = session::event("tamper", op.name(), "failed");
    e.count = 1;
    set_key(&mut e, key_id, kind, context);
    e.detail = where_.map(str::to_string);
    enqueue_or_log(&[e], true);
}

/// A key lifecycle change made in SQL (create, rotate, retire, grant, revoke, import, KEK
/// rotation): queued when the transaction ends, with its outcome.
pub fn key_event(
    operation: &str,
    key_name: Option<&str>,
    key_id: Option<i32>,
    version: Option<i32>,
    detail: Option<String>,
) {
    if !enabled() {
        return;
    }
    let mut e = session::event("key", operation, "pending");
    e.count = 1;
    e.key_name = key_name.map(str::to_string);
    e.key_id = key_id;
    e.key_version = version;
    e.detail = detail;
    super::push_pending_key_event(e);
}

/// A key event of this session that is not transactional (a load or unload of session
/// keys, a failed load): queued at once.
pub fn key_event_now(operation: &str, key_name: &str, outcome: &str, detail: serde_json::Value) {
    if !enabled() {
        return;
    }
    let mut e = session::event("key", operation, outcome);
    e.count = 1;
    e.key_name = Some(key_name.to_string());
    e.detail = Some(canonical_json(&detail));
    enqueue_or_log(&[e], true);
}

/// A migration job's start, progress or end (protect/unprotect/abort, reencrypt,
/// reindex_blind, verify_column).
pub fn job_event(operation: &str, outcome: &str, detail: serde_json::Value) {
    if !enabled() {
        return;
    }
    let mut e = session::event("job", operation, outcome);
    e.detail = Some(canonical_json(&detail));
    enqueue_or_log(&[e], true);
}

/// A change of an audit setting in a session. Recorded even when the new value turns
/// auditing off (the check hook runs before the assignment).
pub fn config_event(setting: &str, new_value: String) {
    if !shmem::available() {
        return;
    }
    // The value in force until now (the check hook runs before the assignment).
    let old_value = std::ffi::CString::new(setting).ok().and_then(|name| {
        // SAFETY: a lookup by name; missing_ok, and the result is copied at once.
        let p = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
        // SAFETY: GetConfigOption returns NULL or a NUL-terminated string.
        (!p.is_null()).then(|| {
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        })
    });
    let mut e = session::event("config", "set", "changed");
    e.detail = Some(canonical_json(&serde_json::json!({
        "setting": setting, "old": old_value, "new": new_value, "scope": "session"
    })));
    enqueue_or_log(&[e], true);
}
