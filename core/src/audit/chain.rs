//! The HMAC chain over audit records (docs/AUDIT.md, "Chain"):
//!
//! ```text
//! mac(n) = HMAC-SHA-256(audit key version mac_key_id(n), canonical_bytes(n) || mac(n-1))
//! mac(0) = 32 zero bytes
//! ```
//!
//! Every record names the audit key version it was made with, so the history still
//! verifies after the audit key is rotated; a record cannot be edited, removed, inserted
//! or moved without breaking the MAC of its own row or of the next one.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::record::Record;

pub const MAC_LEN: usize = 32;
pub const GENESIS: [u8; MAC_LEN] = [0; MAC_LEN];

/// An unwrapped audit key version.
pub struct AuditKey {
    pub key_id: i32,
    key: Zeroizing<Vec<u8>>,
}

impl AuditKey {
    pub fn new(key_id: i32, bytes: &[u8]) -> Self {
        AuditKey {
            key_id,
            key: Zeroizing::new(bytes.to_vec()),
        }
    }

    /// HMAC-SHA-256 of `label || data` under this key (anchor tags).
    pub fn mac_bytes(&self, label: &[u8], data: &[u8]) -> [u8; MAC_LEN] {
        let mut h = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC-SHA-256 accepts keys of any length");
        h.update(label);
        h.update(data);
        h.finalize().into_bytes().into()
    }

    /// The MAC of `record` linked to `prev`.
    pub fn mac(&self, record: &Record, prev: &[u8; MAC_LEN]) -> [u8; MAC_LEN] {
        let mut h = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC-SHA-256 accepts keys of any length");
        h.update(&record.canonical_bytes());
        h.update(prev);
        h.finalize().into_bytes().into()
    }
}

/// A set of audit key versions, found by id.
#[derive(Default)]
pub struct AuditKeys(Vec<AuditKey>);

impl AuditKeys {
    pub fn new() -> Self {
        AuditKeys(Vec::new())
    }

    pub fn add(&mut self, key: AuditKey) {
        self.0.retain(|k| k.key_id != key.key_id);
        self.0.push(key);
    }

    pub fn get(&self, key_id: i32) -> Option<&AuditKey> {
        self.0.iter().find(|k| k.key_id == key_id)
    }

    pub fn ids(&self) -> Vec<i32> {
        self.0.iter().map(|k| k.key_id).collect()
    }
}

/// Lower-case hex, for anchors in the server log and exports.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::Event;
    use hmac::{Hmac, Mac};

    fn rec(seq: i64) -> Record {
        Record {
            seq,
            event: Event {
                ts_micros: seq * 1000,
                origin: "primary".into(),
                record_type: "access".into(),
                operation: "decrypt".into(),
                outcome: "ok".into(),
                count: seq,
                ..Default::default()
            },
            mac_key_id: 3,
        }
    }

    #[test]
    fn mac_is_hmac_sha256_of_the_encoding_and_the_previous_mac() {
        let key = AuditKey::new(3, b"0123456789abcdef0123456789abcdef");
        let r = rec(1);
        let mut h = <Hmac<Sha256> as Mac>::new_from_slice(b"0123456789abcdef0123456789abcdef")
            .expect("key");
        h.update(&r.canonical_bytes());
        h.update(&GENESIS);
        let expected: [u8; 32] = h.finalize().into_bytes().into();
        assert_eq!(key.mac(&r, &GENESIS), expected);
        let other = key.mac(&r, &[1; 32]);
        assert_ne!(other, expected, "the previous MAC is part of the input");
    }

    #[test]
    fn hex_round_trips() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(unhex("0001abff").as_deref(), Some(&b[..]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }
}
