//! The timer behind the `opened` record of `async` mode. A statement is admitted without
//! queueing anything (short statements, the usual case, are recorded once, when they
//! end); if it is still disclosing values `dscsa.audit_flush_interval` later, its opened
//! record is queued then, so that a backend killed during a long statement leaves a trace
//! within that interval. PostgreSQL's timeout machinery (utils/timeout.h, not in pgrx's
//! bindings) runs the handler from SIGALRM: it only sets a flag, read by the next
//! operation.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use pgrx::pg_sys;

/// `USER_TIMEOUT` of PostgreSQL 15's `enum TimeoutId`: "allocate a free user timeout".
const USER_TIMEOUT: i32 = 12;

mod raw {
    unsafe extern "C-unwind" {
        pub fn RegisterTimeout(id: i32, handler: Option<unsafe extern "C" fn()>) -> i32;
    }
}

static FIRED: AtomicBool = AtomicBool::new(false);

/// The registered timeout's id, or -1 before the first statement registers it. Plain
/// statics rather than `thread_local!` (a backend is one thread; a thread-local in a
/// shared library costs a `__tls_get_addr` call per access).
static ID: AtomicI32 = AtomicI32::new(-1);
static ARMED: AtomicBool = AtomicBool::new(false);

/// Runs in the SIGALRM handler: async-signal-safe (one atomic store).
unsafe extern "C" fn on_timeout() {
    FIRED.store(true, Ordering::Relaxed);
}

fn id() -> i32 {
    match ID.load(Ordering::Relaxed) {
        id if id >= 0 => id,
        _ => {
            // SAFETY: registers a handler for the life of the backend (ereports FATAL if
            // the backend has no free user timeout, through the guard).
            let id = unsafe {
                pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                    raw::RegisterTimeout(USER_TIMEOUT, Some(on_timeout))
                })
            };
            ID.store(id, Ordering::Relaxed);
            id
        }
    }
}

/// Starts the timer for the current statement.
pub fn arm(delay_ms: i32) {
    FIRED.store(false, Ordering::Relaxed);
    let id = id();
    // SAFETY: schedules SIGALRM for a registered timeout. Called without pgrx's guard at
    // every admitted statement: it can only fail with FATAL (src/unguarded.rs).
    unsafe { crate::unguarded::enable_timeout_after(id, delay_ms.max(1)) };
    ARMED.store(true, Ordering::Relaxed);
}

/// Stops it (at the statement's end).
pub fn disarm() {
    if ARMED.swap(false, Ordering::Relaxed) {
        let id = ID.load(Ordering::Relaxed);
        if id >= 0 {
            // SAFETY: cancels a registered timeout (unguarded, as in `arm`).
            unsafe { crate::unguarded::disable_timeout(id) };
        }
    }
    FIRED.store(false, Ordering::Relaxed);
}

/// Whether the interval passed since `arm`.
#[inline]
pub fn fired() -> bool {
    FIRED.load(Ordering::Relaxed)
}
