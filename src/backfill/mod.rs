//! Backfill workers: background workers that help the session running an online
//! `dscsa.protect_column` encrypt its table (docs/PROTECT.md, "Backfill workers").
//!
//! The backfill is one UPDATE per block range, each committed on its own, and
//! independent of the others (each encrypts the rows of its blocks under their row
//! locks, `WHERE twin IS NULL`), so ranges can run side by side. The calling session (the
//! leader) registers a job in shared memory: the table, the column, the block ranges left
//! (`dscsa_core::ranges`), who it runs as and which keys it uses. It then starts up to
//! `dscsa.backfill_workers` dynamic background workers (worker.rs) and backfills ranges
//! itself, taking them from the same table. Each worker connects to the leader's
//! database as the leader's user, loads the same keys through the KMS hook (the key
//! cache usually answers), and runs the same SQL function as the leader,
//! `dscsa._protect_backfill_range`, one range per transaction.
//!
//! The registry's resume point is the block below which every range is done: an
//! interrupted run redoes at most the ranges in flight, which the `twin IS NULL`
//! condition makes cheap. A worker that fails (its error is in the server log) leaves
//! its range to the leader, which takes it over; if the leader's transaction aborts
//! (error, cancel, termination), the job is cancelled and its workers are terminated.
//! Without shared memory (pg_dscsa not preloaded) the leader backfills alone, through
//! the same range table kept in its own memory.
//!
//! `dscsa.reencrypt` and `dscsa.reindex_blind` walk their tables in block ranges the same
//! way (sql/rewrite.sql), and share this machinery: a job's `Task` says which range
//! function its participants run; their workers load every key the leader has loaded
//! with `dscsa.load_key` (the rows to rewrite may be under any of them).

mod worker;

use std::cell::RefCell;

use dscsa_core::ranges::{Claim, Ranges};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::{guc, shmem};

/// Background workers per job at most (participants 1..=MAX_WORKERS; 0 is the leader).
pub const MAX_WORKERS: usize = 8;
/// Jobs the cluster runs at once with workers; a leader that finds none free goes alone.
const MAX_JOBS: usize = 16;
/// Bytes kept of a column or key name (NUL-terminated); longer names go without workers.
const NAME_LEN: usize = 128;
const LEADER: u8 = 0;

/// Bytes kept of the names of the keys a job's workers load, one per line.
const KEYS_LEN: usize = 2048;

/// What a job's ranges do: the function each participant runs for one range.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Task {
    /// `dscsa._protect_backfill_range` (online `protect_column`).
    Protect,
    /// `dscsa._batch_range` of a `dscsa.reencrypt`.
    Reencrypt,
    /// `dscsa._batch_range` of a `dscsa.reindex_blind`.
    ReindexBlind,
}

impl Task {
    fn of_batch(job_name: &str) -> Option<Task> {
        match job_name {
            "reencrypt" => Some(Task::Reencrypt),
            "reindex_blind" => Some(Task::ReindexBlind),
            _ => None,
        }
    }

    /// The job's name in notices and in the workers' `pg_stat_activity` rows.
    fn name(self) -> &'static str {
        match self {
            Task::Protect => "protect",
            Task::Reencrypt => "reencrypt",
            Task::ReindexBlind => "reindex_blind",
        }
    }
}

/// One backfill, as its leader and workers share it.
#[repr(C)]
#[derive(Clone, Copy)]
struct Job {
    task: Task,
    /// Changes whenever the slot is taken, so that a worker of an earlier job that sees
    /// the slot reused stops.
    generation: u64,
    active: bool,
    cancelled: bool,
    leader_pid: i32,
    dboid: pg_sys::Oid,
    /// The leader's login role (what a worker connects as) and its current user and
    /// security context (what it then runs as).
    auth_user: pg_sys::Oid,
    current_user: pg_sys::Oid,
    sec_context: i32,
    relid: pg_sys::Oid,
    column: [u8; NAME_LEN],
    /// The leader's `dscsa.key_name` (what a worker encrypts under).
    data_key: [u8; NAME_LEN],
    /// Re-encryption: the key version values move to and their context (AAD).
    target_id: i32,
    context: [u8; NAME_LEN],
    /// The keys a worker loads, one name per line: a protection's data and blind-index
    /// keys, every key a re-encryption's leader has loaded.
    keys: [u8; KEYS_LEN],
    /// Superuser settings of the leader that change what an encryption accepts or
    /// records; a worker runs with the same values.
    gs1_validation: bool,
    audit: bool,
    first_block: u64,
    step: u64,
    ranges: Ranges,
    rows: i64,
    workers: u32,
    /// Workers that ended their loop normally (the others failed or were stopped).
    worker_ok: [bool; MAX_WORKERS],
}

impl Job {
    fn block_of(&self, range: u64) -> i64 {
        (self.first_block + range * self.step) as i64
    }
}

/// What a worker needs to start, copied out of its job.
struct WorkerParams {
    task: Task,
    dboid: pg_sys::Oid,
    auth_user: pg_sys::Oid,
    current_user: pg_sys::Oid,
    sec_context: i32,
    relid: pg_sys::Oid,
    column: String,
    data_key: String,
    target_id: i32,
    context: String,
    /// The keys to load (see `Job::keys`).
    keys: Vec<String>,
    gs1_validation: bool,
    audit: bool,
}

#[repr(C)]
struct Shared {
    lock: *mut pg_sys::LWLock,
    generations: u64,
    jobs: [Job; MAX_JOBS],
}

static mut SHARED: *mut Shared = std::ptr::null_mut();

/// Bytes the job table needs in the shared segment (src/shmem.rs).
pub fn shared_size() -> usize {
    std::mem::size_of::<Shared>()
}

/// Sets up the job table (in the postmaster, from shmem_startup, AddinShmemInitLock held).
///
/// # Safety
/// Called once per postmaster life from shmem_startup, with `lock` a named LWLock.
pub unsafe fn init_shared(lock: *mut pg_sys::LWLock) {
    let mut found = false;
    let s = pg_sys::ShmemInitStruct(c"pg_dscsa backfill".as_ptr(), shared_size(), &mut found)
        .cast::<Shared>();
    if !found {
        std::ptr::write_bytes(s.cast::<u8>(), 0, shared_size());
        (*s).lock = lock;
    }
    SHARED = s;
}

/// Runs `f` on the job table under its lock; None without shared memory.
fn with_shared<T>(f: impl FnOnce(&mut Shared) -> T) -> Option<T> {
    // SAFETY: SHARED points at the initialized table for the life of the process; the
    // LWLock serializes access (released by error recovery if `f` raised, which it does
    // not: it only reads and writes plain fields).
    unsafe {
        let s = SHARED;
        if s.is_null() {
            return None;
        }
        pg_sys::LWLockAcquire((*s).lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let result = f(&mut *s);
        pg_sys::LWLockRelease((*s).lock);
        Some(result)
    }
}

/// Runs `f` on job `slot` under the table's lock; None without shared memory.
fn with_shared_job<T>(slot: usize, f: impl FnOnce(&mut Job) -> T) -> Option<T> {
    with_shared(|s| s.jobs.get_mut(slot).map(f)).flatten()
}

/// Where the leader's job is: in shared memory, shared with its workers, or (no shared
/// memory, or no worker wanted or free slot) in this backend alone.
enum Store {
    Shared(usize),
    Local(Box<Job>),
}

/// This backend's job as leader.
struct Leading {
    store: Store,
    generation: u64,
    /// Rows the protection had done before this call.
    rows_before: i64,
    /// The range the leader is backfilling now.
    current: Option<u64>,
    /// The workers' handles (palloc'd in TopMemoryContext: they outlive the leader's
    /// transactions), by participant number - 1.
    handles: Vec<*mut pg_sys::BackgroundWorkerHandle>,
}

thread_local! {
    static LEADING: RefCell<Option<Leading>> = const { RefCell::new(None) };
}

impl Leading {
    fn with_job<T>(&mut self, f: impl FnOnce(&mut Job) -> T) -> T {
        match &mut self.store {
            Store::Local(job) => f(job),
            // (A shared slot exists only where the table does.)
            Store::Shared(slot) => match with_shared_job(*slot, f) {
                Some(result) => result,
                None => unreachable!("a job slot without the shared job table"),
            },
        }
    }

    /// Participants (workers) whose process has stopped.
    fn stopped_workers(&self) -> [bool; MAX_WORKERS + 1] {
        let mut stopped = [false; MAX_WORKERS + 1];
        for (i, h) in self.handles.iter().enumerate() {
            let mut pid = 0;
            // SAFETY: a handle RegisterDynamicBackgroundWorker returned, kept alive.
            let status = unsafe { pg_sys::GetBackgroundWorkerPid(*h, &mut pid) };
            stopped[i + 1] = status == pg_sys::BgwHandleStatus::BGWH_STOPPED
                || status == pg_sys::BgwHandleStatus::BGWH_POSTMASTER_DIED;
        }
        stopped
    }
}

/// A name a worker needs whole: refused (the session then goes alone) if it does not fit.
fn name_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    (s.len() < N && !s.contains('\0')).then(|| shmem::fixed_name(s))
}

fn now_waiting(ms: i64) {
    // SAFETY: sleeps on this process's latch (woken early by interrupts), then serves
    // them (a cancel raises here, and the abort callback stops the workers).
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

/// Cancels this backend's job, if any: its workers are told to stop (SIGTERM: a range
/// in flight is rolled back) and the slot is freed. Called when the leader's transaction
/// aborts and when a new job starts over a stale one.
fn cancel_leading() {
    let Some(mut leading) = LEADING.with(|l| l.borrow_mut().take()) else {
        return;
    };
    if let Store::Shared(slot) = leading.store {
        let generation = leading.generation;
        with_shared_job(slot, |job| {
            if job.generation == generation {
                job.cancelled = true;
                job.active = false;
            }
        });
    }
    for h in leading.handles.drain(..) {
        // SAFETY: handles from RegisterDynamicBackgroundWorker, freed once.
        unsafe {
            pg_sys::TerminateBackgroundWorker(h);
            pg_sys::pfree(h.cast());
        }
    }
}

/// Runs at every transaction event of every backend, so the common case (not an abort)
/// returns before entering pgrx's guard (a `sigsetjmp` and a `catch_unwind` per call).
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::XactEvent::XACT_EVENT_ABORT
        || event == pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
    {
        cancel_leading_guarded();
    }
}

#[pg_guard]
extern "C-unwind" fn cancel_leading_guarded() {
    cancel_leading();
}

pub fn init() {
    // SAFETY: registers a callback whose function pointer lives as long as the library.
    unsafe { pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut()) };
}

/// Takes a free job slot for `job`; None when all are in use.
fn take_slot(job: &mut Job) -> Option<usize> {
    with_shared(|s| {
        let i = s.jobs.iter().position(|j| !j.active)?;
        s.generations += 1;
        job.generation = s.generations;
        s.jobs[i] = *job;
        Some(i)
    })
    .flatten()
}

/// Starts worker `participant` of the job in `slot`; its handle, or None if the
/// postmaster has no free worker slot.
fn start_worker(
    slot: usize,
    generation: u64,
    participant: u8,
) -> Option<*mut pg_sys::BackgroundWorkerHandle> {
    let builder = pgrx::bgworkers::BackgroundWorkerBuilder::new("pg_dscsa backfill")
        .set_type("pg_dscsa backfill")
        .set_library("pg_dscsa")
        .set_function("dscsa_backfill_worker_main")
        .enable_spi_access()
        .set_start_time(pgrx::bgworkers::BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_argument(Some(pg_sys::Datum::from(slot)))
        .set_extra(&format!("{generation} {participant}"))
        // SAFETY: reads MyProcPid.
        .set_notify_pid(unsafe { pg_sys::MyProcPid });
    let mut bgw: pg_sys::BackgroundWorker = (&builder).into();
    let mut handle: *mut pg_sys::BackgroundWorkerHandle = std::ptr::null_mut();
    // SAFETY: the handle is allocated in TopMemoryContext so that it outlives this
    // transaction (the leader commits after every range); freed by finish/cancel.
    let registered = unsafe {
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let ok = pg_sys::RegisterDynamicBackgroundWorker(&mut bgw, &mut handle);
        pg_sys::MemoryContextSwitchTo(old);
        ok
    };
    registered.then_some(handle)
}

/// `dscsa._backfill_running(tbl, col)`: whether this session is backfilling that column
/// (a job started by an earlier step of the same call).
#[pg_extern(sql = false)]
fn _backfill_running(tbl: pg_sys::Oid, col: &str) -> bool {
    leading_job_of(Task::Protect, tbl, col)
}

/// `dscsa._batch_running(tbl, col, job_name)`: whether this session is walking that
/// column for a `dscsa.reencrypt` or `dscsa.reindex_blind` (`job_name`).
#[pg_extern(sql = false)]
fn _batch_running(tbl: pg_sys::Oid, col: &str, job_name: &str) -> bool {
    Task::of_batch(job_name).is_some_and(|task| leading_job_of(task, tbl, col))
}

fn leading_job_of(task: Task, tbl: pg_sys::Oid, col: &str) -> bool {
    LEADING.with(|l| {
        l.borrow_mut().as_mut().is_some_and(|leading| {
            leading.with_job(|job| {
                job.task == task && job.relid == tbl && shmem::fixed_name_str(&job.column) == col
            })
        })
    })
}

/// What a new job is: its task, table and column, blocks, and what its workers use.
struct JobSpec<'a> {
    task: Task,
    tbl: pg_sys::Oid,
    col: &'a str,
    first_block: i64,
    end_block: i64,
    step: i64,
    data_key: &'a str,
    workers_allowed: bool,
    target_id: i32,
    context: &'a str,
    /// The keys the workers load, one name per line.
    keys: String,
    rows_before: i64,
}

/// `dscsa._backfill_start(tbl, col, first_block, end_block, step, data_key,
/// blind_index_key, rows_before)`: registers the job of the blocks left and starts its
/// workers; returns how many started.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn _backfill_start(
    tbl: pg_sys::Oid,
    col: &str,
    first_block: i64,
    end_block: i64,
    step: i64,
    data_key: &str,
    blind_index_key: Option<&str>,
    rows_before: i64,
) -> i32 {
    start_job(JobSpec {
        task: Task::Protect,
        tbl,
        col,
        first_block,
        end_block,
        step,
        data_key,
        workers_allowed: true,
        target_id: 0,
        context: "",
        keys: [Some(data_key), blind_index_key]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("\n"),
        rows_before,
    })
}

/// `dscsa._batch_start_workers(tbl, col, job_name, target_id, context, first_block,
/// end_block, step, rows_before)`: as `_backfill_start`, for the block walk of a
/// `dscsa.reencrypt` or `dscsa.reindex_blind`; the workers use this session's
/// `dscsa.key_name` and load every key it has loaded.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn _batch_start_workers(
    tbl: pg_sys::Oid,
    col: &str,
    job_name: &str,
    target_id: i32,
    context: &str,
    first_block: i64,
    end_block: i64,
    step: i64,
    rows_before: i64,
) -> i32 {
    let Some(task) = Task::of_batch(job_name) else {
        crate::error::raise(dscsa_core::Error::InvalidArgument(
            "unknown batch job".into(),
        ));
    };
    // (A key name that is not UTF-8 cannot be handed to a worker: the session goes alone.)
    let data_key = std::str::from_utf8(guc::key_name()).ok();
    start_job(JobSpec {
        task,
        tbl,
        col,
        first_block,
        end_block,
        step,
        data_key: data_key.unwrap_or(""),
        workers_allowed: data_key.is_some(),
        target_id,
        context,
        keys: crate::keys::explicitly_loaded_names().join("\n"),
        rows_before,
    })
}

fn start_job(spec: JobSpec<'_>) -> i32 {
    cancel_leading();
    let step = spec.step.max(1) as u64;
    let first = spec.first_block.max(0) as u64;
    let count = (spec.end_block.max(0) as u64)
        .saturating_sub(first)
        .div_ceil(step);
    let (auth_user, current_user, sec_context) = {
        let mut user = pg_sys::InvalidOid;
        let mut context = 0;
        // SAFETY: reads backend globals.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
            (pg_sys::GetAuthenticatedUserId(), user, context)
        }
    };
    let names = (
        name_bytes::<NAME_LEN>(spec.col),
        name_bytes::<NAME_LEN>(spec.data_key),
        name_bytes::<NAME_LEN>(spec.context),
        name_bytes::<KEYS_LEN>(&spec.keys),
    );
    let names_fit = spec.workers_allowed
        && names.0.is_some()
        && names.1.is_some()
        && names.2.is_some()
        && names.3.is_some();
    let mut job = Job {
        task: spec.task,
        generation: 0,
        active: true,
        cancelled: false,
        // SAFETY: reads backend globals.
        leader_pid: unsafe { pg_sys::MyProcPid },
        dboid: unsafe { pg_sys::MyDatabaseId },
        auth_user,
        current_user,
        sec_context,
        relid: spec.tbl,
        column: names.0.unwrap_or([0; NAME_LEN]),
        data_key: names.1.unwrap_or([0; NAME_LEN]),
        target_id: spec.target_id,
        context: names.2.unwrap_or([0; NAME_LEN]),
        keys: names.3.unwrap_or([0; KEYS_LEN]),
        gs1_validation: guc::GS1_VALIDATION.get(),
        audit: guc::AUDIT.get(),
        first_block: first,
        step,
        ranges: Ranges::new(count),
        rows: 0,
        workers: 0,
        worker_ok: [false; MAX_WORKERS],
    };
    let wanted = (guc::BACKFILL_WORKERS.get().clamp(0, MAX_WORKERS as i32) as u64)
        .min(count.saturating_sub(1)) as usize;
    let slot = if wanted > 0 && names_fit {
        take_slot(&mut job)
    } else {
        None
    };
    let mut handles = Vec::new();
    if let Some(slot) = slot {
        for participant in 1..=wanted as u8 {
            match start_worker(slot, job.generation, participant) {
                Some(h) => handles.push(h),
                None => break,
            }
        }
        with_shared_job(slot, |j| j.workers = handles.len() as u32);
    }
    let started = handles.len() as i32;
    LEADING.with(|l| {
        *l.borrow_mut() = Some(Leading {
            store: match slot {
                Some(slot) => Store::Shared(slot),
                None => Store::Local(Box::new(job)),
            },
            generation: job.generation,
            rows_before: spec.rows_before,
            current: None,
            handles,
        })
    });
    started
}

/// `dscsa._backfill_claim()`: the first block of the next range for this session to
/// backfill, or NULL when every range is done. Takes over the range of a worker that
/// stopped; waits while the others finish theirs.
#[pg_extern(sql = false)]
fn _backfill_claim() -> Option<i64> {
    loop {
        let claimed = LEADING.with(|l| {
            let mut l = l.borrow_mut();
            let leading = l.as_mut()?;
            let stopped = leading.stopped_workers();
            let claim = leading.with_job(|job| match job.ranges.claim(LEADER) {
                Claim::Wait => match job.ranges.take_over(LEADER, |p| stopped[p as usize]) {
                    Some(range) => Claim::Range(range),
                    None => Claim::Wait,
                },
                other => other,
            });
            Some(match claim {
                Claim::Range(range) => {
                    leading.current = Some(range);
                    Some(Some(leading.with_job(|job| job.block_of(range))))
                }
                Claim::Finished => Some(None),
                Claim::Wait => None,
            })
        });
        match claimed {
            None => return None,
            Some(Some(answer)) => return answer,
            Some(None) => now_waiting(5),
        }
    }
}

/// `dscsa._backfill_done(rows)`: the session's current range is done (in its
/// transaction, with the registry); returns {block below which every range is done,
/// rows of the protection so far}.
#[pg_extern(sql = false)]
fn _backfill_done(rows: i64) -> Vec<i64> {
    LEADING.with(|l| {
        let mut l = l.borrow_mut();
        let Some(leading) = l.as_mut() else {
            return vec![0, 0];
        };
        let current = leading.current.take();
        let before = leading.rows_before;
        leading.with_job(|job| {
            if let Some(range) = current {
                if job.ranges.done(range, LEADER) {
                    job.rows += rows;
                }
            }
            vec![job.block_of(job.ranges.done_below()), before + job.rows]
        })
    })
}

/// `dscsa._backfill_finish()`: every range is done; waits for the workers to exit, frees
/// the job, and returns {rows of the protection, workers started, workers that failed}.
#[pg_extern(sql = false)]
fn _backfill_finish() -> Vec<i64> {
    let Some(mut leading) = LEADING.with(|l| l.borrow_mut().take()) else {
        return vec![0, 0, 0];
    };
    for h in leading.handles.drain(..) {
        // SAFETY: a handle of a worker this backend registered (notify pid = us); it has
        // nothing left to claim and exits.
        unsafe {
            pg_sys::WaitForBackgroundWorkerShutdown(h);
            pg_sys::pfree(h.cast());
        }
    }
    let before = leading.rows_before;
    let (rows, workers, failed) = leading.with_job(|job| {
        let failed = job.worker_ok[..job.workers as usize]
            .iter()
            .filter(|ok| !**ok)
            .count();
        job.active = false;
        (before + job.rows, job.workers, failed)
    });
    vec![rows, i64::from(workers), failed as i64]
}

/// A worker's view of its job: None once the job is gone, cancelled, or its leader has
/// exited.
fn worker_job<T>(slot: usize, generation: u64, f: impl FnOnce(&mut Job) -> T) -> Option<T> {
    with_shared_job(slot, |job| {
        // SAFETY: BackendPidGetProc takes ProcArrayLock; a leader that exited is gone.
        let leader_alive = unsafe { !pg_sys::BackendPidGetProc(job.leader_pid).is_null() };
        (job.generation == generation && job.active && !job.cancelled && leader_alive)
            .then(|| f(job))
    })
    .flatten()
}

fn worker_params(slot: usize, generation: u64) -> Option<WorkerParams> {
    worker_job(slot, generation, |job| WorkerParams {
        task: job.task,
        dboid: job.dboid,
        auth_user: job.auth_user,
        current_user: job.current_user,
        sec_context: job.sec_context,
        relid: job.relid,
        column: shmem::fixed_name_str(&job.column),
        data_key: shmem::fixed_name_str(&job.data_key),
        target_id: job.target_id,
        context: shmem::fixed_name_str(&job.context),
        keys: shmem::fixed_name_str(&job.keys)
            .lines()
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect(),
        gs1_validation: job.gs1_validation,
        audit: job.audit,
    })
}

/// What a worker does next.
enum WorkerStep {
    /// Backfill range `.0`, its blocks from `.1` to `.2`.
    Range(u64, i64, i64),
    Wait,
    Stop,
}

fn worker_claim(slot: usize, generation: u64, participant: u8) -> WorkerStep {
    worker_job(slot, generation, |job| {
        if job.ranges.all_claimed() {
            return WorkerStep::Stop;
        }
        match job.ranges.claim(participant) {
            Claim::Range(r) => WorkerStep::Range(r, job.block_of(r), job.block_of(r + 1)),
            Claim::Wait => WorkerStep::Wait,
            Claim::Finished => WorkerStep::Stop,
        }
    })
    .unwrap_or(WorkerStep::Stop)
}

fn worker_done(slot: usize, generation: u64, participant: u8, range: u64, rows: i64) {
    worker_job(slot, generation, |job| {
        if job.ranges.done(range, participant) {
            job.rows += rows;
        }
    });
}

fn worker_finished(slot: usize, generation: u64, participant: u8) {
    worker_job(slot, generation, |job| {
        if let Some(ok) = job.worker_ok.get_mut(participant as usize - 1) {
            *ok = true;
        }
    });
}

/// The SQL a participant runs for one range of a protection (sql/protect.sql).
const PROTECT_RANGE_SQL: &str = "SELECT dscsa._protect_backfill_range($1::pg_catalog.oid::pg_catalog.regclass, $2::pg_catalog.name, $3, $4)";
/// ... and of a re-encryption or blind-index rewrite (sql/rewrite.sql).
const BATCH_RANGE_SQL: &str = "SELECT dscsa._batch_range($1::pg_catalog.oid::pg_catalog.regclass, $2::pg_catalog.name, $3, $4, $5, $6, $7)";
