//! The trail's single writer (on a primary): chains queued events with the audit key and
//! writes them to `dscsa.audit_log`, one transaction per batch, then frees their queue
//! slots and wakes the backends waiting for durability. Anchors go into the chain and to
//! the server log; tamper records are announced with NOTIFY and the alert command.

use std::collections::HashSet;

use dscsa_core::audit::chain::{AuditKey, AuditKeys, GENESIS, MAC_LEN};
use dscsa_core::audit::record::{Event, Record};
use dscsa_core::audit::verify::LoggedAnchor;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use super::alerts::Alerts;
use super::{
    anchor_event, audit_settings, config_changes, flush_interval, reload_if_asked, wait,
    worker_event,
};
use crate::{guc, keyring, rotation, shmem};

/// Name of the audit key in the keyring (purpose 'audit').
pub const AUDIT_KEY_NAME: &str = "dscsa_audit";

struct Writer {
    /// The INSERT of a batch, planned once (SPI_keepplan).
    insert: pgrx::spi::OwnedPreparedStatement,
    next_seq: i64,
    head: [u8; MAC_LEN],
    keys: AuditKeys,
    active_key: i32,
    since_anchor: u64,
    last_anchor_us: i64,
    months: HashSet<i64>,
    alerts: Alerts,
    idle_cycles: u64,
}

/// A row about to be written: the record, its link and MAC.
struct Row {
    record: Record,
    prev: [u8; MAC_LEN],
    mac: [u8; MAC_LEN],
}

pub fn run(database: &str) {
    // The worker is a superuser session: nothing in a schema some role can write may
    // stand in for what its statements call.
    // SAFETY: a session-level setting of this process, as SET would make it.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
    let mut writer: Option<Writer> = None;
    let mut settings = audit_settings();
    let mut last_complaint_us = 0;
    let mut pending_events: Vec<Event> = Vec::new();
    pending_events.push(worker_event(
        "worker",
        "start",
        "ok",
        serde_json::json!({ "database": database, "version": env!("CARGO_PKG_VERSION") }),
    ));
    loop {
        if reload_if_asked() {
            let now = audit_settings();
            pending_events.extend(config_changes(&settings, &now));
            settings = now;
        }
        shmem::heartbeat();
        if let (Some(w), Some(generation)) = (writer.as_mut(), rotation::stale()) {
            // The keyring may have changed (the audit key rotated): take its versions
            // again, keeping the chain's head and the anchor schedule.
            match BackgroundWorker::transaction(|| {
                let _ = crate::owner::keyring_oid();
                load_audit_keys(false)
            }) {
                Ok((keys, active)) => {
                    w.keys = keys;
                    w.active_key = active;
                    rotation::synced(generation);
                }
                Err(why) => {
                    pgrx::warning!("pg_dscsa audit worker cannot read the audit key: {why}");
                    writer = None;
                }
            }
        }
        if writer.is_none() {
            match BackgroundWorker::transaction(|| Writer::start(database)) {
                Ok(w) => {
                    writer = Some(w);
                    shmem::register_worker(true);
                }
                Err(why) => {
                    shmem::register_worker(false);
                    let now = crate::audit::now_micros();
                    if now - last_complaint_us > 60_000_000 {
                        pgrx::warning!("pg_dscsa audit worker cannot write the trail yet: {why}");
                        last_complaint_us = now;
                    }
                    if !wait(std::time::Duration::from_millis(500)) {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(w) = writer.as_mut() else { continue };
        let extra = std::mem::take(&mut pending_events);
        w.cycle(extra);
        w.alerts.reap();
        if !wait(flush_interval()) {
            // Stopping (server shutdown, or terminated): backends exiting at the same
            // time still queue their last records; write until the queue has stayed
            // empty for 300 ms (5 s at most), then exit (and be restarted).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut quiet = 0;
            let mut extra = std::mem::take(&mut pending_events);
            while quiet < 3 && std::time::Instant::now() < deadline {
                w.cycle(std::mem::take(&mut extra));
                if shmem::free_slots() == shmem::status().map_or(0, |s| s.slots) {
                    quiet += 1;
                } else {
                    quiet = 0;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            return;
        }
    }
}

impl Writer {
    /// Reads the trail's head and unwraps every audit key version (creating the audit key
    /// on first use), inside a transaction of the audit database.
    fn start(database: &str) -> Result<Writer, String> {
        let installed =
            crate::readonly::one::<bool>("SELECT to_regclass('dscsa.audit_log') IS NOT NULL", &[])
                .map_err(|e| e.to_string())?
                .unwrap_or(false);
        if !installed {
            return Err(format!(
                "pg_dscsa is not installed in database \"{database}\" (dscsa.audit_database)"
            ));
        }
        let head = Spi::connect(|c| {
            let t = c.select(
                "SELECT seq, mac FROM dscsa.audit_log ORDER BY seq DESC LIMIT 1",
                None,
                &[],
            )?;
            let mut out = None;
            for row in t {
                out = Some((
                    row.get::<i64>(1)?.unwrap_or(0),
                    row.get::<Vec<u8>>(2)?.unwrap_or_default(),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .map_err(|e| e.to_string())?;
        let (last_seq, head) = match head {
            Some((seq, mac)) => (
                seq,
                mac.try_into()
                    .map_err(|_| "the trail's last MAC is not 32 bytes")?,
            ),
            None => (0, GENESIS),
        };
        let (keys, active_key) = load_audit_keys(true)?;
        // Only invalidations of the keyring should make the keys be read again.
        let _ = crate::owner::keyring_oid();
        rotation::synced(rotation::stale().unwrap_or(0));
        // Where the anchor schedule stands: records after this origin's last anchor are
        // still to be anchored (an anchor is due at once if the interval has passed).
        let last_anchor = crate::readonly::one::<pgrx::JsonB>(
            "SELECT jsonb_build_array(seq, (extract(epoch FROM ts) * 1000000)::int8) FROM dscsa.audit_log
              WHERE record_type = 'anchor' AND origin = $1 ORDER BY seq DESC LIMIT 1",
            &[crate::audit::origin().into()],
        )
        .map_err(|e| e.to_string())?
        .and_then(|j| Some((j.0.get(0)?.as_i64()?, j.0.get(1)?.as_i64()?)));
        let (since_anchor, last_anchor_us) = match last_anchor {
            Some((seq, ts)) => ((last_seq - seq).max(0) as u64, ts),
            None => (last_seq.max(0) as u64, 0),
        };
        Ok(Writer {
            insert: prepare_insert()?,
            next_seq: last_seq + 1,
            head,
            keys,
            active_key,
            since_anchor,
            last_anchor_us,
            months: HashSet::new(),
            alerts: Alerts::default(),
            idle_cycles: 0,
        })
    }

    /// One batch: every queued event (and `extra`), chained and written in one
    /// transaction; an anchor after them when one is due.
    fn cycle(&mut self, extra: Vec<Event>) {
        let Some(batch) = shmem::peek_pending() else {
            return;
        };
        let anchor_due = self.anchor_due(batch.events.len() + extra.len());
        if batch.events.is_empty() && extra.is_empty() && !anchor_due {
            // Idle: look for records forwarded by standbys about once a second.
            self.idle_cycles += 1;
            if !self.idle_cycles.is_multiple_of(5) || !BackgroundWorker::transaction(has_inbox) {
                return;
            }
        }
        self.idle_cycles = 0;
        let end_ticket = batch.end_ticket;
        let mut this = std::panic::AssertUnwindSafe(&mut *self);
        let (written, anchor, tampers) =
            BackgroundWorker::transaction(move || this.write(batch, extra, anchor_due));
        shmem::mark_durable(end_ticket, written, anchor.as_ref().map(|a| a.seq));
        if let Some(a) = anchor {
            // After the commit: an anchor in the log is always in the table, unless
            // removed; tagged with the key that made it, so that look-alike text in the
            // log is not taken for it.
            if let Some(key) = self.keys.get(a.key_id) {
                pgrx::log!(
                    "{}",
                    LoggedAnchor::log_line(
                        key,
                        a.seq,
                        &a.mac,
                        a.epoch,
                        &a.origin,
                        crate::audit::now_micros()
                    )
                );
            }
        }
        self.alerts.on_tampers(&tampers);
    }

    fn anchor_due(&self, pending: usize) -> bool {
        let records = guc::AUDIT_ANCHOR_RECORDS.get().max(1) as u64;
        let interval_us = i64::from(guc::AUDIT_ANCHOR_INTERVAL_S.get().max(1)) * 1_000_000;
        let unanchored = self.since_anchor + pending as u64;
        unanchored >= records
            || (unanchored > 0 && crate::audit::now_micros() - self.last_anchor_us >= interval_us)
    }

    /// Inside a transaction: chains and inserts. Returns how many records were written,
    /// the anchor (if one was), and the tamper records (for alerts after commit).
    fn write(
        &mut self,
        batch: shmem::Batch,
        extra: Vec<Event>,
        anchor_due: bool,
    ) -> (u64, Option<AnchorWritten>, Vec<(i64, Event)>) {
        let local_origin = crate::audit::origin();
        let mut events: Vec<Event> = Vec::with_capacity(batch.events.len() + extra.len() + 1);
        for queued in &batch.events {
            events.push(crate::audit::decode_queued(queued).unwrap_or_else(|| {
                worker_event(
                    "worker",
                    "unreadable_event",
                    "error",
                    serde_json::json!({ "bytes": queued.json.len() }),
                )
            }));
        }
        events.extend(extra);
        // Forwarded by standbys (their own origin, epoch and anchors).
        let inbox = read_inbox(&local_origin, &mut events);
        let mut anchor = None;
        if anchor_due {
            let e = anchor_event(&batch);
            events.push(e);
        }
        let mut rows = Vec::with_capacity(events.len());
        let mut tampers = Vec::new();
        for event in events {
            let record = Record {
                seq: self.next_seq,
                event,
                mac_key_id: self.active_key,
            };
            let key = self
                .keys
                .get(self.active_key)
                .expect("the active audit key is loaded");
            let mac = key.mac(&record, &self.head);
            if record.event.record_type == "tamper" {
                tampers.push((record.seq, record.event.clone()));
            }
            if record.event.record_type == "anchor" && record.event.origin == local_origin {
                anchor = Some(AnchorWritten {
                    seq: record.seq,
                    key_id: record.mac_key_id,
                    mac,
                    epoch: record.event.epoch,
                    origin: record.event.origin.clone(),
                });
            }
            rows.push(Row {
                record,
                prev: self.head,
                mac,
            });
            self.head = mac;
            self.next_seq += 1;
        }
        self.ensure_partitions(&rows);
        insert(&self.insert, &rows);
        for (seq, e) in &tampers {
            // Where it was found (verify_column knows the table and column), but not the
            // primary key: listeners need not be auditors, and keys can be identifiers.
            let location: serde_json::Value = e
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(serde_json::Value::Null);
            let payload = serde_json::json!({
                "seq": seq, "database": e.database, "origin": e.origin, "operation": e.operation,
                "key_id": e.key_id, "key_version": e.key_version, "field_kind": e.field_kind,
                "context": e.context, "table": location.get("table"), "column": location.get("column"),
            });
            let _ = Spi::run_with_args(
                "SELECT pg_notify('dscsa_tamper', $1)",
                &[payload.to_string().into()],
            );
        }
        if !inbox.is_empty() {
            let _ = Spi::run_with_args(
                "DELETE FROM dscsa.audit_inbox WHERE id = ANY ($1)",
                &[inbox.into()],
            );
        }
        let written = rows.len() as u64;
        if anchor.is_some() {
            self.since_anchor = 0;
            self.last_anchor_us = crate::audit::now_micros();
        } else {
            self.since_anchor += written;
        }
        (written, anchor, tampers)
    }

    fn ensure_partitions(&mut self, rows: &[Row]) {
        for r in rows {
            if self
                .months
                .insert(dscsa_core::audit::utc_month(r.record.event.ts_micros))
            {
                let _ = Spi::run_with_args(
                    "SELECT dscsa._audit_partition(to_timestamp($1::double precision / 1000000))",
                    &[r.record.event.ts_micros.into()],
                );
            }
        }
    }
}

fn has_inbox() -> bool {
    crate::readonly::one::<bool>("SELECT EXISTS (SELECT 1 FROM dscsa.audit_inbox)", &[])
        .ok()
        .flatten()
        .unwrap_or(false)
}

struct AnchorWritten {
    seq: i64,
    key_id: i32,
    mac: [u8; MAC_LEN],
    epoch: i64,
    origin: String,
}

/// Events forwarded by standbys; returns the inbox rows taken. Events that claim to come
/// from this server are not taken as they are: a forwarder cannot speak for the primary.
fn read_inbox(local_origin: &str, events: &mut Vec<Event>) -> Vec<i64> {
    let rows = Spi::connect_mut(|c| {
        let t = c.update(
            "SELECT id, events, forwarded_by::text FROM dscsa.audit_inbox ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED",
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for row in t {
            out.push((
                row.get::<i64>(1)?.unwrap_or(0),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<String>(3)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_default();
    let mut ids = Vec::with_capacity(rows.len());
    for (id, text, forwarded_by) in rows {
        ids.push(id);
        match serde_json::from_str::<Vec<Event>>(&text) {
            Ok(forwarded) => {
                // Which role delivered them, in the chain itself: a forwarder can only
                // speak for standbys, and what it delivered stays attributable to it.
                events.push(worker_event(
                    "worker",
                    "ingest",
                    "ok",
                    serde_json::json!({
                        "inbox_id": id,
                        "forwarded_by": forwarded_by,
                        "records": forwarded.len(),
                    }),
                ));
                for e in forwarded {
                    if e.origin == local_origin {
                        events.push(worker_event(
                            "worker",
                            "forwarded_event_refused",
                            "error",
                            serde_json::json!({ "inbox_id": id, "claimed_origin": e.origin }),
                        ));
                    } else {
                        events.push(e);
                    }
                }
            }
            Err(_) => events.push(worker_event(
                "worker",
                "forwarded_batch_unreadable",
                "error",
                serde_json::json!({ "inbox_id": id }),
            )),
        }
    }
    ids
}

const INSERT_SQL: &str = "INSERT INTO dscsa.audit_log
     SELECT a1, to_timestamp(0) + a2 * interval '1 microsecond', a3, a4, a5, a6, a7, a8, a9, a10,
            a11, to_timestamp(0) + a12 * interval '1 microsecond', a13, a14, a15, a16, a17, a18,
            a19, a20, a21, a22, a23, a24, a25, a26, a27
       FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                   $19, $20, $21, $22, $23, $24, $25, $26, $27)
            AS u(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19,
                 a20, a21, a22, a23, a24, a25, a26, a27)";

/// Plans the batch INSERT once for the worker's life (a plan per cycle cost more than
/// the rows it wrote when `sync` statements come one at a time).
fn prepare_insert() -> Result<pgrx::spi::OwnedPreparedStatement, String> {
    use pgrx::pg_sys::BuiltinOid::{BYTEAARRAYOID, INT4ARRAYOID, INT8ARRAYOID, TEXTARRAYOID};
    use pgrx::pg_sys::PgOid::BuiltIn;
    let (i8, i4, t, b) = (
        BuiltIn(INT8ARRAYOID),
        BuiltIn(INT4ARRAYOID),
        BuiltIn(TEXTARRAYOID),
        BuiltIn(BYTEAARRAYOID),
    );
    let types = [
        i8, i8, t, i8, t, t, t, t, t, t, i4, i8, i8, i8, t, t, i4, t, i4, t, t, t, i8, t, i4, b, b,
    ];
    Spi::connect_mut(|c| c.prepare_mut(INSERT_SQL, &types).map(|p| p.keep()))
        .map_err(|e| e.to_string())
}

/// One INSERT for the whole batch (arrays unnested), so that a busy system's thousands of
/// statement records a second cost one statement, not thousands.
fn insert(plan: &pgrx::spi::OwnedPreparedStatement, rows: &[Row]) {
    macro_rules! col {
        ($f:expr) => {
            rows.iter().map($f).collect::<Vec<_>>()
        };
    }
    let seq = col!(|r: &Row| r.record.seq);
    let ts = col!(|r: &Row| r.record.event.ts_micros);
    let origin = col!(|r: &Row| r.record.event.origin.clone());
    let epoch = col!(|r: &Row| r.record.event.epoch);
    let record_type = col!(|r: &Row| r.record.event.record_type.clone());
    let database = col!(|r: &Row| r.record.event.database.clone());
    let session_user = col!(|r: &Row| r.record.event.session_user.clone());
    let current_user = col!(|r: &Row| r.record.event.current_user.clone());
    let client_addr = col!(|r: &Row| r.record.event.client_addr.clone());
    let application = col!(|r: &Row| r.record.event.application.clone());
    let backend_pid = col!(|r: &Row| r.record.event.backend_pid);
    let backend_start = col!(|r: &Row| r.record.event.backend_start);
    let statement_id = col!(|r: &Row| r.record.event.statement_id);
    let query_id = col!(|r: &Row| r.record.event.query_id);
    let statement = col!(|r: &Row| r.record.event.statement.clone());
    let operation = col!(|r: &Row| r.record.event.operation.clone());
    let key_id = col!(|r: &Row| r.record.event.key_id);
    let key_name = col!(|r: &Row| r.record.event.key_name.clone());
    let key_version = col!(|r: &Row| r.record.event.key_version);
    let field_kind = col!(|r: &Row| r.record.event.field_kind.clone());
    let context = col!(|r: &Row| r.record.event.context.clone());
    let outcome = col!(|r: &Row| r.record.event.outcome.clone());
    let count = col!(|r: &Row| r.record.event.count);
    let detail = col!(|r: &Row| r.record.event.detail.clone());
    let mac_key_id = col!(|r: &Row| r.record.mac_key_id);
    let prev = col!(|r: &Row| r.prev.to_vec());
    let mac = col!(|r: &Row| r.mac.to_vec());
    let args: Vec<DatumWithOid> = vec![
        seq.into(),
        ts.into(),
        origin.into(),
        epoch.into(),
        record_type.into(),
        database.into(),
        session_user.into(),
        current_user.into(),
        client_addr.into(),
        application.into(),
        backend_pid.into(),
        backend_start.into(),
        statement_id.into(),
        query_id.into(),
        statement.into(),
        operation.into(),
        key_id.into(),
        key_name.into(),
        key_version.into(),
        field_kind.into(),
        context.into(),
        outcome.into(),
        count.into(),
        detail.into(),
        mac_key_id.into(),
        prev.into(),
        mac.into(),
    ];
    Spi::connect_mut(|c| c.update(plan, None, &args).map(|_| ()))
        .expect("insert into dscsa.audit_log");
}

/// Every version of the audit key, unwrapped through the KMS hook, and the active one.
/// With `create`, makes the audit key if there is none yet.
pub fn load_audit_keys(create: bool) -> Result<(AuditKeys, i32), String> {
    let read = || {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT key_id, version, status = 'active', kek_ref, wrapped_key, key_check
                   FROM dscsa.keyring WHERE purpose = 'audit' AND key_name = $1 ORDER BY version",
                None,
                &[AUDIT_KEY_NAME.into()],
            )?;
            let mut out = Vec::new();
            for row in t {
                out.push((
                    row.get::<i32>(1)?.unwrap_or(0),
                    row.get::<i32>(2)?.unwrap_or(0),
                    row.get::<bool>(3)?.unwrap_or(false),
                    row.get::<String>(4)?.unwrap_or_default(),
                    row.get::<Vec<u8>>(5)?.unwrap_or_default(),
                    row.get::<Vec<u8>>(6)?.unwrap_or_default(),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .map_err(|e| e.to_string())
    };
    let mut rows = read()?;
    if rows.is_empty() && create {
        Spi::run("SELECT dscsa._create_audit_key()").map_err(|e| e.to_string())?;
        rows = read()?;
    }
    let mut keys = AuditKeys::new();
    let mut active = None;
    for (key_id, version, is_active, kek_ref, wrapped, check) in rows {
        let raw = keyring::unwrap_raw(
            AUDIT_KEY_NAME,
            key_id as u32,
            version,
            &kek_ref,
            &wrapped,
            &check,
        )
        .map_err(|e| format!("unwrapping audit key version {version}: {e}"))?;
        keys.add(AuditKey::new(key_id, &raw));
        if is_active {
            active = Some(key_id);
        }
    }
    let active = active.ok_or("the audit key has no active version")?;
    Ok((keys, active))
}
