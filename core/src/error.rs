//! Typed errors of the core, each mapped to the SQLSTATE the extension raises.
//!
//! Messages never contain key bytes or plaintext: they name lengths, versions and
//! key identifiers at most. The pgrx layer turns `Error::sqlstate()` into the report.

/// The SQLSTATE classes pg_dscsa raises (the table is in the README's "Errors" section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlState {
    /// 22P02 invalid_text_representation: not a well-formed envelope.
    InvalidTextRepresentation,
    /// 22023 invalid_parameter_value: a bad argument (context, scope, name).
    InvalidParameterValue,
    /// 54000 program_limit_exceeded: plaintext or context above the documented maximum.
    ProgramLimitExceeded,
    /// XX001 data_corrupted: GCM authentication failed (tampered, wrong key or wrong context).
    DataCorrupted,
    /// 55000 object_not_in_prerequisite_state: the key is not loaded in this session.
    ObjectNotInPrerequisiteState,
    /// 42704 undefined_object: no such key or key version in the keyring.
    UndefinedObject,
    /// 38000 external_routine_exception: the KMS hook failed, hung or answered garbage.
    ExternalRoutineException,
    /// 22021 character_not_in_repertoire: decrypted bytes are not valid text.
    CharacterNotInRepertoire,
    /// 58000 system_error: the operating system's random source failed.
    SystemError,
    /// 42501 insufficient_privilege: the role may not use this key for this, or the key
    /// was loaded by a role the current role is not a member of.
    InsufficientPrivilege,
    /// 39P01 trigger_protocol_violated: a pg_dscsa trigger function attached wrongly.
    TriggerProtocolViolated,
    /// XX000 internal_error: a bug or a broken installation, never user input.
    InternalError,
    /// 55006 object_in_use: an object is still needed (the audit trail blocks a drop).
    ObjectInUse,
    /// SA001 (pg_dscsa's own class SA): the audit trail cannot take a record, so the
    /// operation that needs one is refused.
    AuditUnavailable,
    /// SK001 (class SK, key management): the KMS is taken to be down (the circuit
    /// breaker is open), so an operation that needs the hook fails at once.
    KmsUnavailable,
    /// SK002: a key's time without the KMS ran out (dscsa.key_cache_max_ttl) and it could
    /// not be unwrapped again.
    KeyExpired,
}

impl SqlState {
    /// The five-character code, for documentation and tests.
    pub fn code(self) -> &'static str {
        match self {
            SqlState::InvalidTextRepresentation => "22P02",
            SqlState::InvalidParameterValue => "22023",
            SqlState::ProgramLimitExceeded => "54000",
            SqlState::DataCorrupted => "XX001",
            SqlState::ObjectNotInPrerequisiteState => "55000",
            SqlState::UndefinedObject => "42704",
            SqlState::ExternalRoutineException => "38000",
            SqlState::CharacterNotInRepertoire => "22021",
            SqlState::SystemError => "58000",
            SqlState::InsufficientPrivilege => "42501",
            SqlState::TriggerProtocolViolated => "39P01",
            SqlState::InternalError => "XX000",
            SqlState::ObjectInUse => "55006",
            SqlState::AuditUnavailable => "SA001",
            SqlState::KmsUnavailable => "SK001",
            SqlState::KeyExpired => "SK002",
        }
    }
}

/// Every failure the core can report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("malformed pg_dscsa envelope: {0}")]
    MalformedEnvelope(&'static str),
    #[error("unsupported pg_dscsa envelope version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown pg_dscsa field kind {0}")]
    UnknownFieldKind(u8),
    #[error("pg_dscsa value is a {found} ciphertext, not a {expected} ciphertext")]
    FieldKindMismatch {
        expected: &'static str,
        found: &'static str,
    },
    #[error("ciphertext authentication failed")]
    AuthenticationFailed,
    #[error("plaintext is {len} bytes, more than the maximum of {max} bytes")]
    PlaintextTooLong { len: usize, max: usize },
    #[error("context is {len} bytes, more than the maximum of {max} bytes")]
    ContextTooLong { len: usize, max: usize },
    #[error("a data key must be exactly 32 bytes, got {0}")]
    BadKeyLength(usize),
    #[error("KMS hook failed: {0}")]
    Kms(String),
    #[error("the operating system random source failed: {0}")]
    RandomSource(String),
    #[error("key id {0} that this value was encrypted with is not loaded in this session")]
    KeyVersionNotLoaded(u32),
    #[error("ciphertext names key id {0}, which is not in this database's keyring")]
    KeyNotInKeyring(u32),
    #[error("no active version of key \"{0}\" is loaded in this session")]
    NoActiveKeyLoaded(String),
    #[error("key \"{0}\" does not exist or has no usable version")]
    UnknownKey(String),
    #[error("the KMS hook returned a data key for key id {0} that does not match the keyring's key check value")]
    KeyCheckFailed(u32),
    #[error("{0}")]
    InvalidArgument(String),
    /// A GS1 rule an identifier breaks; names the rule, never the value.
    #[error("GS1 validation failed: {0}")]
    Gs1(#[from] crate::gs1::Gs1Error),
    #[error("decrypted value is not valid in the database encoding")]
    InvalidTextEncoding,
    #[error("permission denied to use key \"{key}\" to {privilege}")]
    KeyPermissionDenied {
        key: String,
        privilege: &'static str,
    },
    #[error("key \"{0}\" was loaded by another role, whose rights on it do not cover this use by the current role")]
    KeyLoadedByOtherRole(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("pg_dscsa trigger misused: {0}")]
    TriggerProtocol(String),
    #[error("pg_dscsa internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    InUse(String),
    #[error("the audit trail cannot take a record: {0}")]
    AuditUnavailable(String),
    #[error("the KMS ({provider}) is unavailable: {reason}")]
    KmsUnavailable { provider: String, reason: String },
    #[error("key \"{name}\" version {version} expired {expired_s} s ago (dscsa.key_cache_max_ttl) and could not be unwrapped again: {reason}")]
    KeyExpired {
        name: String,
        version: i32,
        expired_s: i64,
        reason: String,
    },
}

impl Error {
    pub fn sqlstate(&self) -> SqlState {
        match self {
            Error::MalformedEnvelope(_)
            | Error::UnsupportedVersion(_)
            | Error::UnknownFieldKind(_) => SqlState::InvalidTextRepresentation,
            Error::FieldKindMismatch { .. } | Error::BadKeyLength(_) => {
                SqlState::InvalidParameterValue
            }
            Error::AuthenticationFailed | Error::KeyNotInKeyring(_) => SqlState::DataCorrupted,
            Error::PlaintextTooLong { .. } | Error::ContextTooLong { .. } => {
                SqlState::ProgramLimitExceeded
            }
            Error::Kms(_) => SqlState::ExternalRoutineException,
            Error::RandomSource(_) => SqlState::SystemError,
            Error::KeyVersionNotLoaded(_) | Error::NoActiveKeyLoaded(_) => {
                SqlState::ObjectNotInPrerequisiteState
            }
            Error::UnknownKey(_) => SqlState::UndefinedObject,
            Error::KeyCheckFailed(_) => SqlState::ExternalRoutineException,
            Error::InvalidArgument(_) | Error::Gs1(_) => SqlState::InvalidParameterValue,
            Error::InvalidTextEncoding => SqlState::CharacterNotInRepertoire,
            Error::KeyPermissionDenied { .. }
            | Error::KeyLoadedByOtherRole(_)
            | Error::PermissionDenied(_) => SqlState::InsufficientPrivilege,
            Error::TriggerProtocol(_) => SqlState::TriggerProtocolViolated,
            Error::Internal(_) => SqlState::InternalError,
            Error::InUse(_) => SqlState::ObjectInUse,
            Error::AuditUnavailable(_) => SqlState::AuditUnavailable,
            Error::KmsUnavailable { .. } => SqlState::KmsUnavailable,
            Error::KeyExpired { .. } => SqlState::KeyExpired,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_documented_sqlstate() {
        let cases = [
            (Error::MalformedEnvelope("x"), "22P02"),
            (Error::UnsupportedVersion(9), "22P02"),
            (Error::AuthenticationFailed, "XX001"),
            (Error::PlaintextTooLong { len: 2, max: 1 }, "54000"),
            (Error::Kms("x".into()), "38000"),
            (Error::KeyVersionNotLoaded(1), "55000"),
            (Error::UnknownKey("k".into()), "42704"),
            (Error::InvalidArgument("x".into()), "22023"),
            (Error::Gs1(crate::gs1::Gs1Error::GtinCheckDigit), "22023"),
            (
                Error::KeyPermissionDenied {
                    key: "k".into(),
                    privilege: "decrypt",
                },
                "42501",
            ),
            (Error::KeyLoadedByOtherRole("k".into()), "42501"),
            (Error::PermissionDenied("x".into()), "42501"),
            (Error::TriggerProtocol("x".into()), "39P01"),
            (Error::Internal("x".into()), "XX000"),
            (Error::InUse("x".into()), "55006"),
            (Error::AuditUnavailable("x".into()), "SA001"),
            (
                Error::KmsUnavailable {
                    provider: "p".into(),
                    reason: "r".into(),
                },
                "SK001",
            ),
            (
                Error::KeyExpired {
                    name: "k".into(),
                    version: 1,
                    expired_s: 1,
                    reason: "r".into(),
                },
                "SK002",
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.sqlstate().code(), code, "{err}");
        }
        assert_eq!(
            Error::AuthenticationFailed.to_string(),
            "ciphertext authentication failed"
        );
    }
}
