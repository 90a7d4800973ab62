//! Settings under the reserved `dscsa.` prefix.
//!
//! - `dscsa.kms_command` (superuser only): the KMS hook command; empty means the bundled
//!   development hook with a KEK file in the data directory.
//! - `dscsa.kms_timeout` (superuser only): milliseconds before a hook is killed.
//! - `dscsa.key_name` (any user): the key `dscsa_encrypt` uses.

use std::ffi::{c_char, CStr, CString};

use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting};

pub static KMS_COMMAND: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static KMS_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// `dscsa.key_name` is read on every encryption, so it is a plain C string owned by the
/// GUC machinery rather than a pgrx `GucSetting` (whose `get()` allocates a copy).
static mut KEY_NAME: *mut c_char = std::ptr::null_mut();

pub fn init() {
    GucRegistry::define_string_guc(
        c"dscsa.kms_command",
        c"Command that wraps and unwraps pg_dscsa data keys (the KMS hook).",
        c"Run through /bin/sh with the request on stdin; see docs/KMS.md. Empty selects the bundled development hook, which keeps its KEK in the data directory and is not for production.",
        &KMS_COMMAND,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"dscsa.kms_timeout",
        c"Milliseconds a KMS hook may run before it is killed.",
        c"",
        &KMS_TIMEOUT_MS,
        100,
        600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    // SAFETY: KEY_NAME lives for the whole process and is only touched by the GUC machinery
    // and `key_name()`, both on the backend's single thread.
    unsafe {
        pg_sys::DefineCustomStringVariable(
            c"dscsa.key_name".as_ptr(),
            c"Name of the key dscsa_encrypt() uses.".as_ptr(),
            c"The session must have loaded it with dscsa.load_key().".as_ptr(),
            &raw mut KEY_NAME,
            c"default".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            0,
            None,
            None,
            None,
        );
        pg_sys::MarkGUCPrefixReserved(c"dscsa".as_ptr());
    }
}

/// Current value of `dscsa.key_name` without copying.
pub fn key_name() -> &'static [u8] {
    // SAFETY: the GUC machinery keeps the pointer valid until the next assignment, which
    // cannot happen while one SQL function call is running.
    unsafe {
        let p = KEY_NAME;
        if p.is_null() {
            b""
        } else {
            CStr::from_ptr(p).to_bytes()
        }
    }
}
