//! The PostgreSQL hooks pg_dscsa installs, in one place.
//!
//! pgrx 0.18 has no hook helpers, so the `pg_sys` hook pointers are set here by hand: each
//! hook saves the previous value in `_PG_init`, calls it (or the standard function) from
//! inside a `pg_guard_ffi_boundary` so that a PostgreSQL ERROR raised below it unwinds
//! correctly through Rust, and does its own work after that call returns.
//!
//! - ProcessUtility: `DISCARD ALL` and `RESET ALL` (what connection poolers send between
//!   clients) unload every key of the session, whatever its scope.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::keys;

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

pub fn init() {
    // SAFETY: _PG_init runs once per process, before any query, on the backend's only
    // thread; the previous hook is saved before ours replaces it.
    unsafe {
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
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

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let resets = resets_session((*pstmt).utilityStmt);
    match PREV_PROCESS_UTILITY {
        Some(prev) => pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            )
        }),
        None => pg_sys::standard_ProcessUtility(
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
    // Only once the statement succeeded (DISCARD ALL fails inside a transaction block,
    // and then nothing was reset).
    if resets {
        keys::remove_where(|_| true);
    }
}
