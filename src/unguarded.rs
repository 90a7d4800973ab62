//! PostgreSQL functions that never raise an ERROR, called without pgrx's guard.
//!
//! pgrx wraps every `pg_sys` call in a `sigsetjmp` frame so that an ERROR raised inside
//! it becomes a Rust panic instead of a longjmp over Rust frames. The functions here
//! cannot raise one: they read a backend global or the clock, or (the timeout calls) can
//! only fail with FATAL, which ends the process without a longjmp. They run on the path
//! of every audited statement or decryption, where the guard (about 40 ns with its
//! bookkeeping, measured in the lookup benchmark's profile) was a visible share of the
//! extension's own time. Anything that can raise stays behind the guard.

use pgrx::pg_sys;

mod raw {
    use pgrx::pg_sys;

    unsafe extern "C" {
        pub fn GetCurrentTimestamp() -> pg_sys::TimestampTz;
        pub fn GetCurrentStatementStartTimestamp() -> pg_sys::TimestampTz;
        pub fn GetUserId() -> pg_sys::Oid;
        pub fn GetSessionUserId() -> pg_sys::Oid;
        pub fn pgstat_get_my_query_id() -> u64;
        pub fn enable_timeout_after(id: i32, delay_ms: i32);
        pub fn disable_timeout(id: i32, keep_indicator: bool);
    }
}

/// The clock, in PostgreSQL microseconds (since 2000-01-01).
#[inline]
pub fn now() -> pg_sys::TimestampTz {
    // SAFETY: reads the clock (gettimeofday); never raises.
    unsafe { raw::GetCurrentTimestamp() }
}

/// When the current top-level statement started, in PostgreSQL microseconds.
#[inline]
pub fn statement_start() -> pg_sys::TimestampTz {
    // SAFETY: reads a backend global; never raises.
    unsafe { raw::GetCurrentStatementStartTimestamp() }
}

/// The current user (the role privileges are checked for).
#[inline]
pub fn current_user() -> pg_sys::Oid {
    // SAFETY: reads a backend global; never raises.
    unsafe { raw::GetUserId() }
}

/// The session user.
#[inline]
pub fn session_user() -> pg_sys::Oid {
    // SAFETY: reads a backend global; never raises.
    unsafe { raw::GetSessionUserId() }
}

/// The query id of the statement being executed (0 when none is computed).
#[inline]
pub fn query_id() -> i64 {
    // SAFETY: reads this backend's status entry; never raises.
    unsafe { raw::pgstat_get_my_query_id() as i64 }
}

/// Schedules registered timeout `id` after `delay_ms` (PostgreSQL's utils/timeout.h).
///
/// # Safety
/// `id` must be a timeout registered with `RegisterTimeout`.
pub unsafe fn enable_timeout_after(id: i32, delay_ms: i32) {
    raw::enable_timeout_after(id, delay_ms)
}

/// Cancels registered timeout `id`.
///
/// # Safety
/// `id` must be a timeout registered with `RegisterTimeout`.
pub unsafe fn disable_timeout(id: i32) {
    raw::disable_timeout(id, false)
}
