//! Turns core errors into PostgreSQL errors with the right SQLSTATE, message and hint.
//! Messages come from `dscsa_core::Error`, which never carries key bytes or plaintext.

use std::cell::Cell;
use std::ffi::{c_char, c_int, CString};

use dscsa_core::{Error, SqlState};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

fn pg_code(state: SqlState) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match state {
        // Outside a function that can report pg_dscsa's own codes (see below), the
        // nearest standard one.
        SqlState::AuditUnavailable | SqlState::KmsUnavailable | SqlState::KeyExpired => {
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
        }
        SqlState::ObjectInUse => ERRCODE_OBJECT_IN_USE,
        SqlState::InvalidTextRepresentation => ERRCODE_INVALID_TEXT_REPRESENTATION,
        SqlState::InvalidParameterValue => ERRCODE_INVALID_PARAMETER_VALUE,
        SqlState::ProgramLimitExceeded => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        SqlState::DataCorrupted => ERRCODE_DATA_CORRUPTED,
        SqlState::ObjectNotInPrerequisiteState => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        SqlState::UndefinedObject => ERRCODE_UNDEFINED_OBJECT,
        SqlState::ExternalRoutineException => ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
        SqlState::CharacterNotInRepertoire => ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
        SqlState::SystemError => ERRCODE_SYSTEM_ERROR,
        SqlState::InsufficientPrivilege => ERRCODE_INSUFFICIENT_PRIVILEGE,
        SqlState::TriggerProtocolViolated => ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
        SqlState::InternalError => ERRCODE_INTERNAL_ERROR,
    }
}

fn hint(err: &Error) -> Option<String> {
    match err {
        Error::MalformedEnvelope(_) | Error::UnsupportedVersion(_) | Error::UnknownFieldKind(_) => Some(
            "Encrypted values are made by dscsa_encrypt() and print as dscsa:...; plaintext cannot be stored as dscsa.encrypted."
                .into(),
        ),
        Error::AuthenticationFailed => Some(
            "The value was modified, or it is decrypted with another key, context or field kind than it was encrypted with. dscsa_try_decrypt() returns NULL instead."
                .into(),
        ),
        Error::KeyNotInKeyring(_) => Some(
            "The value was modified, or it was copied from a database whose keyring was not restored with it."
                .into(),
        ),
        Error::KeyVersionNotLoaded(_) => {
            Some("Load the key this value was encrypted with: SELECT dscsa.load_key('key name');".into())
        }
        Error::NoActiveKeyLoaded(name) => Some(format!(
            "Run SELECT dscsa.load_key('{name}'); or SET dscsa.key_name to a loaded key."
        )),
        Error::UnknownKey(_) => Some("Create it with SELECT dscsa.create_key('key name');".into()),
        Error::KeyPermissionDenied { key, .. } => Some(format!(
            "A key administrator grants it with SELECT dscsa.grant_key('{key}', '<role>', '<privilege>'); see dscsa.keys for the keys this role may use."
        )),
        Error::KeyLoadedByOtherRole(key) => Some(format!(
            "Keys are bound to the role that loaded them; load it again as this role: SELECT dscsa.load_key('{key}');"
        )),
        Error::AuditUnavailable(_) => Some(
            "Decryptions are recorded in the audit trail (docs/AUDIT.md): pg_dscsa must be in shared_preload_libraries and its background worker running (see dscsa.audit_status()); a superuser can set dscsa.audit = off."
                .into(),
        ),
        Error::InUse(_) => Some(
            "Export the trail with dscsa.audit_export(), then drop its monthly partitions (dscsa.audit_log_YYYYMM) before dropping the extension."
                .into(),
        ),
        Error::KmsUnavailable { .. } => Some(
            "The KMS hook failed repeatedly; SELECT * FROM dscsa.kms_status shows the last failure. Keys already loaded or in the key cache keep working until dscsa.key_cache_max_ttl; the KMS is probed again after dscsa.kms_breaker_cooldown."
                .into(),
        ),
        Error::KeyExpired { .. } => Some(
            "Keys must be confirmed by the KMS every dscsa.key_cache_max_ttl; once the KMS answers again (dscsa.kms_status), the next statement unwraps the key again."
                .into(),
        ),
        Error::Gs1(_) => Some(
            "Count the rows that break each rule with dscsa.gs1_problems(table, column, kind); a superuser can SET dscsa.gs1_validation = off to store legacy values as they are.".into(),
        ),
        Error::Kms(_) | Error::KeyCheckFailed(_) => Some(
            "Check dscsa.kms_command and the hook's own log; the protocol is in docs/KMS.md.".into(),
        ),
        _ => None,
    }
}

/// An error with one of pg_dscsa's own SQLSTATEs (classes SA, SK), which pgrx's error path
/// cannot carry (it knows the standard codes only): unwound as a panic to the V1
/// function that called into Rust, and reported there (`with_custom_sqlstates`).
struct CustomError {
    sqlstate: [u8; 5],
    message: CString,
    hint: CString,
}

thread_local! {
    /// How many `with_custom_sqlstates` frames are active.
    static CUSTOM_FRAMES: Cell<u32> = const { Cell::new(0) };
}

struct CustomFrame;

impl CustomFrame {
    fn enter() -> CustomFrame {
        CUSTOM_FRAMES.with(|c| c.set(c.get() + 1));
        CustomFrame
    }
}

impl Drop for CustomFrame {
    fn drop(&mut self) {
        CUSTOM_FRAMES.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

thread_local! {
    /// A custom-coded error caught in a V1 function, to be reported by its outer frame.
    static PENDING: std::cell::RefCell<Option<CustomError>> = const { std::cell::RefCell::new(None) };
}

/// Runs the body of a V1 function. An error with one of pg_dscsa's own SQLSTATEs is kept
/// aside (the function returns a dummy value) for `report_pending_custom`; every other
/// error or panic passes through unchanged to pgrx's guard around the body.
pub fn with_custom_sqlstates(f: impl FnOnce() -> pg_sys::Datum) -> pg_sys::Datum {
    let caught = {
        let _frame = CustomFrame::enter();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
    };
    match caught {
        Ok(datum) => datum,
        Err(payload) => match payload.downcast::<CustomError>() {
            Ok(custom) => {
                PENDING.with(|p| *p.borrow_mut() = Some(*custom));
                pg_sys::Datum::from(0)
            }
            Err(other) => std::panic::resume_unwind(other),
        },
    }
}

/// Called by a V1 function's outermost frame (no pgrx guard, nothing to drop) after its
/// guarded body returned: reports a pending custom-coded error, if any.
pub fn report_pending_custom() {
    if let Some(e) = PENDING.with(|p| p.borrow_mut().take()) {
        report_custom(e);
    }
}

/// Reports a custom-coded ERROR with PostgreSQL's own ereport calls (the expansion of
/// `ereport(ERROR, ...)`), so that the code reaches the client and PL/pgSQL handlers.
/// The strings are copied to palloc'd memory and every Rust value dropped before
/// errfinish, which does not return.
fn report_custom(e: CustomError) -> ! {
    extern "C-unwind" {
        fn errstart(elevel: c_int, domain: *const c_char) -> bool;
        fn errcode(sqlerrcode: c_int) -> c_int;
        fn errmsg_internal(fmt: *const c_char, ...) -> c_int;
        fn errhint(fmt: *const c_char, ...) -> c_int;
        fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
    }
    let sixbit = |c: u8| (i32::from(c) - i32::from(b'0')) & 0x3F;
    let code = e
        .sqlstate
        .iter()
        .enumerate()
        .fold(0, |acc, (i, c)| acc + (sixbit(*c) << (6 * i)));
    // SAFETY: pstrdup copies into the current memory context; the ereport sequence is the
    // expansion of ereport(ERROR, ...), which longjmps to PostgreSQL's error handler.
    unsafe {
        let message = pg_sys::pstrdup(e.message.as_ptr());
        let hint = pg_sys::pstrdup(e.hint.as_ptr());
        drop(e);
        if errstart(PgLogLevel::ERROR as c_int, c"pg_dscsa".as_ptr()) {
            errcode(code);
            errmsg_internal(c"%s".as_ptr(), message);
            errhint(c"%s".as_ptr(), hint);
            errfinish(c"pg_dscsa".as_ptr(), 0, c"pg_dscsa".as_ptr());
        }
    }
    unreachable!("ERROR reports do not return")
}

/// Raises `err` as an ERROR. Unwinds (pgrx turns it into ereport at the boundary), so
/// every zeroizing destructor on the way runs.
#[track_caller]
pub fn raise(err: Error) -> ! {
    let state = err.sqlstate();
    if (state.code().starts_with("SA") || state.code().starts_with("SK"))
        && CUSTOM_FRAMES.with(Cell::get) > 0
    {
        let bytes = state.code().as_bytes();
        let custom = CustomError {
            sqlstate: [bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]],
            message: CString::new(err.to_string()).unwrap_or_default(),
            hint: CString::new(hint(&err).unwrap_or_default()).unwrap_or_default(),
        };
        std::panic::panic_any(custom);
    }
    let mut report = ErrorReport::new(pg_code(err.sqlstate()), err.to_string(), "pg_dscsa");
    if let Some(h) = hint(&err) {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR reports do not return")
}

pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, Error> {
    #[track_caller]
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise(e),
        }
    }
}
