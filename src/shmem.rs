//! pg_dscsa's one shared-memory segment, used by every feature that needs state shared by
//! the backends of the cluster and its background worker (src/worker.rs):
//!
//! - the audit queue: a ring of fixed-size slots where backends put audit events
//!   (serialized JSON) and from which the worker, the trail's single writer, takes them;
//!   a slot is freed only once its event is committed to the trail ("durable"), so a
//!   worker that dies mid-batch loses nothing;
//! - the completeness counters: per database, monotonic sums of the operations the
//!   enqueued events report, updated under the same lock as the queue, so that an anchor
//!   taken after draining the queue matches the trail exactly;
//! - the worker's registration (pid, latch, heartbeat) and the condition variable
//!   backends wait on for durability;
//! - the alert state (rate limiting) of the worker;
//! - the jobs of online backfills and their dynamic workers (src/backfill/), under a
//!   lock of their own.
//!
//! It exists only when pg_dscsa is in `shared_preload_libraries`: the size is requested
//! in `shmem_request_hook` and the segment initialized in `shmem_startup_hook` (both set
//! by hand, chaining the previous hooks). Everything is plain `repr(C)` data: no pointer
//! into process-local memory is ever stored here, except the worker's latch, which lives
//! in its PGPROC (shared memory too).

use std::ffi::CStr;

use dscsa_core::audit::record::{Counter, OTHER_DATABASES};
pub use dscsa_core::fixed_name::{fixed_name, fixed_name_str};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::guc;

const SEGMENT: &CStr = c"pg_dscsa";
/// Databases with counters of their own per epoch; the last entry is the overflow bucket
/// (`OTHER_DATABASES`) for any beyond.
pub const MAX_DATABASES: usize = 256;
/// Bytes of one queue slot: a header (the JSON's length, then what statements merged
/// into the event since it was queued added: `Merged`) and the event's JSON. Statement
/// texts are cut to fit (src/audit/events.rs).
pub const SLOT_BYTES: usize = 4096;
const SLOT_HEADER: usize = 8 + std::mem::size_of::<Merged>();
pub const SLOT_DATA: usize = SLOT_BYTES - SLOT_HEADER;

/// What later identical statements of the same backend added to a queued access event
/// (src/audit/mod.rs, merging): counted in place, without rewriting the JSON.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    pub extra_count: i64,
    /// Statements merged in (0: the event is as queued).
    pub statements: i64,
    pub last_statement_id: i64,
    pub last_at_micros: i64,
}

/// A queued event as the worker takes it.
pub struct QueuedEvent {
    pub json: Vec<u8>,
    pub merged: Merged,
}
/// The trail is taken to be down when no worker was ready for this long. Not zero: the
/// postmaster restarts a worker that exited a second later, and the queue keeps what
/// backends hand it meanwhile; a worker that cannot write (no database, no extension, no
/// KMS) never becomes ready, and refusals start once this has passed.
const WORKER_STALE_US: i64 = 10_000_000;
/// `PG_WAIT_EXTENSION`: what pg_stat_activity shows while a backend waits for the trail.
const WAIT_EVENT_EXTENSION: u32 = 0x0700_0000;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct DbCounters {
    pub dboid: u32,
    pub name: [u8; 64],
    pub values: [i64; Counter::ALL.len()],
}

impl DbCounters {
    pub fn name(&self) -> String {
        fixed_name_str(&self.name)
    }
}

#[repr(C)]
struct Header {
    lock: *mut pg_sys::LWLock,
    durable_cv: pg_sys::ConditionVariable,
    /// Microseconds at initialization: a new epoch at every server (re)start.
    epoch: i64,
    slots: u64,
    worker_pid: i32,
    worker_latch: *mut pg_sys::Latch,
    worker_heartbeat: i64,
    /// The worker has its audit key and knows the trail's head.
    worker_ready: bool,
    /// Last time a ready worker was seen (heartbeat while ready; kept when it exits).
    ready_heartbeat: i64,
    /// Tickets: event n went into slot n % slots. next = tickets handed out; read = the
    /// first event the worker has not committed yet (slots before it are free);
    /// durable = every ticket below it is committed to the trail.
    next_ticket: u64,
    read_ticket: u64,
    durable_ticket: u64,
    /// The worker has copied every event below this ticket: those can no longer be
    /// rewritten (merged) by their backend.
    peeked_ticket: u64,
    counters: [DbCounters; MAX_DATABASES],
    /// Audit records written by the worker since this epoch (for dscsa.audit_status()).
    written: u64,
    last_anchor_seq: i64,
}

/// The key-management part of the segment: the KMS circuit breaker, hook counters, and
/// the cluster's key cache (src/breaker.rs, src/keycache.rs), under a lock of its own.
/// The cache entries sit on pages of their own, locked in RAM and left out of core dumps.
#[repr(C)]
pub struct KmsShared {
    lock: *mut pg_sys::LWLock,
    /// One circuit breaker per hook command (databases may name different ones).
    pub breakers: [Breaker; MAX_BREAKERS],
    pub cache: CacheCounters,
    pub cache_capacity: u32,
    /// Whether the cache pages could be locked in RAM (mlock).
    pub cache_locked: bool,
    /// Unwraps running now, so that backends missing the same key wait for the one
    /// running the hook instead of each running it (src/keycache.rs).
    pub in_flight: [InFlight; MAX_IN_FLIGHT],
    entries: *mut CacheEntry,
}

pub const MAX_IN_FLIGHT: usize = 32;

/// One backend unwrapping one key through the hook (0 pid: free slot).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InFlight {
    pub pid: i32,
    pub dboid: u32,
    pub key_id: u32,
    pub check: [u8; 16],
    /// Waiters stop waiting after this (the hook's own timeout and a margin): a backend
    /// cancelled or killed mid-unwrap must not hold the others back.
    pub until_us: i64,
    /// After a failed unwrap (slot freed, pid 0): until when the backends that waited
    /// for it get its failure instead of each running the hook again, and its class
    /// (index in dscsa_core::kms::FailureClass::ALL).
    pub failed_until_us: i64,
    pub failure: u8,
}

pub const MAX_BREAKERS: usize = 8;

/// The circuit breaker and counters of one hook command (src/breaker.rs).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Breaker {
    /// Hash of the command (0: free slot).
    pub command_hash: u64,
    /// The program's name, for dscsa.kms_status.
    pub provider: [u8; 64],
    /// 0 closed, 1 open, 2 half-open (one probe running).
    pub state: u32,
    /// Consecutive failures that mean the KMS is down, within the window.
    pub failures: u32,
    pub window_start_us: i64,
    pub opened_at_us: i64,
    pub probe_pid: i32,
    pub probe_started_us: i64,
    pub hook_runs: u64,
    pub hook_failures: u64,
    /// Calls refused at once because the breaker was open.
    pub rejected: u64,
    pub last_used_us: i64,
    pub last_success_us: i64,
    pub last_failure_us: i64,
    pub last_latency_us: i64,
    /// Index into dscsa_core::kms::FailureClass::ALL, or u32::MAX.
    pub last_failure_class: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            command_hash: 0,
            provider: [0; 64],
            state: 0,
            failures: 0,
            window_start_us: 0,
            opened_at_us: 0,
            probe_pid: 0,
            probe_started_us: 0,
            hook_runs: 0,
            hook_failures: 0,
            rejected: 0,
            last_used_us: 0,
            last_success_us: 0,
            last_failure_us: 0,
            last_latency_us: 0,
            last_failure_class: u32::MAX,
        }
    }
}

impl Breaker {
    pub fn provider(&self) -> String {
        fixed_name_str(&self.provider)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct CacheCounters {
    pub hits: u64,
    pub misses: u64,
    /// Unwraps made because an entry was past its soft TTL.
    pub refreshes: u64,
}

/// One unwrapped key in the cluster's cache.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CacheEntry {
    pub used: bool,
    pub dboid: u32,
    pub key_id: u32,
    pub version: i32,
    pub check: [u8; 16],
    pub key: [u8; 32],
    pub name: [u8; 64],
    pub unwrapped_at_us: i64,
    pub last_used_us: i64,
    pub hits: u64,
}

impl CacheEntry {
    pub fn name(&self) -> String {
        fixed_name_str(&self.name)
    }
}

const KMS_SEGMENT: &CStr = c"pg_dscsa kms";
const PAGE: usize = 4096;

static mut KMS: *mut KmsShared = std::ptr::null_mut();

fn cache_capacity() -> usize {
    guc::KEY_CACHE_SIZE.get().max(0) as usize
}

fn round_page(n: usize) -> usize {
    n.div_ceil(PAGE) * PAGE
}

fn kms_size() -> usize {
    // One page of slack to align the start, the state, then the entries on their own pages.
    PAGE + round_page(std::mem::size_of::<KmsShared>())
        + round_page(cache_capacity() * std::mem::size_of::<CacheEntry>()).max(PAGE)
}

/// Runs `f` on the key-management state and the cache entries under their lock.
pub fn with_kms<T>(
    exclusive: bool,
    f: impl FnOnce(&mut KmsShared, &mut [CacheEntry]) -> T,
) -> Option<T> {
    // SAFETY: KMS points at the initialized state for the life of the process; the
    // LWLock serializes access, and is released by error recovery if `f` raises.
    unsafe {
        let k = KMS;
        if k.is_null() {
            return None;
        }
        let mode = if exclusive {
            pg_sys::LWLockMode::LW_EXCLUSIVE
        } else {
            pg_sys::LWLockMode::LW_SHARED
        };
        pg_sys::LWLockAcquire((*k).lock, mode);
        let entries = std::slice::from_raw_parts_mut((*k).entries, (*k).cache_capacity as usize);
        let result = f(&mut *k, entries);
        pg_sys::LWLockRelease((*k).lock);
        Some(result)
    }
}

static mut SHARED: *mut Header = std::ptr::null_mut();
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;

fn queue_slots() -> usize {
    guc::AUDIT_QUEUE_SIZE.get().max(64) as usize
}

fn segment_size() -> usize {
    std::mem::size_of::<Header>() + queue_slots() * SLOT_BYTES
}

/// Sets up the key-management state (in the postmaster, once): the breaker closed, the
/// cache empty on locked, undumpable pages.
///
/// # Safety
/// Called from shmem_startup with AddinShmemInitLock held.
unsafe fn init_kms(lock: *mut pg_sys::LWLock) {
    let mut found = false;
    let raw = pg_sys::ShmemInitStruct(KMS_SEGMENT.as_ptr(), kms_size(), &mut found).cast::<u8>();
    let base = raw.add(raw.align_offset(PAGE));
    let state = base.cast::<KmsShared>();
    if !found {
        std::ptr::write_bytes(raw, 0, kms_size());
        let entries = base.add(round_page(std::mem::size_of::<KmsShared>()));
        let entries_len =
            round_page(cache_capacity() * std::mem::size_of::<CacheEntry>()).max(PAGE);
        (*state).lock = lock;
        (*state).cache_capacity = cache_capacity() as u32;
        (*state).entries = entries.cast::<CacheEntry>();
        // Unwrapped keys live here: never swapped out, never in a core dump.
        (*state).cache_locked = dscsa_core::locked::protect_region(entries, entries_len);
    }
    KMS = state;
}

/// Called from `_PG_init` while shared_preload_libraries are processed: asks for the
/// segment. Outside preloading there is no segment, and `available()` says so.
pub fn init() {
    // SAFETY: _PG_init runs once in the postmaster, single-threaded, before forking.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    if let Some(prev) = PREV_REQUEST {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| prev());
    }
    pg_sys::RequestAddinShmemSpace(segment_size());
    pg_sys::RequestAddinShmemSpace(kms_size());
    pg_sys::RequestAddinShmemSpace(crate::backfill::shared_size());
    // Three locks: the audit queue's, the key management state's, the backfill jobs'.
    pg_sys::RequestNamedLWLockTranche(SEGMENT.as_ptr(), 3);
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    if let Some(prev) = PREV_STARTUP {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| prev());
    }
    let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
    pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
    let mut found = false;
    let header =
        pg_sys::ShmemInitStruct(SEGMENT.as_ptr(), segment_size(), &mut found).cast::<Header>();
    if !found {
        std::ptr::write_bytes(header.cast::<u8>(), 0, segment_size());
        (*header).lock = &raw mut (*pg_sys::GetNamedLWLockTranche(SEGMENT.as_ptr())).lock;
        pg_sys::ConditionVariableInit(&raw mut (*header).durable_cv);
        (*header).epoch = pg_sys::GetCurrentTimestamp() + crate::audit::POSTGRES_EPOCH_UNIX_US;
        (*header).slots = queue_slots() as u64;
    }
    SHARED = header;
    init_kms(&raw mut (*pg_sys::GetNamedLWLockTranche(SEGMENT.as_ptr()).add(1)).lock);
    crate::backfill::init_shared(
        &raw mut (*pg_sys::GetNamedLWLockTranche(SEGMENT.as_ptr()).add(2)).lock,
    );
    pg_sys::LWLockRelease(init_lock);
}

/// Whether the segment exists (pg_dscsa was preloaded).
pub fn available() -> bool {
    // SAFETY: set once at startup, inherited by every child process.
    unsafe { !SHARED.is_null() }
}

/// Runs `f` on the header under the segment's lock.
fn locked<T>(exclusive: bool, f: impl FnOnce(&mut Header) -> T) -> Option<T> {
    // SAFETY: SHARED points at the initialized segment for the life of the process; the
    // LWLock serializes every access to the fields `f` touches, and LWLocks are released
    // by PostgreSQL's error recovery if `f` raises.
    unsafe {
        let h = SHARED;
        if h.is_null() {
            return None;
        }
        let mode = if exclusive {
            pg_sys::LWLockMode::LW_EXCLUSIVE
        } else {
            pg_sys::LWLockMode::LW_SHARED
        };
        pg_sys::LWLockAcquire((*h).lock, mode);
        let result = f(&mut *h);
        pg_sys::LWLockRelease((*h).lock);
        Some(result)
    }
}

fn slot_ptr(h: &mut Header, ticket: u64) -> *mut u8 {
    let index = (ticket % h.slots) as usize;
    // SAFETY: the slots follow the header in the segment, `slots` of SLOT_BYTES each.
    unsafe {
        (h as *mut Header)
            .cast::<u8>()
            .add(std::mem::size_of::<Header>() + index * SLOT_BYTES)
    }
}

pub fn epoch() -> Option<i64> {
    locked(false, |h| h.epoch)
}

/// What an event adds to the completeness counters of a database.
pub struct CounterDelta<'a> {
    pub dboid: u32,
    pub database: &'a str,
    pub counter: Counter,
    pub count: i64,
}

/// Why an event could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    NotPreloaded,
    Full,
}

/// Slots an `opened` record must leave free: the records of statements already running
/// (queued when they end, and never refused then) always find room.
fn reserve(h: &Header) -> u64 {
    (h.slots / 8).max(256).min(h.slots / 2)
}

fn write_slot(h: &mut Header, ticket: u64, event: &[u8]) {
    let len = event.len().min(SLOT_DATA);
    let slot = slot_ptr(h, ticket);
    // SAFETY: the slot is SLOT_BYTES long and owned by `ticket` (not yet freed).
    unsafe {
        slot.cast::<u32>().write_unaligned(len as u32);
        slot.add(8)
            .cast::<Merged>()
            .write_unaligned(Merged::default());
        std::ptr::copy_nonoverlapping(event.as_ptr(), slot.add(SLOT_HEADER), len);
    }
}

fn read_slot(h: &mut Header, ticket: u64) -> QueuedEvent {
    let slot = slot_ptr(h, ticket);
    // SAFETY: slots between read and next hold complete events, written under the
    // exclusive lock the caller holds.
    unsafe {
        let len = (slot.cast::<u32>().read_unaligned() as usize).min(SLOT_DATA);
        QueuedEvent {
            json: std::slice::from_raw_parts(slot.add(SLOT_HEADER), len).to_vec(),
            merged: slot.add(8).cast::<Merged>().read_unaligned(),
        }
    }
}

fn wake_worker(latch: *mut pg_sys::Latch) {
    if !latch.is_null() {
        // SAFETY: the worker's latch is in its PGPROC, in shared memory; setting a latch
        // of a process that has exited is harmless.
        unsafe { pg_sys::SetLatch(latch) };
    }
}

/// Wakes the worker (a backend waits for room in a full queue).
pub fn nudge_worker() {
    let latch = locked(false, |h| h.worker_latch).unwrap_or(std::ptr::null_mut());
    wake_worker(latch);
}

/// Puts serialized events into the queue, all or none, and adds `deltas` to the
/// counters under the same lock. Returns the ticket of the last event.
/// `opening`: a statement's opened record, refused while fewer than the reserve are free.
/// `wake`: someone waits for these (or they are urgent); otherwise the worker takes them
/// at its next round (`dscsa.audit_flush_interval`), or when the queue is a quarter full.
pub fn enqueue(
    events: &[Vec<u8>],
    deltas: &[CounterDelta<'_>],
    opening: bool,
    wake: bool,
) -> Result<u64, QueueError> {
    let (ticket, latch) = locked(true, |h| {
        let pending = h.next_ticket - h.read_ticket;
        let keep_free = if opening { reserve(h) } else { 0 };
        if pending + events.len() as u64 + keep_free > h.slots {
            return Err(QueueError::Full);
        }
        for e in events {
            write_slot(h, h.next_ticket, e);
            h.next_ticket += 1;
        }
        for d in deltas {
            add_to_counters(h, d);
        }
        let busy = (h.next_ticket - h.read_ticket) * 4 >= h.slots;
        Ok((
            h.next_ticket - 1,
            if wake || busy {
                h.worker_latch
            } else {
                std::ptr::null_mut()
            },
        ))
    })
    .ok_or(QueueError::NotPreloaded)??;
    wake_worker(latch);
    Ok(ticket)
}

/// Adds a statement's counts to the `counts.len()` events from `first_ticket` on (its
/// backend's previous, identical statement's records) if the worker has not copied them
/// yet, and `deltas` to the counters. Returns whether it did.
pub fn merge_into<'a>(
    first_ticket: u64,
    counts: impl ExactSizeIterator<Item = i64>,
    statement_id: i64,
    at_micros: i64,
    deltas: impl Iterator<Item = CounterDelta<'a>>,
) -> bool {
    locked(true, |h| {
        let end = first_ticket + counts.len() as u64;
        if first_ticket < h.peeked_ticket || first_ticket < h.read_ticket || end > h.next_ticket {
            return false;
        }
        for (i, n) in counts.enumerate() {
            let slot = slot_ptr(h, first_ticket + i as u64);
            // SAFETY: the slot holds a queued event the worker has not copied; the
            // exclusive lock keeps everyone else out.
            unsafe {
                let p = slot.add(8).cast::<Merged>();
                let mut m = p.read_unaligned();
                m.extra_count += n;
                m.statements += 1;
                m.last_statement_id = statement_id;
                m.last_at_micros = at_micros;
                p.write_unaligned(m);
            }
        }
        for d in deltas {
            add_to_counters(h, &d);
        }
        true
    })
    .unwrap_or(false)
}

/// Why the trail cannot take a statement's records.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NotPreloaded,
    WorkerDown,
    Full,
}

/// Whether a statement may start disclosing: the worker is alive and the queue has room
/// beyond the reserve (one check under the lock; nothing is queued).
pub fn admit() -> Result<(), Refusal> {
    locked(false, |h| {
        let now = crate::unguarded::now();
        if h.ready_heartbeat == 0 || now - h.ready_heartbeat >= WORKER_STALE_US {
            return Err(Refusal::WorkerDown);
        }
        if (h.next_ticket - h.read_ticket) + 1 + reserve(h) > h.slots {
            return Err(Refusal::Full);
        }
        Ok(())
    })
    .unwrap_or(Err(Refusal::NotPreloaded))
}

fn add_to_counters(h: &mut Header, d: &CounterDelta<'_>) {
    let own = &h.counters[..MAX_DATABASES - 1];
    let (index, name) = match own
        .iter()
        .position(|c| c.dboid == d.dboid)
        .or_else(|| own.iter().position(|c| c.dboid == 0))
    {
        Some(i) => (i, d.database),
        None => (MAX_DATABASES - 1, OTHER_DATABASES),
    };
    let c = &mut h.counters[index];
    if c.dboid == 0 {
        c.dboid = if index == MAX_DATABASES - 1 {
            u32::MAX
        } else {
            d.dboid
        };
        c.name = fixed_name(name);
    }
    c.values[d.counter.index()] += d.count;
}

/// Counts operations whose records could not be queued (the queue stayed full): the
/// next anchor's totals then exceed what the trail holds, and the verifier reports it.
pub fn count_unqueued(deltas: &[CounterDelta<'_>]) {
    locked(true, |h| {
        for d in deltas {
            add_to_counters(h, d);
        }
    });
}

/// Whether a worker was ready recently (see WORKER_STALE_US).
pub fn worker_alive() -> bool {
    locked(false, |h| {
        // SAFETY: reads the clock only.
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        h.ready_heartbeat != 0 && now - h.ready_heartbeat < WORKER_STALE_US
    })
    .unwrap_or(false)
}

/// Free slots left in the queue.
pub fn free_slots() -> u64 {
    locked(false, |h| h.slots - (h.next_ticket - h.read_ticket)).unwrap_or(0)
}

/// Waits until the event with `ticket` is committed to the trail, or `timeout_ms` passes,
/// or the worker is gone. Returns whether it became durable.
pub fn wait_durable(ticket: u64, timeout_ms: i64) -> bool {
    // SAFETY: SHARED is initialized when this is called (enqueue succeeded); condition
    // variable calls follow the prepare/sleep/cancel protocol.
    unsafe {
        let h = SHARED;
        if h.is_null() {
            return false;
        }
        let deadline = pg_sys::GetCurrentTimestamp() + timeout_ms * 1000;
        pg_sys::ConditionVariablePrepareToSleep(&raw mut (*h).durable_cv);
        let durable = loop {
            // A cancel (statement_timeout, pg_cancel_backend) ends the wait with its error.
            pg_sys::check_for_interrupts!();
            if locked(false, |h| h.durable_ticket > ticket).unwrap_or(false) {
                break true;
            }
            let now = pg_sys::GetCurrentTimestamp();
            if now >= deadline || !worker_alive() {
                break false;
            }
            let slice = ((deadline - now) / 1000).clamp(1, 100);
            pg_sys::ConditionVariableTimedSleep(
                &raw mut (*h).durable_cv,
                slice,
                WAIT_EVENT_EXTENSION,
            );
        };
        pg_sys::ConditionVariableCancelSleep();
        durable
    }
}

// ---- The worker's side -------------------------------------------------------------

/// Registers the calling process as the worker (or, with `ready = false`, as starting).
pub fn register_worker(ready: bool) {
    locked(true, |h| {
        // SAFETY: MyProcPid/MyLatch are set for a background worker with shmem access.
        unsafe {
            h.worker_pid = pg_sys::MyProcPid;
            h.worker_latch = pg_sys::MyLatch;
            h.worker_heartbeat = pg_sys::GetCurrentTimestamp();
        }
        h.worker_ready = ready;
        if ready {
            h.ready_heartbeat = h.worker_heartbeat;
        }
    });
}

pub fn unregister_worker() {
    // SAFETY: reads MyProcPid.
    let me = unsafe { pg_sys::MyProcPid };
    locked(true, |h| {
        if h.worker_pid == me {
            h.worker_pid = 0;
            h.worker_latch = std::ptr::null_mut();
            h.worker_ready = false;
        }
    });
}

pub fn heartbeat() {
    locked(true, |h| {
        // SAFETY: reads the clock only.
        h.worker_heartbeat = unsafe { pg_sys::GetCurrentTimestamp() };
        if h.worker_ready {
            h.ready_heartbeat = h.worker_heartbeat;
        }
    });
}

/// What the worker takes from the queue: the events not yet committed, the ticket after
/// the last of them, and the counters as they stood when exactly these were enqueued.
pub struct Batch {
    pub events: Vec<QueuedEvent>,
    pub end_ticket: u64,
    pub epoch: i64,
    pub counters: Vec<DbCounters>,
}

/// Copies every pending event (without freeing the slots) and the counters, atomically;
/// from now on their backends cannot merge into them.
pub fn peek_pending() -> Option<Batch> {
    locked(true, |h| {
        h.peeked_ticket = h.next_ticket;
        let events = (h.read_ticket..h.next_ticket)
            .map(|t| read_slot(h, t))
            .collect();
        Batch {
            events,
            end_ticket: h.next_ticket,
            epoch: h.epoch,
            counters: h
                .counters
                .iter()
                .filter(|c| c.dboid != 0)
                .copied()
                .collect(),
        }
    })
}

/// After the worker committed every event below `end_ticket`: frees their slots and wakes
/// the backends waiting for durability.
pub fn mark_durable(end_ticket: u64, written: u64, last_anchor_seq: Option<i64>) {
    locked(true, |h| {
        h.read_ticket = h.read_ticket.max(end_ticket);
        h.durable_ticket = h.durable_ticket.max(end_ticket);
        h.written += written;
        if let Some(s) = last_anchor_seq {
            h.last_anchor_seq = s;
        }
    });
    // SAFETY: SHARED is initialized (locked() succeeded above).
    unsafe {
        if !SHARED.is_null() {
            pg_sys::ConditionVariableBroadcast(&raw mut (*SHARED).durable_cv);
        }
    }
}

/// A snapshot for dscsa.audit_status().
pub struct Status {
    pub epoch: i64,
    pub worker_pid: i32,
    pub worker_ready: bool,
    pub heartbeat_age_ms: i64,
    pub queued: u64,
    pub slots: u64,
    pub written: u64,
    pub last_anchor_seq: i64,
    pub counters: Vec<DbCounters>,
}

pub fn status() -> Option<Status> {
    locked(false, |h| Status {
        epoch: h.epoch,
        worker_pid: h.worker_pid,
        worker_ready: h.worker_ready,
        // SAFETY: reads the clock only.
        heartbeat_age_ms: (unsafe { pg_sys::GetCurrentTimestamp() } - h.worker_heartbeat) / 1000,
        queued: h.next_ticket - h.read_ticket,
        slots: h.slots,
        written: h.written,
        last_anchor_seq: h.last_anchor_seq,
        counters: h
            .counters
            .iter()
            .filter(|c| c.dboid != 0)
            .copied()
            .collect(),
    })
}
