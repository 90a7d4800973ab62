//! A backfill worker's process: connects as its leader's user, loads the leader's keys
//! through the KMS hook, and backfills ranges until none is left, its job is cancelled,
//! or its leader is gone. An error ends the process (PostgreSQL logs it) and leaves the
//! range it held to the leader.

use std::ffi::CString;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::{
    worker_claim, worker_done, worker_finished, worker_params, Task, WorkerParams, WorkerStep,
};

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn dscsa_backfill_worker_main(arg: pg_sys::Datum) {
    // SAFETY: what parallel workers do: SIGTERM (the leader cancelling, a fast shutdown)
    // interrupts the range in flight at its next interrupt check, which rolls it back.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(raw::die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    let slot = arg.value();
    let mut extra = BackgroundWorker::get_extra().split(' ');
    let generation: u64 = extra.next().and_then(|g| g.parse().ok()).unwrap_or(0);
    let participant: u8 = extra.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if participant == 0 {
        return;
    }
    let Some(params) = worker_params(slot, generation) else {
        return;
    };
    // SAFETY: connects this worker to the leader's database as the leader's login role
    // (which can log in), then takes the leader's current user and security context, as
    // PostgreSQL's parallel workers do. Both raise FATAL if the role or database is gone.
    unsafe {
        pg_sys::BackgroundWorkerInitializeConnectionByOid(params.dboid, params.auth_user, 1);
        pg_sys::SetUserIdAndSecContext(params.current_user, params.sec_context);
    }
    BackgroundWorker::transaction(|| prepare_session(&params));
    loop {
        match worker_claim(slot, generation, participant) {
            WorkerStep::Stop => break,
            WorkerStep::Wait => {
                // SAFETY: sleeps on this process's latch; SIGTERM ends the process at the
                // interrupt check.
                unsafe {
                    pg_sys::WaitLatch(
                        pg_sys::MyLatch,
                        (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH)
                            as i32,
                        10,
                        pg_sys::PG_WAIT_EXTENSION,
                    );
                    pg_sys::ResetLatch(pg_sys::MyLatch);
                }
                pgrx::check_for_interrupts!();
            }
            WorkerStep::Range(range, first, end) => {
                report_activity(
                    pg_sys::BackendState::STATE_RUNNING,
                    &format!(
                        "pg_dscsa backfill ({}): blocks {first} to {end} of column {} of table {}",
                        params.task.name(),
                        params.column,
                        params.relid.to_u32()
                    ),
                );
                let relid = i64::from(params.relid.to_u32());
                let (sql, args): (&str, Vec<pgrx::datum::DatumWithOid>) = match params.task {
                    Task::Protect => (
                        super::PROTECT_RANGE_SQL,
                        vec![
                            relid.into(),
                            params.column.as_str().into(),
                            first.into(),
                            end.into(),
                        ],
                    ),
                    Task::Reencrypt | Task::ReindexBlind => (
                        super::BATCH_RANGE_SQL,
                        vec![
                            relid.into(),
                            params.column.as_str().into(),
                            params.task.name().into(),
                            params.target_id.into(),
                            params.context.as_str().into(),
                            first.into(),
                            end.into(),
                        ],
                    ),
                };
                // (Read-write SPI: the range function writes the table.)
                let rows = BackgroundWorker::transaction(|| {
                    Spi::connect_mut(|c| c.update(sql, Some(1), &args)?.first().get_one::<i64>())
                });
                // An SQL error has ended the process already (ERROR is FATAL in a
                // worker); this is the range committed.
                let rows = match rows {
                    Ok(n) => n.unwrap_or(0),
                    Err(e) => error!("pg_dscsa backfill worker: {e}"),
                };
                worker_done(slot, generation, participant, range, rows);
                report_activity(pg_sys::BackendState::STATE_IDLE, "");
            }
        }
    }
    worker_finished(slot, generation, participant);
}

mod raw {
    unsafe extern "C-unwind" {
        /// PostgreSQL's SIGTERM handler for backends (tcop/postgres.c): sets
        /// ProcDiePending and the latch, served at the next interrupt check.
        pub fn die(signal: std::ffi::c_int);
    }
}

/// Inside the worker's first transaction: the leader's settings that change what an
/// encryption uses, accepts or records, then its keys, through the KMS hook.
fn prepare_session(params: &WorkerParams) {
    set(
        "dscsa.key_name",
        &params.data_key,
        pg_sys::GucContext::PGC_USERSET,
    );
    // Superuser settings: a worker relaxes them only as its leader had.
    if !params.gs1_validation {
        set("dscsa.gs1_validation", "off", pg_sys::GucContext::PGC_SUSET);
    }
    if !params.audit {
        set("dscsa.audit", "off", pg_sys::GucContext::PGC_SUSET);
    }
    for key in &params.keys {
        if let Err(e) = Spi::run_with_args("SELECT dscsa.load_key($1)", &[key.as_str().into()]) {
            error!("pg_dscsa backfill worker: {e}");
        }
    }
}

/// What pg_stat_activity shows for this worker.
fn report_activity(state: pg_sys::BackendState::Type, what: &str) {
    if let Ok(what) = CString::new(what) {
        // SAFETY: copies the string into this backend's status entry.
        unsafe { pg_sys::pgstat_report_activity(state, what.as_ptr()) };
    }
}

fn set(name: &str, value: &str, context: pg_sys::GucContext::Type) {
    let (Ok(name), Ok(value)) = (CString::new(name), CString::new(value)) else {
        return;
    };
    // SAFETY: sets a GUC for this worker's session, as SET would (ERROR on a bad value).
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SET,
            true,
            pgrx::PgLogLevel::ERROR as i32,
            false,
        );
    }
}
