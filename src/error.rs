//! Turns core errors into PostgreSQL errors with the right SQLSTATE, message and hint.
//! Messages come from `dscsa_core::Error`, which never carries key bytes or plaintext.

use dscsa_core::{Error, SqlState};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

fn pg_code(state: SqlState) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match state {
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
        Error::Kms(_) | Error::KeyCheckFailed(_) => Some(
            "Check dscsa.kms_command and the hook's own log; the protocol is in docs/KMS.md.".into(),
        ),
        _ => None,
    }
}

/// Raises `err` as an ERROR. Unwinds (pgrx turns it into ereport at the boundary), so
/// every zeroizing destructor on the way runs.
#[track_caller]
pub fn raise(err: Error) -> ! {
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
