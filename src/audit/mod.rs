//! The audit trail, backend side (docs/AUDIT.md).
//!
//! Every cryptographic operation is counted in this backend, per top-level statement ×
//! operation × key version × field kind × context × current role, and handed to the
//! shared-memory queue (src/shmem.rs) when the statement ends, fails, or the backend
//! exits; the background worker (src/worker.rs) is the single writer of the chained
//! trail. The user's transaction plays no part: a value decrypted in a transaction that
//! rolls back was still disclosed, and its record is written all the same.
//!
//! - Before the first plaintext of a statement leaves, the statement is admitted: the
//!   trail must be able to take its records (preloaded, worker alive, room in the queue),
//!   or decryption refuses with SQLSTATE SA001, unless a superuser set `dscsa.audit = off`.
//!   With `dscsa.audit_durability = sync` an `opened` record is committed to the trail
//!   first; with `async` one is queued only if the statement is still disclosing after
//!   `dscsa.audit_flush_interval` (timer.rs). A backend killed mid-statement thus leaves
//!   an opened record without its `access` records.
//! - Consecutive statements of a backend that did exactly the same operations (same
//!   query, keys, columns, users, outcome) are merged into one set of records while the
//!   worker has not taken them yet: a VRS responder's thousands of identical lookups a
//!   second cost a few records per flush interval, with exact counts and the number of
//!   statements (docs/AUDIT.md, "What is recorded").
//! - Tamper detections are queued at once, one record each.
//! - Key lifecycle events made in SQL are queued when their transaction commits (outcome
//!   `committed`) or aborts (`rolled_back`), so the trail says what really happened.

mod events;
mod session;
mod sql;
mod timer;

use std::cell::RefCell;

use dscsa_core::audit::record::{Counter, Event};
use dscsa_core::envelope::FieldKind;
use dscsa_core::{Error, Result};
use pgrx::pg_sys;

use crate::{guc, owner, shmem};

pub use events::{key_event_now, tamper};
pub use session::{now_micros, origin, statement_start_micros};

/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
pub const POSTGRES_EPOCH_UNIX_US: i64 = 946_684_800_000_000;

/// What was done with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Encrypt,
    Decrypt,
    TryDecrypt,
    Authenticate,
    BlindIndex,
    Import,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::TryDecrypt => "try_decrypt",
            Op::Authenticate => "authenticate",
            Op::BlindIndex => "blind_index",
            Op::Import => "import",
        }
    }
}

struct Entry {
    op: Op,
    key_id: u32,
    kind: FieldKind,
    role: u32,
    context: Vec<u8>,
    count: i64,
}

impl Entry {
    #[inline]
    fn matches(&self, op: Op, key_id: u32, kind: FieldKind, role: u32, context: &[u8]) -> bool {
        // Contexts are short: compared in line (a call to memcmp per decryption cost more
        // than the rest of the bookkeeping).
        self.key_id == key_id
            && self.op == op
            && self.kind == kind
            && self.role == role
            && self.context.len() == context.len()
            && self.context.iter().zip(context).all(|(a, b)| a == b)
    }
}

struct State {
    entries: Vec<Entry>,
    /// Index of the entry the last operation went to (the usual case: the same again).
    last: usize,
    /// This backend's statement counter; `current` is Some while a statement has
    /// audited operations not yet queued.
    statement_seq: i64,
    current: Option<i64>,
    /// The current statement was admitted (the trail can take its records).
    admitted: bool,
    /// Its opened record is queued (at once and durable in sync mode; late in async).
    opened_queued: bool,
    /// This backend's last access records, while the worker may not have taken them.
    last_group: Option<Group>,
    /// SQLSTATE of the last error reported in this backend (emit_log_hook).
    last_error: Option<String>,
    /// Key lifecycle events waiting for their transaction's end.
    pending_key_events: Vec<Event>,
}

/// Access records of one statement (or of several identical ones, merged) in the queue,
/// and what a next statement must match to be merged into them.
struct Group {
    first_ticket: u64,
    signature: Signature,
}

/// What identical statements share: the query, the session user, the application, and
/// the same operations on the same keys, columns and current users, in the same order.
struct Signature {
    query_id: i64,
    session_user: u32,
    application: Vec<u8>,
    entries: Vec<(Op, u32, FieldKind, u32, Vec<u8>)>,
}

/// This backend's audit state. A backend is one thread, and this code never runs on
/// another, so a plain static is enough; a `thread_local!` in a shared library costs a
/// `__tls_get_addr` call on each access, on the path of every decryption.
struct Backend(RefCell<State>);

// SAFETY: PostgreSQL backends are single-threaded and pg_dscsa starts no threads that
// touch this state (the alert commands are separate processes).
unsafe impl Sync for Backend {}

impl Backend {
    #[inline]
    fn with<R>(&self, f: impl FnOnce(&RefCell<State>) -> R) -> R {
        f(&self.0)
    }
}

static STATE: Backend = Backend(RefCell::new(State {
    entries: Vec::new(),
    last: 0,
    statement_seq: 0,
    current: None,
    admitted: false,
    opened_queued: false,
    last_group: None,
    last_error: None,
    pending_key_events: Vec::new(),
}));

fn enabled() -> bool {
    guc::AUDIT.get()
}

impl State {
    fn statement_id(&mut self) -> i64 {
        *self.current.get_or_insert_with(|| {
            self.statement_seq += 1;
            self.statement_seq
        })
    }

    #[inline]
    fn add(&mut self, op: Op, key_id: u32, kind: FieldKind, role: u32, context: &[u8], n: i64) {
        if let Some(e) = self.entries.get_mut(self.last) {
            if e.matches(op, key_id, kind, role, context) {
                e.count += n;
                return;
            }
        }
        self.add_slow(op, key_id, kind, role, context, n);
    }

    #[cold]
    fn add_slow(
        &mut self,
        op: Op,
        key_id: u32,
        kind: FieldKind,
        role: u32,
        context: &[u8],
        n: i64,
    ) {
        self.statement_id();
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.matches(op, key_id, kind, role, context))
        {
            self.entries[i].count += n;
            self.last = i;
            return;
        }
        self.entries.push(Entry {
            op,
            key_id,
            kind,
            role,
            context: context.to_vec(),
            count: n,
        });
        self.last = self.entries.len() - 1;
    }
}

/// Counts one operation that reveals nothing (encryption, blind index, an internal
/// decryption to compute a blind index).
#[inline]
pub fn note(op: Op, key_id: u32, kind: FieldKind, context: &[u8]) {
    if !enabled() {
        return;
    }
    let role = owner::current_user().to_u32();
    STATE.with(|s| s.borrow_mut().add(op, key_id, kind, role, context, 1));
}

/// Counts one operation that hands a plaintext (or a verdict about it) to the caller.
/// The statement's first one admits it (or refuses if the trail cannot take its
/// records): call this before the value leaves.
#[inline]
pub fn note_disclosure(op: Op, key_id: u32, kind: FieldKind, context: &[u8]) -> Result<()> {
    if !enabled() {
        return Ok(());
    }
    let role = owner::current_user().to_u32();
    // The usual case, one borrow: admitted, and no late opened record due.
    let admitted = STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.admitted && (s.opened_queued || !timer::fired()) {
            s.add(op, key_id, kind, role, context, 1);
            None
        } else {
            Some(s.admitted)
        }
    });
    match admitted {
        None => return Ok(()),
        Some(false) => admit_statement(op)?,
        Some(true) => queue_late_opened(op),
    }
    STATE.with(|s| s.borrow_mut().add(op, key_id, kind, role, context, 1));
    Ok(())
}

fn unavailable(why: &str) -> Error {
    Error::AuditUnavailable(why.to_string())
}

/// `shmem::admit`, waiting up to `dscsa.audit_sync_timeout` while the worker is not
/// ready (a server that just started, a worker being restarted) or the queue is full (a
/// burst: the statement waits for the worker to drain it, which paces the writers to
/// the trail's speed) instead of refusing at once; a missing preload refuses at once.
fn admit_waiting() -> Result<()> {
    let mut waited_ms = 0;
    loop {
        match shmem::admit() {
            Err(r @ (shmem::Refusal::WorkerDown | shmem::Refusal::Full))
                if waited_ms < guc::AUDIT_SYNC_TIMEOUT_MS.get() =>
            {
                if r == shmem::Refusal::Full {
                    shmem::nudge_worker();
                }
                pgrx::check_for_interrupts!();
                // SAFETY: sleeps this backend only.
                unsafe { pg_sys::pg_usleep(2_000) };
                waited_ms += 2;
            }
            other => return other.map_err(refusal),
        }
    }
}

fn refusal(r: shmem::Refusal) -> Error {
    unavailable(match r {
        shmem::Refusal::NotPreloaded => {
            "pg_dscsa is not in shared_preload_libraries, so decryptions cannot be recorded"
        }
        shmem::Refusal::WorkerDown => "the pg_dscsa audit worker is not running",
        shmem::Refusal::Full => "the audit queue is full",
    })
}

fn opened_event(op: Op, statement_id: i64) -> Event {
    let mut event = session::event("opened", op.name(), "opened");
    event.statement_id = Some(statement_id);
    event
}

/// Admits the current statement: checks that the trail can take its records; in sync
/// mode also commits its opened record, in async mode starts the timer.
fn admit_statement(op: Op) -> Result<()> {
    let statement_id = STATE.with(|s| s.borrow_mut().statement_id());
    if guc::AUDIT_DURABILITY.get() == guc::Durability::Sync {
        admit_waiting()?;
        // (The backend's last group of access records stays open for merging: a merged
        // record names the range of statements it covers, which closes this opened
        // record too; see dscsa.audit_unclosed_statements.)
        let ticket =
            enqueue(&[opened_event(op, statement_id)], true, true).map_err(|e| match e {
                shmem::QueueError::Full => refusal(shmem::Refusal::Full),
                shmem::QueueError::NotPreloaded => refusal(shmem::Refusal::NotPreloaded),
            })?;
        if !shmem::wait_durable(ticket, i64::from(guc::AUDIT_SYNC_TIMEOUT_MS.get())) {
            return Err(unavailable(
                "the audit worker did not commit the statement's record within dscsa.audit_sync_timeout",
            ));
        }
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.admitted = true;
            s.opened_queued = true;
        });
    } else {
        admit_waiting()?;
        timer::arm(guc::AUDIT_FLUSH_INTERVAL_MS.get());
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.admitted = true;
            s.opened_queued = false;
        });
    }
    Ok(())
}

/// Async mode, a statement still disclosing after the flush interval: its opened record
/// now. Values have been shown already, so this never refuses.
fn queue_late_opened(op: Op) {
    let statement_id = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.opened_queued = true;
        s.statement_id()
    });
    events::enqueue_or_log(&[opened_event(op, statement_id)], true);
}

/// The next access records start a group of their own (something else was queued in
/// between: merging across it would misstate the order).
fn forget_group() {
    STATE.with(|s| s.borrow_mut().last_group = None);
}

/// Calls `f` with what `events` add to this database's completeness counters.
fn with_deltas<T>(events: &[Event], f: impl FnOnce(&[shmem::CounterDelta<'_>]) -> T) -> T {
    session::with_database(|dboid, database| {
        let deltas: Vec<shmem::CounterDelta<'_>> = events
            .iter()
            .filter_map(|e| {
                Counter::of(&e.record_type, &e.operation).map(|c| shmem::CounterDelta {
                    dboid,
                    database,
                    counter: c,
                    count: e.count,
                })
            })
            .collect();
        f(&deltas)
    })
}

/// The events as queued: stamped with the shared-memory epoch, serialized.
fn serialized(events: &[Event]) -> Vec<Vec<u8>> {
    let epoch = shmem::epoch().unwrap_or(0);
    events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.epoch = epoch;
            events::serialize(&e)
        })
        .collect()
}

/// Serializes events and queues them with their counter deltas.
fn enqueue(
    events: &[Event],
    opening: bool,
    wake: bool,
) -> std::result::Result<u64, shmem::QueueError> {
    let bytes = serialized(events);
    with_deltas(events, |deltas| {
        shmem::enqueue(&bytes, deltas, opening, wake)
    })
}

/// Events that could not be queued still count: the verifier then reports the gap.
fn count_lost(events: &[Event]) {
    with_deltas(events, shmem::count_unqueued);
}

/// How a statement's audited operations ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    /// A procedure committed a batch; the statement goes on.
    Committed,
    Failed,
    Terminated,
}

/// Queues the access records of the statement that just ended (top level), if any.
/// Never raises: at this point the values are out; if the queue is full the records wait
/// (briefly) for space, and are reported in the server log if they cannot be queued.
///
/// The usual ending, a statement that did what the backend's previous one did, is
/// merged in place without allocating: this runs once per statement of a VRS responder
/// or an ERP's lookups.
pub fn flush(ending: Ending) {
    timer::disarm();
    let taken = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let id = s.current.take();
        s.admitted = false;
        s.opened_queued = false;
        s.last = 0;
        let error = s.last_error.take();
        if id.is_none() || s.entries.is_empty() {
            s.entries.clear();
            return None;
        }
        id.map(|id| (id, error))
    });
    let Some((statement_id, error)) = taken else {
        return;
    };
    if !shmem::available() {
        STATE.with(|s| s.borrow_mut().entries.clear());
        return;
    }
    // Failed and interrupted statements keep records of their own, and so do statements
    // whose text is recorded.
    let mergeable = ending == Ending::Completed && !guc::AUDIT_STATEMENT_TEXT.get();
    if mergeable && merge_into_last_group(statement_id) {
        return;
    }
    // The entries leave the state here only (the merge above keeps their buffer).
    let entries = STATE.with(|s| std::mem::take(&mut s.borrow_mut().entries));
    let signature = mergeable.then(|| signature_of(&entries));
    let detail = match (ending, &error) {
        (Ending::Completed, _) => r#"{"statement":"completed"}"#.to_string(),
        (Ending::Committed, _) => r#"{"statement":"batch committed"}"#.to_string(),
        (Ending::Terminated, _) => r#"{"statement":"terminated"}"#.to_string(),
        (Ending::Failed, Some(code)) => dscsa_core::audit::record::canonical_json(
            &serde_json::json!({ "statement": "failed", "sqlstate": code }),
        ),
        (Ending::Failed, None) => r#"{"statement":"failed"}"#.to_string(),
    };
    let events: Vec<Event> = entries
        .into_iter()
        .map(|e| {
            let mut ev = session::event("access", e.op.name(), "ok");
            ev.statement_id = Some(statement_id);
            ev.current_user = Some(session::role_name(e.role));
            ev.count = e.count;
            ev.detail = Some(detail.clone());
            events::set_key(&mut ev, e.key_id, Some(e.kind), &e.context);
            ev
        })
        .collect();
    let first_ticket =
        events::enqueue_or_log(&events, false).map(|last| last + 1 - events.len() as u64);
    STATE.with(|s| {
        s.borrow_mut().last_group = match (first_ticket, signature) {
            (Some(first_ticket), Some(signature)) => Some(Group {
                first_ticket,
                signature,
            }),
            _ => None,
        }
    });
}

/// Calls `f` with the application_name of the session (empty when unset).
fn with_application<T>(f: impl FnOnce(&[u8]) -> T) -> T {
    // SAFETY: the application_name GUC is a NUL-terminated string or null, and is not
    // changed while `f` runs (nothing in it sets GUCs).
    unsafe {
        let application = pg_sys::application_name;
        if application.is_null() {
            f(b"")
        } else {
            f(std::ffi::CStr::from_ptr(application).to_bytes())
        }
    }
}

fn signature_of(entries: &[Entry]) -> Signature {
    Signature {
        query_id: crate::unguarded::query_id(),
        session_user: crate::unguarded::session_user().to_u32(),
        application: with_application(<[u8]>::to_vec),
        entries: entries
            .iter()
            .map(|e| (e.op, e.key_id, e.kind, e.role, e.context.clone()))
            .collect(),
    }
}

impl Signature {
    /// Whether the statement that just ended, with these entries, is one the group's
    /// records may count: compared in place, nothing allocated.
    fn matches(&self, entries: &[Entry]) -> bool {
        self.entries.len() == entries.len()
            && self.query_id == crate::unguarded::query_id()
            && self.session_user == crate::unguarded::session_user().to_u32()
            && self
                .entries
                .iter()
                .zip(entries)
                .all(|((op, key_id, kind, role, context), e)| {
                    e.matches(*op, *key_id, *kind, *role, context)
                })
            && with_application(|a| a == self.application.as_slice())
    }
}

/// Adds the ended statement's counts to the backend's last group of records if it did
/// the same and the worker has not taken them yet; its entries are then cleared (their
/// buffer kept for the next statement). Returns whether it did.
fn merge_into_last_group(statement_id: i64) -> bool {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let state = &mut *s;
        let Some(group) = &state.last_group else {
            return false;
        };
        let merged = group.signature.matches(&state.entries)
            && session::with_database(|dboid, database| {
                let entries = &state.entries;
                shmem::merge_into(
                    group.first_ticket,
                    entries.iter().map(|e| e.count),
                    statement_id,
                    session::now_micros(),
                    entries.iter().filter_map(|e| {
                        Counter::of("access", e.op.name()).map(|c| shmem::CounterDelta {
                            dboid,
                            database,
                            counter: c,
                            count: e.count,
                        })
                    }),
                )
            });
        if merged {
            state.entries.clear();
        } else {
            state.last_group = None;
        }
        merged
    })
}

/// A queued event as the worker writes it: its JSON, with what merged statements added.
pub fn decode_queued(q: &shmem::QueuedEvent) -> Option<Event> {
    let mut e: Event = serde_json::from_slice(&q.json).ok()?;
    if q.merged.statements > 0 {
        e.count += q.merged.extra_count;
        e.detail = Some(dscsa_core::audit::record::canonical_json(
            &serde_json::json!({
                "statement": "completed",
                "statements": q.merged.statements + 1,
                "last_statement_id": q.merged.last_statement_id,
                "last_at": q.merged.last_at_micros,
            }),
        ));
    }
    Some(e)
}

/// Remembers the SQLSTATE of an error this backend reports (for the failed statement's
/// record). Only the code: messages can quote values.
pub fn error_reported(sqlstate: String) {
    STATE.with(|s| s.borrow_mut().last_error = Some(sqlstate));
}

/// At transaction end: key lifecycle events of the transaction, with their outcome.
pub fn transaction_ended(committed: bool) {
    let pending = STATE.with(|s| std::mem::take(&mut s.borrow_mut().pending_key_events));
    if pending.is_empty() {
        return;
    }
    let events: Vec<Event> = pending
        .into_iter()
        .map(|mut e| {
            e.outcome = if committed {
                "committed"
            } else {
                "rolled_back"
            }
            .into();
            e
        })
        .collect();
    events::enqueue_or_log(&events, true);
}

/// Before a transaction commits: key lifecycle events must be recordable, or the change
/// is refused (fail closed).
pub fn check_before_commit() -> Result<()> {
    let pending = STATE.with(|s| s.borrow().pending_key_events.len());
    // SAFETY: reads a process global (the worker records its own key events later).
    let worker = unsafe { !pgrx::pg_sys::MyBgworkerEntry.is_null() };
    if pending == 0 || !enabled() || worker {
        return Ok(());
    }
    if !shmem::available() || !shmem::worker_alive() || shmem::free_slots() < pending as u64 {
        return Err(unavailable(
            "a key change cannot be recorded in the audit trail, so it is not committed",
        ));
    }
    Ok(())
}

fn push_pending_key_event(e: Event) {
    STATE.with(|s| s.borrow_mut().pending_key_events.push(e));
}

/// A session changed an audit setting (GUC check hook): recorded at once, whoever it
/// was, before the change applies. Only interactive changes (SET, set_config, a
/// function's SET clause) are recorded here; the worker records changes made in the
/// configuration files when it reloads them.
pub fn setting_changed(
    setting: &str,
    source: pg_sys::GucSource::Type,
    new_value: impl FnOnce() -> String,
) {
    // SAFETY: reads backend globals.
    let in_session = unsafe {
        pg_sys::IsUnderPostmaster
            && pg_sys::MyDatabaseId != pg_sys::InvalidOid
            && pg_sys::IsTransactionState()
    };
    if source != pg_sys::GucSource::PGC_S_SESSION || !in_session {
        return;
    }
    events::config_event(setting, new_value());
}

/// Called by the executor and utility hooks (src/hooks.rs) and the transaction
/// callbacks when a top-level statement ends.
pub fn statement_ended(failed: bool) {
    flush(if failed {
        Ending::Failed
    } else {
        Ending::Completed
    });
}

/// Transaction-scoped keys were unloaded at transaction end.
pub fn unloaded_at_transaction_end(keys: &[(String, i32)]) {
    let mut names: Vec<&str> = keys.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let versions: Vec<i32> = keys
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .collect();
        key_event_now(
            "unload_key",
            name,
            "ok",
            serde_json::json!({ "versions": versions, "reason": "transaction end", "scope": "transaction" }),
        );
    }
}

/// DROP EXTENSION pg_dscsa in the database holding the trail would drop the trail with
/// it: refused while it has records (export, then drop its partitions first).
pub fn refuse_drop_with_trail() {
    let has_records = crate::owner::as_extension_owner(|| {
        let exists =
            crate::readonly::one::<bool>("SELECT to_regclass('dscsa.audit_log') IS NOT NULL", &[]);
        if !matches!(exists, Ok(Some(true))) {
            return false;
        }
        matches!(
            crate::readonly::one::<bool>("SELECT EXISTS (SELECT 1 FROM dscsa.audit_log)", &[]),
            Ok(Some(true))
        )
    });
    if matches!(has_records, Ok(true)) {
        crate::error::raise(Error::InUse(
            "pg_dscsa cannot be dropped while dscsa.audit_log holds audit records".into(),
        ));
    }
}

/// Backend exit (FATAL, pg_terminate_backend, client gone): what is left is queued.
pub fn backend_exiting() {
    flush(Ending::Terminated);
    transaction_ended(false);
}
