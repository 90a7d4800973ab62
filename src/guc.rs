//! Settings under the reserved `dscsa.` prefix.
//!
//! - `dscsa.kms_command` (superuser only): the KMS hook command; empty means the bundled
//!   development hook with a KEK file in the data directory.
//! - `dscsa.kms_timeout` (superuser only): milliseconds before a hook is killed.
//! - `dscsa.key_name` (any user): the key `dscsa_encrypt` uses.
//! - the audit trail's settings `dscsa.audit*` and `dscsa.alert_*` (docs/AUDIT.md,
//!   "Settings"): superuser or server-wide only; every change of a session-settable one
//!   is itself recorded in the trail (src/audit/mod.rs, `setting_changed`).
//! - `dscsa.blind_index_rewrite` (any user): transparent blind-index lookups
//!   (src/lookup.rs).
//! - `dscsa.backfill_workers` (any user): background workers that help an online
//!   `protect_column`, a `reencrypt` or a `reindex_blind` (src/backfill/).
//! - `dscsa.gs1_validation` (superuser only, recorded like the audit settings) and
//!   `dscsa.identifier_index_key` (any user): docs/GS1.md.

use std::ffi::{c_char, c_void, CStr, CString};

use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};

pub static KMS_COMMAND: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static KMS_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// When the record of a decrypting statement is durable (docs/AUDIT.md, "Durability").
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Durability {
    /// The statement's "opened" record is committed to the trail before its first
    /// plaintext leaves the server.
    #[name = c"sync"]
    Sync,
    /// Records reach the trail within dscsa.audit_flush_interval.
    #[name = c"async"]
    Async,
}

pub static AUDIT: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static AUDIT_DURABILITY: GucSetting<Durability> =
    GucSetting::<Durability>::new(Durability::Async);
pub static AUDIT_STATEMENT_TEXT: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static AUDIT_SYNC_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);
pub static AUDIT_DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
pub static AUDIT_QUEUE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(8_192);
pub static KEY_CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(256);
pub static KEY_CACHE_TTL_S: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static KEY_CACHE_MAX_TTL_S: GucSetting<i32> = GucSetting::<i32>::new(3600);
pub static KMS_BREAKER_FAILURES: GucSetting<i32> = GucSetting::<i32>::new(5);
pub static KMS_BREAKER_WINDOW_S: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static KMS_BREAKER_COOLDOWN_S: GucSetting<i32> = GucSetting::<i32>::new(30);
pub static AUDIT_FLUSH_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(200);
pub static AUDIT_ANCHOR_RECORDS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static AUDIT_ANCHOR_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static AUDIT_FORWARD_TO: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static AUDIT_ORIGIN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static ALERT_COMMAND: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static ALERT_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(60);
/// Off stores GS1 fields as given, for legacy data (src/gs1.rs).
pub static GS1_VALIDATION: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Transparent blind-index lookups (src/lookup.rs).
pub static BLIND_INDEX_REWRITE: GucSetting<bool> = GucSetting::<bool>::new(true);
/// The blind-index key of `dscsa.identifier_index` (src/gs1.rs).
/// Background workers that help an online `protect_column` backfill (src/backfill.rs).
pub static BACKFILL_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static IDENTIFIER_INDEX_KEY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"identifier"));

/// Check hooks of the session-settable audit settings: they accept every value the GUC
/// machinery validated and record the change (which only a superuser can make).
macro_rules! recording_check_hook {
    ($name:ident, $setting:literal, $t:ty, $show:expr) => {
        #[pgrx::pg_guard]
        unsafe extern "C-unwind" fn $name(
            newval: *mut $t,
            _extra: *mut *mut c_void,
            source: pg_sys::GucSource::Type,
        ) -> bool {
            let value = *newval;
            crate::audit::setting_changed($setting, source, || ($show)(value));
            true
        }
    };
}

/// A boolean as SHOW spells it.
pub fn on_off(v: bool) -> String {
    if v { "on" } else { "off" }.to_string()
}

recording_check_hook!(check_audit, "dscsa.audit", bool, on_off);
recording_check_hook!(
    check_audit_statement_text,
    "dscsa.audit_statement_text",
    bool,
    on_off
);
recording_check_hook!(
    check_audit_sync_timeout,
    "dscsa.audit_sync_timeout",
    i32,
    |v: i32| v.to_string()
);
recording_check_hook!(
    check_audit_durability,
    "dscsa.audit_durability",
    i32,
    |v: i32| {
        if v == Durability::Sync as i32 {
            "sync".to_string()
        } else {
            "async".to_string()
        }
    }
);

recording_check_hook!(check_gs1_validation, "dscsa.gs1_validation", bool, on_off);

fn define_gs1_gucs() {
    // SAFETY: the check hook is #[pg_guard]ed and only reads its arguments.
    unsafe {
        GucRegistry::define_bool_guc_with_hooks(
            c"dscsa.gs1_validation",
            c"Check GTIN, serial, lot and expiry against the GS1 rules where they are encrypted.",
            c"Off stores legacy values as they are (superuser only; every change is recorded in the audit trail).",
            &GS1_VALIDATION,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_gs1_validation),
            None,
            None,
        );
    }
    GucRegistry::define_bool_guc(
        c"dscsa.blind_index_rewrite",
        c"Let equality comparisons of decrypted protected columns use their blind index.",
        c"The planner adds the blind-index condition a comparison implies and keeps the comparison as a recheck (docs/BLIND_INDEX.md, \"Transparent lookups\"), and spells dscsa.identifier_index_candidates(gtin, serial, key) as one slot per key version (docs/GS1.md). Off plans queries as written.",
        &BLIND_INDEX_REWRITE,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"dscsa.identifier_index_key",
        c"Blind-index key that dscsa.identifier_index() uses.",
        c"The session must have loaded it with dscsa.load_key() and hold blind_index on it.",
        &IDENTIFIER_INDEX_KEY,
        GucContext::Userset,
        GucFlags::default(),
    );
}

fn define_audit_gucs() {
    // SAFETY: the hooks are #[pg_guard]ed and only read their arguments.
    unsafe {
        GucRegistry::define_bool_guc_with_hooks(
            c"dscsa.audit",
            c"Records every cryptographic operation in the audit trail; off only by a superuser.",
            c"With on (the default), decryption refuses (SQLSTATE SA001) when the trail cannot take its record. Every change is itself recorded. See docs/AUDIT.md.",
            &AUDIT,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_audit),
            None,
            None,
        );
        GucRegistry::define_enum_guc_with_hooks(
            c"dscsa.audit_durability",
            c"sync: a decrypting statement's record is committed before its first plaintext leaves; async: within dscsa.audit_flush_interval.",
            c"",
            &AUDIT_DURABILITY,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_audit_durability),
            None,
            None,
        );
        GucRegistry::define_bool_guc_with_hooks(
            c"dscsa.audit_statement_text",
            c"Records the text of audited statements (it can contain plaintext literals).",
            c"",
            &AUDIT_STATEMENT_TEXT,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_audit_statement_text),
            None,
            None,
        );
        GucRegistry::define_int_guc_with_hooks(
            c"dscsa.audit_sync_timeout",
            c"Milliseconds a decrypting statement waits for its record in sync durability before refusing.",
            c"",
            &AUDIT_SYNC_TIMEOUT_MS,
            10,
            600_000,
            GucContext::Suset,
            GucFlags::UNIT_MS,
            Some(check_audit_sync_timeout),
            None,
            None,
        );
    }
    // Settings that take effect at server start exist only when pg_dscsa is preloaded:
    // PostgreSQL refuses to define them later (a session that loads the library on
    // demand has no audit worker or queue to configure anyway).
    // SAFETY: reads a postmaster global.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_string_guc(
            c"dscsa.audit_database",
            c"The database whose dscsa.audit_log holds the cluster's audit trail.",
            c"pg_dscsa must be installed there; the background worker connects to it.",
            &AUDIT_DATABASE,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"dscsa.audit_queue_size",
            c"Audit events the shared-memory queue holds (4 kB each) before decryption is refused.",
            c"",
            &AUDIT_QUEUE_SIZE,
            64,
            1_048_576,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"dscsa.key_cache_size",
            c"Unwrapped keys the cluster's key cache holds (0: no shared cache).",
            c"Sessions reuse keys unwrapped by others instead of running the KMS hook; privileges are still checked per session.",
            &KEY_CACHE_SIZE,
            0,
            65_536,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_string_guc(
            c"dscsa.audit_origin",
            c"Name of this server in the audit trail (empty: primary, or cluster_name on a standby).",
            c"",
            &AUDIT_ORIGIN,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"dscsa.key_cache_ttl",
        c"Seconds after which a cached key is unwrapped again on its next use (soft TTL).",
        c"If the KMS cannot be reached then, the cached key goes on serving until dscsa.key_cache_max_ttl.",
        &KEY_CACHE_TTL_S,
        0,
        31_536_000,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"dscsa.key_cache_max_ttl",
        c"Seconds an unwrapped key may be used without the KMS confirming it (hard TTL; 0: no cache, no limit).",
        c"Applies to the shared cache and to keys loaded in sessions: past it, a key must be unwrapped again.",
        &KEY_CACHE_MAX_TTL_S,
        0,
        31_536_000,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"dscsa.kms_breaker_failures",
        c"Consecutive KMS failures (unreachable, timed out, throttled) within the window that open the circuit breaker.",
        c"",
        &KMS_BREAKER_FAILURES,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dscsa.kms_breaker_window",
        c"Seconds within which consecutive KMS failures are counted.",
        c"",
        &KMS_BREAKER_WINDOW_S,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"dscsa.kms_breaker_cooldown",
        c"Seconds an open circuit breaker refuses KMS calls before one caller probes the KMS again.",
        c"",
        &KMS_BREAKER_COOLDOWN_S,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"dscsa.audit_flush_interval",
        c"Milliseconds between the audit worker's writes when nothing wakes it sooner.",
        c"",
        &AUDIT_FLUSH_INTERVAL_MS,
        10,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"dscsa.audit_anchor_records",
        c"An anchor (sequence number, chain head, counters) every this many records.",
        c"",
        &AUDIT_ANCHOR_RECORDS,
        1,
        100_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dscsa.audit_anchor_interval",
        c"An anchor at least every this many seconds while records are written.",
        c"",
        &AUDIT_ANCHOR_INTERVAL_S,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"dscsa.audit_forward_to",
        c"On a hot standby: connection string of the primary that receives this server's audit records.",
        c"The role it names needs dscsa_audit_forwarder on the primary. Superuser only: it may hold a password.",
        &AUDIT_FORWARD_TO,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"dscsa.alert_command",
        c"Command the audit worker runs (JSON on stdin) when a tampered value is detected.",
        c"Run by the worker, never by the failing backend, at most once per burst of failures (dscsa.alert_interval).",
        &ALERT_COMMAND,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"dscsa.alert_interval",
        c"Seconds without a tamper detection that end a burst (one alert per burst).",
        c"",
        &ALERT_INTERVAL_S,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

/// `dscsa.key_name` is read on every encryption, so it is a plain C string owned by the
/// GUC machinery rather than a pgrx `GucSetting` (whose `get()` allocates a copy).
static mut KEY_NAME: *mut c_char = std::ptr::null_mut();

pub fn init() {
    define_audit_gucs();
    define_gs1_gucs();
    GucRegistry::define_int_guc(
        c"dscsa.backfill_workers",
        c"Background workers that help an online dscsa.protect_column, a dscsa.reencrypt or a dscsa.reindex_blind.",
        c"Each takes block ranges of the table as the calling session does, as the same user, with the same keys loaded through the KMS hook; 0 works in the calling session alone. Needs pg_dscsa in shared_preload_libraries and free max_worker_processes slots (docs/PROTECT.md, \"Backfill workers\").",
        &BACKFILL_WORKERS,
        0,
        crate::backfill::MAX_WORKERS as i32,
        GucContext::Userset,
        GucFlags::default(),
    );
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
