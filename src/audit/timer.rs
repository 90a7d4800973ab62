//! The timer behind the `opened` record of `async` mode. A statement is admitted without
//! queueing anything (short statements, the usual case, are recorded once, when they
//! end); if it is still disclosing values `dscsa.audit_flush_interval` later, its opened
//! record is queued then, so that a backend killed during a long statement leaves a trace
//! within that interval. PostgreSQL's timeout machinery (utils/timeout.h, not in pgrx's
//! bindings) runs the handler from SIGALRM: it only sets a flag, read by the next
//! operation.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::pg_sys;

/// `USER_TIMEOUT` of PostgreSQL 15's `enum TimeoutId`: "allocate a free user timeout".
const USER_TIMEOUT: i32 = 12;

mod raw {
    unsafe extern "C-unwind" {
        pub fn RegisterTimeout(id: i32, handler: Option<unsafe extern "C" fn()>) -> i32;
        pub fn enable_timeout_after(id: i32, delay_ms: i32);
        pub fn disable_timeout(id: i32, keep_indicator: bool);
    }
}

static FIRED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static ID: Cell<Option<i32>> = const { Cell::new(None) };
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// Runs in the SIGALRM handler: async-signal-safe (one atomic store).
unsafe extern "C" fn on_timeout() {
    FIRED.store(true, Ordering::Relaxed);
}

fn id() -> i32 {
    ID.with(|cell| match cell.get() {
        Some(id) => id,
        None => {
            // SAFETY: registers a handler for the life of the backend (ereports FATAL if
            // the backend has no free user timeout, through the guard).
            let id = unsafe {
                pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                    raw::RegisterTimeout(USER_TIMEOUT, Some(on_timeout))
                })
            };
            cell.set(Some(id));
            id
        }
    })
}

/// Starts the timer for the current statement.
pub fn arm(delay_ms: i32) {
    FIRED.store(false, Ordering::Relaxed);
    let id = id();
    // SAFETY: schedules SIGALRM for a registered timeout.
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            raw::enable_timeout_after(id, delay_ms.max(1))
        })
    };
    ARMED.with(|a| a.set(true));
}

/// Stops it (at the statement's end).
pub fn disarm() {
    if ARMED.with(|a| a.replace(false)) {
        if let Some(id) = ID.with(Cell::get) {
            // SAFETY: cancels a registered timeout.
            unsafe {
                pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| raw::disable_timeout(id, false))
            };
        }
    }
    FIRED.store(false, Ordering::Relaxed);
}

/// Whether the interval passed since `arm`.
#[inline]
pub fn fired() -> bool {
    FIRED.load(Ordering::Relaxed)
}
