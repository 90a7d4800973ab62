//! The PostgreSQL hooks pg_dscsa installs, in one place.
//!
//! pgrx 0.18 has no hook helpers, so the `pg_sys` hook pointers are set here by hand: each
//! hook saves the previous value in `_PG_init` and calls it (or the standard function).
//!
//! How the call is made matters. pgrx's guarded FFI calls catch a PostgreSQL ERROR, copy
//! it into a Rust panic and report it again later, keeping only the fields and SQLSTATEs
//! pgrx knows: an application's own `RAISE ... USING ERRCODE = 'APP01'`, a unique
//! violation's constraint name or a statement position would be lost for every query
//! that passes through our hooks. So each hook is a plain `extern "C-unwind"` function
//! whose frame holds nothing to drop and no `catch_unwind`: it calls PostgreSQL raw,
//! letting an ERROR longjmp past it untouched, and runs its own Rust work in separate
//! `#[pg_guard]` functions, which turn a Rust error into a PostgreSQL one the usual way.
//! State a longjmp could leave behind (the nesting level) is repaired by the transaction
//! callbacks (src/keys.rs) and the subtransaction callback below.
//!
//! - ProcessUtility: `DISCARD ALL` and `RESET ALL` (what connection poolers send between
//!   clients) unload every key of the session; a utility statement run at top level
//!   (a DO block, CALL, COPY ...) ends an audited statement; `DROP EXTENSION pg_dscsa`
//!   is refused while the database holds an audit trail.
//! - ExecutorRun / ExecutorFinish: track how deep in nested execution we are, as
//!   pg_stat_statements does, so that ExecutorEnd knows a top-level statement ended.
//! - ExecutorEnd: at top level, the statement's audit records are queued.
//! - emit_log_hook: remembers the SQLSTATE of the error being reported, for the failed
//!   statement's audit record (never the message: it can quote values).

use std::cell::RefCell;
use std::ffi::c_char;
use std::sync::atomic::{AtomicI32, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::{audit, keys};

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;
static mut PREV_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;
static mut PREV_EXECUTOR_FINISH: pg_sys::ExecutorFinish_hook_type = None;
static mut PREV_EXECUTOR_END: pg_sys::ExecutorEnd_hook_type = None;
static mut PREV_EMIT_LOG: pg_sys::emit_log_hook_type = None;

/// PostgreSQL's standard functions, declared here to be called raw (see above).
mod raw {
    use super::pg_sys;

    extern "C-unwind" {
        #[allow(clippy::too_many_arguments)]
        pub fn standard_ProcessUtility(
            pstmt: *mut pg_sys::PlannedStmt,
            query_string: *const std::ffi::c_char,
            read_only_tree: bool,
            context: pg_sys::ProcessUtilityContext::Type,
            params: pg_sys::ParamListInfo,
            query_env: *mut pg_sys::QueryEnvironment,
            dest: *mut pg_sys::DestReceiver,
            qc: *mut pg_sys::QueryCompletion,
        );
        pub fn standard_ExecutorRun(
            query_desc: *mut pg_sys::QueryDesc,
            direction: pg_sys::ScanDirection::Type,
            count: u64,
            execute_once: bool,
        );
        pub fn standard_ExecutorFinish(query_desc: *mut pg_sys::QueryDesc);
        pub fn standard_ExecutorEnd(query_desc: *mut pg_sys::QueryDesc);
    }
}

/// Nesting of executor runs and utility statements (0 = top level). A plain static: a
/// backend is one thread, and a `thread_local!` in a shared library costs a
/// `__tls_get_addr` call per access, four per statement here.
static NESTING: AtomicI32 = AtomicI32::new(0);

thread_local! {
    /// The nesting level at the start of each open subtransaction, to restore it when
    /// one aborts (an ERROR caught by a PL/pgSQL EXCEPTION block skipped our decrements).
    static SUBXACT_NESTING: RefCell<Vec<(pg_sys::SubTransactionId, i32)>> =
        const { RefCell::new(Vec::new()) };
}

pub fn init() {
    // SAFETY: _PG_init runs once per process, before any query, on the backend's only
    // thread; each previous hook is saved before ours replaces it. The callback function
    // lives as long as the library.
    unsafe {
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
        PREV_EXECUTOR_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
        PREV_EXECUTOR_FINISH = pg_sys::ExecutorFinish_hook;
        pg_sys::ExecutorFinish_hook = Some(executor_finish);
        PREV_EXECUTOR_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
        PREV_EMIT_LOG = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(emit_log);
        pg_sys::RegisterSubXactCallback(Some(on_subxact_event), std::ptr::null_mut());
    }
}

fn enter() {
    NESTING.store(nesting() + 1, Ordering::Relaxed);
}

fn leave() {
    NESTING.store((nesting() - 1).max(0), Ordering::Relaxed);
}

/// The current nesting level (0 = between top-level statements).
pub fn nesting() -> i32 {
    NESTING.load(Ordering::Relaxed)
}

/// After an error aborted the transaction, nesting restarts from the top.
pub fn reset_nesting() {
    NESTING.store(0, Ordering::Relaxed);
    SUBXACT_NESTING.with(|s| s.borrow_mut().clear());
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact_event(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_START_SUB => {
            let level = nesting();
            SUBXACT_NESTING.with(|s| s.borrow_mut().push((my_subid, level)));
        }
        SUBXACT_EVENT_COMMIT_SUB | SUBXACT_EVENT_ABORT_SUB => {
            let restored = SUBXACT_NESTING.with(|s| {
                let mut s = s.borrow_mut();
                let at = s.iter().rposition(|(id, _)| *id == my_subid)?;
                let (_, level) = s[at];
                s.truncate(at);
                Some(level)
            });
            if event == SUBXACT_EVENT_ABORT_SUB {
                if let Some(level) = restored {
                    NESTING.store(level, Ordering::Relaxed);
                }
            }
        }
        _ => {}
    }
}

/// Whether a utility statement resets the session for the next client of a pooled
/// connection: `DISCARD ALL` or `RESET ALL`.
///
/// # Safety
/// `stmt` must be null or a valid parse node.
unsafe fn resets_session(stmt: *mut pg_sys::Node) -> bool {
    if stmt.is_null() {
        return false;
    }
    match (*stmt).type_ {
        pg_sys::NodeTag::T_DiscardStmt => {
            (*(stmt as *mut pg_sys::DiscardStmt)).target == pg_sys::DiscardMode::DISCARD_ALL
        }
        pg_sys::NodeTag::T_VariableSetStmt => {
            (*(stmt as *mut pg_sys::VariableSetStmt)).kind == pg_sys::VariableSetKind::VAR_RESET_ALL
        }
        _ => false,
    }
}

/// Whether a utility statement drops the pg_dscsa extension.
///
/// # Safety
/// `stmt` must be null or a valid parse node.
unsafe fn drops_extension(stmt: *mut pg_sys::Node) -> bool {
    if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_DropStmt {
        return false;
    }
    let drop = &*(stmt as *mut pg_sys::DropStmt);
    if drop.removeType != pg_sys::ObjectType::OBJECT_EXTENSION {
        return false;
    }
    let list = drop.objects;
    if list.is_null() {
        return false;
    }
    (0..(*list).length as usize).any(|i| {
        let node = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::Node;
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_String {
            return false;
        }
        let name = (*(node as *mut pg_sys::String)).sval;
        !name.is_null() && std::ffi::CStr::from_ptr(name).to_bytes() == b"pg_dscsa"
    })
}

/// Our work before a utility statement: refusals.
#[pg_guard]
unsafe extern "C-unwind" fn before_utility(stmt: *mut pg_sys::Node) {
    if drops_extension(stmt) {
        audit::refuse_drop_with_trail();
    }
}

/// Our work after a utility statement succeeded.
#[pg_guard]
unsafe extern "C-unwind" fn after_utility(resets: bool) {
    // Only once the statement succeeded (DISCARD ALL fails inside a transaction block,
    // and then nothing was reset).
    if resets {
        let n = keys::remove_where(|_| true);
        if n > 0 {
            audit::key_event_now(
                "unload_all",
                "",
                "ok",
                serde_json::json!({ "versions": n, "reason": "DISCARD ALL or RESET ALL" }),
            );
        }
    }
    if nesting() == 0 {
        audit::statement_ended(false);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn after_executor_end() {
    if nesting() == 0 {
        audit::statement_ended(false);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn note_error(sqlstate: *const c_char) {
    if !sqlstate.is_null() {
        audit::error_reported(
            std::ffi::CStr::from_ptr(sqlstate)
                .to_string_lossy()
                .into_owned(),
        );
    }
}

// The hooks themselves: no #[pg_guard], no value with a destructor, raw calls.

#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let stmt = (*pstmt).utilityStmt;
    let resets = resets_session(stmt);
    before_utility(stmt);
    enter();
    match PREV_PROCESS_UTILITY {
        Some(prev) => prev(
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        ),
        None => raw::standard_ProcessUtility(
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        ),
    }
    leave();
    after_utility(resets);
}

unsafe extern "C-unwind" fn executor_run(
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    enter();
    match PREV_EXECUTOR_RUN {
        Some(prev) => prev(query_desc, direction, count, execute_once),
        None => raw::standard_ExecutorRun(query_desc, direction, count, execute_once),
    }
    leave();
}

unsafe extern "C-unwind" fn executor_finish(query_desc: *mut pg_sys::QueryDesc) {
    enter();
    match PREV_EXECUTOR_FINISH {
        Some(prev) => prev(query_desc),
        None => raw::standard_ExecutorFinish(query_desc),
    }
    leave();
}

unsafe extern "C-unwind" fn executor_end(query_desc: *mut pg_sys::QueryDesc) {
    match PREV_EXECUTOR_END {
        Some(prev) => prev(query_desc),
        None => raw::standard_ExecutorEnd(query_desc),
    }
    after_executor_end();
}

unsafe extern "C-unwind" fn emit_log(edata: *mut pg_sys::ErrorData) {
    // unpack_sql_state returns a static buffer: nothing to free. Called raw: an error
    // while reporting an error must not be turned into a Rust panic here.
    if !edata.is_null() && (*edata).elevel >= pgrx::PgLogLevel::ERROR as i32 {
        extern "C-unwind" {
            fn unpack_sql_state(sql_state: std::ffi::c_int) -> *mut c_char;
        }
        note_error(unpack_sql_state((*edata).sqlerrcode));
    }
    if let Some(prev) = PREV_EMIT_LOG {
        prev(edata);
    }
}
