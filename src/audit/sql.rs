//! The audit trail's SQL entry points: events from SQL routines, the state, the verifier
//! and the export.

use dscsa_core::audit::chain::{AuditKey, AuditKeys};
use dscsa_core::audit::export::{self, WrappedAuditKey};
use dscsa_core::audit::record::{canonical_json, Event, Record};
use dscsa_core::audit::verify::{LoggedAnchor, StoredRecord, Verifier};
use pgrx::prelude::*;

use super::{events, session};
use crate::error::{raise, OrRaise};
use crate::worker::AUDIT_KEY_NAME;
use crate::{keyring, owner, shmem};

fn internal(what: &str, e: impl std::fmt::Display) -> dscsa_core::Error {
    dscsa_core::Error::Internal(format!("{what}: {e}"))
}

/// `dscsa._audit_key_event(operation, key_name, key_id, key_version, old, new)`: a key
/// lifecycle change made in SQL, recorded when the transaction ends.
#[pg_extern(sql = false)]
fn audit_key_event(
    operation: &str,
    key_name: Option<&str>,
    key_id: Option<i32>,
    key_version: Option<i32>,
    old_state: Option<pgrx::JsonB>,
    new_state: Option<pgrx::JsonB>,
) {
    let detail = serde_json::json!({
        "old": old_state.map(|j| j.0),
        "new": new_state.map(|j| j.0),
    });
    events::key_event(
        operation,
        key_name,
        key_id,
        key_version,
        Some(canonical_json(&detail)),
    );
}

/// `dscsa._audit_job_event(operation, outcome, detail)`.
#[pg_extern(sql = false)]
fn audit_job_event(operation: &str, outcome: &str, detail: Option<pgrx::JsonB>) {
    events::job_event(
        operation,
        outcome,
        detail.map_or(serde_json::Value::Null, |j| j.0),
    );
}

type StatusRow = (
    name!(preloaded, bool),
    name!(worker_pid, Option<i32>),
    name!(worker_ready, Option<bool>),
    name!(heartbeat_age_ms, Option<i64>),
    name!(queued, Option<i64>),
    name!(queue_size, Option<i64>),
    name!(written, Option<i64>),
    name!(last_anchor_seq, Option<i64>),
    name!(epoch, Option<i64>),
    name!(counters, Option<pgrx::JsonB>),
);

/// `dscsa.audit_status()`.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn audit_status() -> TableIterator<
    'static,
    (
        name!(preloaded, bool),
        name!(worker_pid, Option<i32>),
        name!(worker_ready, Option<bool>),
        name!(heartbeat_age_ms, Option<i64>),
        name!(queued, Option<i64>),
        name!(queue_size, Option<i64>),
        name!(written, Option<i64>),
        name!(last_anchor_seq, Option<i64>),
        name!(epoch, Option<i64>),
        name!(counters, Option<pgrx::JsonB>),
    ),
> {
    let row: StatusRow = match shmem::status() {
        None => (false, None, None, None, None, None, None, None, None, None),
        Some(s) => {
            let mut counters = serde_json::Map::new();
            for c in &s.counters {
                let mut m = serde_json::Map::new();
                for counter in dscsa_core::audit::record::Counter::ALL {
                    m.insert(counter.name().into(), c.values[counter.index()].into());
                }
                counters.insert(c.name(), serde_json::Value::Object(m));
            }
            (
                true,
                Some(s.worker_pid),
                Some(s.worker_ready),
                Some(s.heartbeat_age_ms),
                Some(s.queued as i64),
                Some(s.slots as i64),
                Some(s.written as i64),
                Some(s.last_anchor_seq),
                Some(s.epoch),
                Some(pgrx::JsonB(serde_json::Value::Object(counters))),
            )
        }
    };
    TableIterator::once(row)
}

/// The audit key versions, wrapped, read as the extension owner (the auditor cannot
/// read the keyring).
fn wrapped_audit_keys() -> Vec<WrappedAuditKey> {
    owner::as_extension_owner(|| {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT key_id, version, kek_ref, wrapped_key, key_check FROM dscsa.keyring
                  WHERE purpose = 'audit' AND key_name = $1 ORDER BY version",
                None,
                &[AUDIT_KEY_NAME.into()],
            )?;
            let mut out = Vec::new();
            for row in t {
                out.push(WrappedAuditKey::new(
                    row.get::<i32>(1)?.unwrap_or(0),
                    AUDIT_KEY_NAME,
                    row.get::<i32>(2)?.unwrap_or(0),
                    &row.get::<String>(3)?.unwrap_or_default(),
                    &row.get::<Vec<u8>>(4)?.unwrap_or_default(),
                    &row.get::<Vec<u8>>(5)?.unwrap_or_default(),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .or_raise()
    .unwrap_or_else(|e| raise(internal("reading the audit keys", e)))
}

/// The audit keys unwrapped through the KMS hook (as the extension owner's statements).
fn audit_keys() -> AuditKeys {
    let mut keys = AuditKeys::new();
    for k in wrapped_audit_keys() {
        let wrapped = dscsa_core::audit::chain::unhex(&k.wrapped_key).unwrap_or_default();
        let check = dscsa_core::audit::chain::unhex(&k.key_check).unwrap_or_default();
        let raw = keyring::unwrap_raw(
            AUDIT_KEY_NAME,
            k.key_id as u32,
            k.version,
            &k.kek_ref,
            &wrapped,
            &check,
        )
        .or_raise();
        keys.add(AuditKey::new(k.key_id, &raw));
    }
    keys
}

/// One chunk of the trail in (seq, ts) order after a position: keyset pagination over
/// the primary key, with plain read-only SELECTs (a cursor would be read-write to pgrx,
/// which assigns a transaction id: impossible on a standby, wasteful anywhere). Rows
/// sharing a sequence number (a forged insert) are all read.
const TRAIL_QUERY: &str =
    "SELECT seq, (extract(epoch FROM ts) * 1000000)::int8, origin, epoch, record_type,
        database, session_user_name, current_user_name, client_addr, application, backend_pid,
        (extract(epoch FROM backend_start) * 1000000)::int8, statement_id, query_id, statement,
        operation, key_id, key_name, key_version, field_kind, context, outcome, count, detail,
        mac_key_id, prev_mac, mac, ts
   FROM dscsa.audit_log
  WHERE ($1::int8 IS NULL OR seq >= $1) AND ($2::int8 IS NULL OR seq <= $2)
    AND ($3::int8 IS NULL OR (seq, ts) > ($3, $4::timestamptz))
  ORDER BY seq, ts
  LIMIT 10000";

/// Calls `f` for every record of the trail in sequence order (fetched in chunks, read
/// with the caller's rights: dscsa_auditor). Stops when `f` returns false.
fn for_each_record(from: Option<i64>, to: Option<i64>, mut f: impl FnMut(StoredRecord) -> bool) {
    let mut after: Option<(i64, pgrx::datum::TimestampWithTimeZone)> = None;
    loop {
        let more = Spi::connect(|client| {
            let (after_seq, after_ts) = (after.map(|a| a.0), after.map(|a| a.1));
            let chunk = client.select(
                TRAIL_QUERY,
                None,
                &[from.into(), to.into(), after_seq.into(), after_ts.into()],
            )?;
            if chunk.is_empty() {
                return Ok::<_, pgrx::spi::Error>(false);
            }
            for row in chunk {
                let mac = |i: usize| -> Result<[u8; 32], pgrx::spi::Error> {
                    Ok(row
                        .get::<Vec<u8>>(i)?
                        .unwrap_or_default()
                        .try_into()
                        .unwrap_or([0; 32]))
                };
                let stored = StoredRecord {
                    record: Record {
                        seq: row.get::<i64>(1)?.unwrap_or(0),
                        event: Event {
                            ts_micros: row.get::<i64>(2)?.unwrap_or(0),
                            origin: row.get::<String>(3)?.unwrap_or_default(),
                            epoch: row.get::<i64>(4)?.unwrap_or(0),
                            record_type: row.get::<String>(5)?.unwrap_or_default(),
                            database: row.get(6)?,
                            session_user: row.get(7)?,
                            current_user: row.get(8)?,
                            client_addr: row.get(9)?,
                            application: row.get(10)?,
                            backend_pid: row.get(11)?,
                            backend_start: row.get(12)?,
                            statement_id: row.get(13)?,
                            query_id: row.get(14)?,
                            statement: row.get(15)?,
                            operation: row.get::<String>(16)?.unwrap_or_default(),
                            key_id: row.get(17)?,
                            key_name: row.get(18)?,
                            key_version: row.get(19)?,
                            field_kind: row.get(20)?,
                            context: row.get(21)?,
                            outcome: row.get::<String>(22)?.unwrap_or_default(),
                            count: row.get::<i64>(23)?.unwrap_or(0),
                            detail: row.get(24)?,
                        },
                        mac_key_id: row.get::<i32>(25)?.unwrap_or(0),
                    },
                    prev_mac: mac(26)?,
                    mac: mac(27)?,
                };
                after = Some((
                    stored.record.seq,
                    row.get::<pgrx::datum::TimestampWithTimeZone>(28)?
                        .unwrap_or_else(|| {
                            raise(internal(
                                "reading dscsa.audit_log",
                                "a row without a timestamp",
                            ))
                        }),
                ));
                if !f(stored) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .unwrap_or_else(|e| raise(internal("reading dscsa.audit_log", e)));
        if !more {
            return;
        }
    }
}

/// `dscsa.audit_verify(server_log)`.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn audit_verify(
    server_log: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(verified, bool),
        name!(records, i64),
        name!(first_seq, Option<i64>),
        name!(last_seq, Option<i64>),
        name!(anchors_in_trail, i64),
        name!(logged_anchors_checked, i64),
        name!(intervals_checked, i64),
        name!(break_kind, Option<String>),
        name!(break_seq, Option<i64>),
        name!(message, String),
    ),
> {
    let keys = audit_keys();
    // This statement's snapshot was taken after it started: every anchor logged before
    // then was committed before then, and must be in the trail it reads.
    let started = session::statement_start_micros();
    let logged: Vec<LoggedAnchor> = server_log
        .map(|text| {
            text.lines()
                .filter_map(LoggedAnchor::parse_log_line)
                .filter(|a| a.precedes(started))
                .collect()
        })
        .unwrap_or_default();
    let mut v = Verifier::new(&keys, &logged);
    for_each_record(None, None, |r| {
        v.push(r);
        !v.broken()
    });
    let report = v.finish();
    let mut message = match &report.first_break {
        None => format!("the trail verifies: {} records", report.records),
        Some(b) => b.to_string(),
    };
    if report.anchors_logged_ignored > 0 {
        message.push_str(&format!(
            " ({} anchor-like lines in the log ignored: not written by the audit worker)",
            report.anchors_logged_ignored
        ));
    }
    TableIterator::once((
        report.first_break.is_none(),
        report.records as i64,
        report.first_seq,
        report.last_seq,
        report.anchors_in_trail as i64,
        report.anchors_logged_checked as i64,
        report.intervals_checked as i64,
        report.first_break.as_ref().map(|b| b.kind().to_string()),
        report.first_break.as_ref().map(|b| b.seq()),
        message,
    ))
}

/// The nearest anchor of this server at or before `from` and at or after `to`: a range
/// is exported with the anchors around it, so that its counts can be checked too.
fn widen_to_anchors(from: Option<i64>, to: Option<i64>) -> (Option<i64>, Option<i64>) {
    let nearest = |query: &str, seq: Option<i64>| -> Option<i64> {
        let seq = seq?;
        crate::readonly::one::<i64>(query, &[seq.into(), session::origin().into()])
            .unwrap_or_else(|e| raise(internal("reading dscsa.audit_log", e)))
            .or(Some(seq))
    };
    (
        nearest(
            "SELECT max(seq) FROM dscsa.audit_log WHERE record_type = 'anchor' AND origin = $2 AND seq <= $1",
            from,
        ),
        nearest(
            "SELECT min(seq) FROM dscsa.audit_log WHERE record_type = 'anchor' AND origin = $2 AND seq >= $1",
            to,
        ),
    )
}

/// `dscsa.audit_export(from_seq, to_seq)`: JSON Lines.
#[pg_extern(sql = false)]
fn audit_export(from_seq: Option<i64>, to_seq: Option<i64>) -> SetOfIterator<'static, String> {
    let (from_seq, to_seq) = widen_to_anchors(from_seq, to_seq);
    let header = export::Header {
        format: export::FORMAT.into(),
        database: session::database_name(),
        from_seq,
        to_seq,
        // The snapshot the records are read with is later than this (see audit_verify).
        exported_at_micros: session::statement_start_micros(),
        audit_keys: wrapped_audit_keys(),
    };
    let mut lines = vec![serde_json::to_string(&header).unwrap_or_default()];
    for_each_record(from_seq, to_seq, |r| {
        lines.push(serde_json::to_string(&r).unwrap_or_default());
        true
    });
    SetOfIterator::new(lines)
}
