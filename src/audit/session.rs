//! Who and where, for audit records: database, roles, client address, application,
//! backend, statement.

use std::cell::OnceCell;
use std::ffi::CStr;

use dscsa_core::audit::record::Event;
use pgrx::pg_sys;

use crate::guc;

/// What does not change during a backend's life.
struct Fixed {
    dboid: u32,
    database: String,
    client_addr: Option<String>,
    pid: i32,
    backend_start: i64,
}

thread_local! {
    static FIXED: OnceCell<Fixed> = const { OnceCell::new() };
}

fn cstr(p: *const std::ffi::c_char) -> Option<String> {
    // SAFETY: callers pass NUL-terminated strings owned by PostgreSQL (or null).
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

fn fixed<T>(f: impl FnOnce(&Fixed) -> T) -> T {
    FIXED.with(|c| {
        f(c.get_or_init(|| {
            // SAFETY: backend globals set before any SQL runs; get_database_name reads
            // the syscache inside the transaction every audited operation runs in.
            unsafe {
                let dboid = pg_sys::MyDatabaseId;
                // inet_client_addr(): NULL over a Unix socket (and in a worker).
                let client_addr =
                    pgrx::direct_function_call_as_datum(pg_sys::inet_client_addr, &[])
                        .and_then(|inet| {
                            pgrx::direct_function_call_as_datum(pg_sys::inet_out, &[Some(inet)])
                        })
                        .and_then(|text| cstr(text.cast_mut_ptr::<std::ffi::c_char>()))
                        .or_else(|| (!pg_sys::MyProcPort.is_null()).then(|| "[local]".to_string()));
                Fixed {
                    dboid: dboid.to_u32(),
                    database: cstr(pg_sys::get_database_name(dboid)).unwrap_or_default(),
                    client_addr,
                    pid: pg_sys::MyProcPid,
                    backend_start: pg_sys::MyStartTimestamp + super::POSTGRES_EPOCH_UNIX_US,
                }
            }
        }))
    })
}

pub fn database_name() -> String {
    fixed(|f| f.database.clone())
}

/// Calls `f` with this backend's database OID and name (without copying the name).
pub fn with_database<T>(f: impl FnOnce(u32, &str) -> T) -> T {
    fixed(|x| f(x.dboid, &x.database))
}

/// A role's name (its OID in brackets if it was dropped meanwhile).
pub fn role_name(role: u32) -> String {
    // SAFETY: a syscache lookup that does not raise (noerr).
    cstr(unsafe { pg_sys::GetUserNameFromId(pg_sys::Oid::from(role), true) })
        .unwrap_or_else(|| format!("[{role}]"))
}

/// This server's name in the trail.
pub fn origin() -> String {
    let configured = guc::AUDIT_ORIGIN
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !configured.is_empty() {
        return configured;
    }
    // SAFETY: reads shared recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        // SAFETY: cluster_name is a GUC string owned by PostgreSQL.
        let cluster = cstr(unsafe { pg_sys::cluster_name }).unwrap_or_default();
        if cluster.is_empty() {
            "standby".into()
        } else {
            cluster
        }
    } else {
        "primary".into()
    }
}

pub fn now_micros() -> i64 {
    crate::unguarded::now() + super::POSTGRES_EPOCH_UNIX_US
}

/// When the current statement started (microseconds since 1970, UTC).
pub fn statement_start_micros() -> i64 {
    crate::unguarded::statement_start() + super::POSTGRES_EPOCH_UNIX_US
}

/// A new event of this session, stamped now, for the current statement.
pub fn event(record_type: &str, operation: &str, outcome: &str) -> Event {
    // SAFETY: backend globals: the session user, the current user, the application name
    // GUC, the text and query id of the statement being executed.
    let (session_user, current_user, application, statement, query_id) = unsafe {
        let text = if guc::AUDIT_STATEMENT_TEXT.get() {
            cstr(pg_sys::debug_query_string).map(|mut t| {
                // Queue slots are 4 kB; the rest of the record needs some of it.
                if t.len() > 2048 {
                    let mut cut = 2048;
                    while !t.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    t.truncate(cut);
                    t.push_str(" [...]");
                }
                t
            })
        } else {
            None
        };
        let qid = pg_sys::pgstat_get_my_query_id() as i64;
        (
            role_name(pg_sys::GetSessionUserId().to_u32()),
            role_name(pg_sys::GetUserId().to_u32()),
            cstr(pg_sys::application_name),
            text,
            (qid != 0).then_some(qid),
        )
    };
    fixed(|f| Event {
        ts_micros: now_micros(),
        origin: origin(),
        epoch: 0,
        record_type: record_type.into(),
        database: Some(f.database.clone()),
        session_user: Some(session_user),
        current_user: Some(current_user),
        client_addr: f.client_addr.clone(),
        application,
        backend_pid: Some(f.pid),
        backend_start: Some(f.backend_start),
        statement_id: None,
        query_id,
        statement,
        operation: operation.into(),
        key_id: None,
        key_name: None,
        key_version: None,
        field_kind: None,
        context: None,
        outcome: outcome.into(),
        count: 0,
        detail: None,
    })
}
