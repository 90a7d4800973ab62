//! Per-key authorization (docs/SECURITY.md, "Who may use which key").
//!
//! Role-level grants (EXECUTE on `dscsa_encrypt*`, `dscsa_decrypt*`, `dscsa.blind_index`)
//! are the outer fence; `dscsa.grant_key(key, role, privilege)` says which roles may load
//! a key and what for. A loaded key carries the privileges its loader held, and every use
//! checks the one it needs.

use crate::error::{Error, Result};

/// What a role may do with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPrivilege {
    /// Seal new envelopes under a data key.
    Encrypt,
    /// Open envelopes sealed under a data key (or values sealed under an import key).
    Decrypt,
    /// Compute blind indexes with a blind-index key.
    BlindIndex,
}

impl KeyPrivilege {
    pub const ALL: [KeyPrivilege; 3] = [
        KeyPrivilege::Encrypt,
        KeyPrivilege::Decrypt,
        KeyPrivilege::BlindIndex,
    ];

    /// The name used by `dscsa.grant_key` and in `dscsa.key_grants`.
    pub fn name(self) -> &'static str {
        match self {
            KeyPrivilege::Encrypt => "encrypt",
            KeyPrivilege::Decrypt => "decrypt",
            KeyPrivilege::BlindIndex => "blind_index",
        }
    }

    /// The verb used in "permission denied to use key "k" to ..." messages.
    pub fn verb(self) -> &'static str {
        match self {
            KeyPrivilege::Encrypt => "encrypt",
            KeyPrivilege::Decrypt => "decrypt",
            KeyPrivilege::BlindIndex => "compute blind indexes",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "privilege must be one of encrypt, decrypt, blind_index".into(),
                )
            })
    }

    fn bit(self) -> u8 {
        match self {
            KeyPrivilege::Encrypt => 1,
            KeyPrivilege::Decrypt => 2,
            KeyPrivilege::BlindIndex => 4,
        }
    }
}

/// A set of key privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Privileges(u8);

impl Privileges {
    pub const NONE: Privileges = Privileges(0);
    pub const ALL: Privileges = Privileges(7);

    pub fn with(self, p: KeyPrivilege) -> Self {
        Privileges(self.0 | p.bit())
    }

    pub fn has(self, p: KeyPrivilege) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses the privilege names read from `dscsa.key_grants`; unknown names are an
    /// internal error (the table's CHECK constraint allows only the three).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        names.into_iter().try_fold(Privileges::NONE, |acc, n| {
            Ok(acc.with(KeyPrivilege::parse(n)?))
        })
    }

    /// Checks `p`, naming the key in the error.
    pub fn require(self, p: KeyPrivilege, key: &str) -> Result<()> {
        if self.has(p) {
            Ok(())
        } else {
            Err(Error::KeyPermissionDenied {
                key: key.to_string(),
                privilege: p.verb(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for p in KeyPrivilege::ALL {
            assert_eq!(KeyPrivilege::parse(p.name()), Ok(p));
        }
        assert!(KeyPrivilege::parse("ENCRYPT").is_err());
        assert!(KeyPrivilege::parse("read").is_err());
    }

    #[test]
    fn sets_hold_exactly_what_was_added() {
        let s = Privileges::from_names(["decrypt", "blind_index"]).expect("names");
        assert!(s.has(KeyPrivilege::Decrypt));
        assert!(s.has(KeyPrivilege::BlindIndex));
        assert!(!s.has(KeyPrivilege::Encrypt));
        assert!(Privileges::NONE.is_empty());
        for p in KeyPrivilege::ALL {
            assert!(Privileges::ALL.has(p));
            assert!(!Privileges::NONE.has(p));
        }
        assert!(Privileges::from_names(["decrypt", "drop"]).is_err());
    }

    #[test]
    fn a_missing_privilege_is_42501_naming_the_key_not_a_value() {
        let err = Privileges::NONE
            .require(KeyPrivilege::Decrypt, "mfr_key")
            .expect_err("denied");
        assert_eq!(err.sqlstate().code(), "42501");
        assert_eq!(
            err.to_string(),
            "permission denied to use key \"mfr_key\" to decrypt"
        );
        assert!(Privileges::ALL
            .require(KeyPrivilege::Encrypt, "mfr_key")
            .is_ok());
    }
}
