//! Blind indexes: a keyed HMAC-SHA-256 of a normalized field value, stored beside the
//! ciphertext so that equality lookups, IN lists, joins and UNIQUE constraints work on
//! encrypted columns without decrypting them (docs/BLIND_INDEX.md).
//!
//! Output (blind index format 1): the 4-byte big-endian key id of the HMAC key version,
//! then the first `length` bytes of
//!
//! ```text
//! HMAC-SHA-256(key, "pg_dscsa blind index 1" || 0x00 || kind byte || normalized value)
//! ```
//!
//! The key id prefix lets a column hold values of two key versions while the blind-index
//! key is rotated: a lookup asks for the value under every loaded version. The field kind
//! is part of the input so that a serial and a lot with the same characters do not share
//! an index value. HMAC is the RustCrypto `hmac` crate; nothing here is hand-rolled.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::cipher::KEY_LEN;
use crate::envelope::FieldKind;
use crate::error::{Error, Result};
use crate::gs1::Gs1Error;

const DOMAIN: &[u8] = b"pg_dscsa blind index 1\0";
/// Shortest truncation allowed: 8 bytes (64 bits). See docs/BLIND_INDEX.md for choosing.
pub const MIN_LENGTH: usize = 8;
/// Longest: the whole SHA-256 output.
pub const MAX_LENGTH: usize = 32;
/// Bytes of key id before the MAC.
pub const PREFIX_LEN: usize = 4;

/// One version of a blind-index key: the HMAC state keyed with it and fed the domain
/// prefix, computed once (keying HMAC-SHA-256 costs two of the four SHA-256 blocks of a
/// blind index), cloned for each value. The state is as secret as the key itself; it is
/// zeroized on drop, and the raw key is not kept.
pub struct BlindIndexKey {
    keyed: KeyedMac,
    length: usize,
}

/// `HMAC(key, DOMAIN || ...)` before the kind byte and the value.
struct KeyedMac(Hmac<Sha256>);

// zeroize_flat_type below needs a state without heap data or Drop impls of its own (the
// RustCrypto HMAC and SHA-256 states are arrays and counters); fail the build if a new
// version of the crates changes that.
const _: () = assert!(!std::mem::needs_drop::<Hmac<Sha256>>());

impl Drop for KeyedMac {
    fn drop(&mut self) {
        // SAFETY: Hmac<Sha256> is plain data (checked above: no Drop glue, so no heap
        // pointers it would free), all-zero bytes are valid for its integer arrays and
        // counters, and it is not used after this.
        unsafe { zeroize::zeroize_flat_type(&mut self.0 as *mut Hmac<Sha256>) }
    }
}

impl std::fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlindIndexKey(<redacted>, length {})", self.length)
    }
}

pub fn check_length(length: usize) -> Result<()> {
    if !(MIN_LENGTH..=MAX_LENGTH).contains(&length) {
        return Err(Error::InvalidArgument(format!(
            "blind index length must be {MIN_LENGTH} to {MAX_LENGTH} bytes"
        )));
    }
    Ok(())
}

impl BlindIndexKey {
    pub fn from_bytes(bytes: &[u8], length: usize) -> Result<Self> {
        check_length(length)?;
        if bytes.len() != KEY_LEN {
            return Err(Error::BadKeyLength(bytes.len()));
        }
        // new_from_slice accepts any key length for HMAC; 32 bytes never fails.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(bytes) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(DOMAIN);
        Ok(BlindIndexKey {
            keyed: KeyedMac(mac),
            length,
        })
    }

    /// The blind index of `value` (already normalized by the caller or not: this
    /// normalizes it) under this key version.
    pub fn compute(&self, key_id: u32, kind: FieldKind, value: &str) -> Vec<u8> {
        self.mac(key_id, kind as u8, normalize(kind, value).as_bytes())
    }

    /// The product-identifier blind index of one unit: the HMAC of its canonical pair
    /// (GTIN-14, serial number), so that DSCSA's rule "a serial is unique within its GTIN"
    /// can be a UNIQUE constraint on encrypted data and every spelling of the unit finds
    /// it. Take the pair from [`identifier_pair`] or [`crate::gs1::parse_identifier`].
    /// The GTIN-14 is always 14 digits, so `gtin14 || serial` is unambiguous.
    pub fn compute_identifier(&self, key_id: u32, pair: &IdentifierPair) -> Vec<u8> {
        self.mac_parts(
            key_id,
            IDENTIFIER_PAIR,
            &[pair.gtin14.as_bytes(), pair.serial.as_bytes()],
        )
    }

    /// `key id || HMAC(key, DOMAIN || kind byte || input)[..length]`.
    fn mac(&self, key_id: u32, kind_byte: u8, input: &[u8]) -> Vec<u8> {
        self.mac_parts(key_id, kind_byte, &[input])
    }

    /// As `mac`, with the input given in parts (hashed as their concatenation).
    fn mac_parts(&self, key_id: u32, kind_byte: u8, input: &[&[u8]]) -> Vec<u8> {
        let mut mac = self.keyed.0.clone();
        mac.update(&[kind_byte]);
        for part in input {
            mac.update(part);
        }
        let tag = mac.finalize().into_bytes();
        let mut out = Vec::with_capacity(PREFIX_LEN + self.length);
        out.extend_from_slice(&key_id.to_be_bytes());
        out.extend_from_slice(&tag[..self.length]);
        out
    }
}

/// The kind byte of a product-identifier pair in the HMAC input: outside the envelope's
/// field kinds (0-4), so that a pair never shares an index value with a single field.
pub const IDENTIFIER_PAIR: u8 = 0x10;

/// One unit's canonical product identifier: GTIN-14 and decoded serial number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifierPair {
    pub gtin14: String,
    pub serial: String,
}

/// The canonical pair of a GTIN (8, 12, 13 or 14 digits with a correct check digit) and
/// a serial number (1-20 characters of CSET 82). Always validated: an index over invalid
/// identifiers would not find the unit by its other spellings.
pub fn identifier_pair(gtin: &str, serial: &str) -> std::result::Result<IdentifierPair, Gs1Error> {
    let gtin14 = crate::gs1::gtin14(gtin)?;
    crate::gs1::cset82(serial, crate::gs1::Field::Serial)?;
    Ok(IdentifierPair {
        gtin14,
        serial: serial.to_owned(),
    })
}

/// The canonical pair of a unit written in any spelling [`crate::gs1::parse_identifier`]
/// reads; the spelling must carry a serial number.
pub fn identifier_pair_of(text: &str) -> std::result::Result<IdentifierPair, Gs1Error> {
    let pi = crate::gs1::parse_identifier(text)?;
    Ok(IdentifierPair {
        gtin14: pi.gtin14,
        serial: pi.serial.ok_or(Gs1Error::NoSerial)?,
    })
}

/// The key id a blind index value was computed under.
pub fn key_id_of(index: &[u8]) -> Option<u32> {
    let prefix: [u8; PREFIX_LEN] = index.get(..PREFIX_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix))
}

/// Normalization before hashing, so that equal identifiers written differently match:
/// - every kind: surrounding ASCII whitespace is removed (no GS1 character set allows it);
/// - gtin: an all-digit GTIN-8, -12 or -13 is left-padded with zeros to GTIN-14 (GS1's
///   own rule for comparing GTINs);
/// - expiry: an ISO date `YYYY-MM-DD` becomes GS1 `YYMMDD` (the form VRS requests use).
///
/// Serial numbers and lots stay case-sensitive: GS1 AI (21) and (10) are.
pub fn normalize(kind: FieldKind, value: &str) -> Cow<'_, str> {
    let trimmed = value.trim_matches(|c: char| c.is_ascii_whitespace());
    match kind {
        FieldKind::Gtin
            if matches!(trimmed.len(), 8 | 12 | 13)
                && trimmed.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Cow::Owned(crate::gs1::zero_padded_14(trimmed))
        }
        FieldKind::Expiry if is_iso_date(trimmed) => {
            // YYYY-MM-DD (ASCII digits, checked above) as YYMMDD, built by hand rather
            // than with format!: a VRS request normalizes an expiry at every lookup.
            let mut yymmdd = String::with_capacity(6);
            for part in [&trimmed[2..4], &trimmed[5..7], &trimmed[8..10]] {
                yymmdd.push_str(part);
            }
            Cow::Owned(yymmdd)
        }
        _ => Cow::Borrowed(trimmed),
    }
}

fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8, length: usize) -> BlindIndexKey {
        BlindIndexKey::from_bytes(&[byte; 32], length).expect("key")
    }

    #[test]
    fn deterministic_prefixed_and_truncated() {
        let k = key(1, 16);
        let a = k.compute(7, FieldKind::Serial, "ABC123");
        assert_eq!(a.len(), 20);
        assert_eq!(key_id_of(&a), Some(7));
        assert_eq!(a, k.compute(7, FieldKind::Serial, "ABC123"));
        assert_ne!(a, k.compute(7, FieldKind::Serial, "ABC124"));
        assert_ne!(a, k.compute(7, FieldKind::Lot, "ABC123"), "kind separates");
        assert_ne!(
            a[4..],
            key(2, 16).compute(7, FieldKind::Serial, "ABC123")[4..]
        );
        assert_ne!(a, k.compute(8, FieldKind::Serial, "ABC123"));
        assert_eq!(key(1, 8).compute(7, FieldKind::Serial, "x").len(), 12);
        assert_eq!(
            key(1, 8).compute(7, FieldKind::Serial, "x")[4..],
            key(1, 32).compute(7, FieldKind::Serial, "x")[4..12],
            "truncation is a prefix of the full MAC"
        );
    }

    /// HMAC-SHA-256 from sha2 alone (RFC 2104): H((K ^ opad) || H((K ^ ipad) || m)).
    fn rfc_hmac(k: &[u8; 32], msg: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for i in 0..32 {
            ipad[i] ^= k[i];
            opad[i] ^= k[i];
        }
        let inner = Sha256::new()
            .chain_update(ipad)
            .chain_update(msg)
            .finalize();
        Sha256::new()
            .chain_update(opad)
            .chain_update(inner)
            .finalize()
            .to_vec()
    }

    #[test]
    fn matches_rfc_hmac_definition() {
        // Independent of the hmac crate and of the keyed state kept in the key.
        let k = [9u8; 32];
        let mut msg = DOMAIN.to_vec();
        msg.push(FieldKind::Serial as u8);
        msg.extend_from_slice(b"S1");
        let ours = key(9, 32).compute(1, FieldKind::Serial, "S1");
        assert_eq!(&ours[4..], &rfc_hmac(&k, &msg)[..]);
    }

    #[test]
    fn one_key_reused_for_many_values_keeps_nothing_between_them() {
        // The keyed state is cloned per value: each result must be the HMAC of that value
        // alone, whatever was computed before it (including longer values, whose bytes
        // would show if a buffer were shared), in any order.
        let k = [0xa5u8; 32];
        let bk = key(0xa5, 32);
        let values: Vec<String> = (0..200)
            .map(|i| "S".repeat(1 + (i * 37) % 90) + &i.to_string())
            .collect();
        for pass in 0..2 {
            for (i, v) in values.iter().enumerate() {
                let v = if pass == 0 {
                    v
                } else {
                    &values[values.len() - 1 - i]
                };
                let kind = if i % 2 == 0 {
                    FieldKind::Serial
                } else {
                    FieldKind::Generic
                };
                let mut msg = DOMAIN.to_vec();
                msg.push(kind as u8);
                msg.extend_from_slice(v.as_bytes());
                assert_eq!(&bk.compute(3, kind, v)[4..], &rfc_hmac(&k, &msg)[..], "{v}");
            }
        }
    }

    #[test]
    fn normalization() {
        assert_eq!(
            normalize(FieldKind::Gtin, " 0361414123452 "),
            "00361414123452"
        );
        assert_eq!(normalize(FieldKind::Gtin, "12345670"), "00000012345670");
        assert_eq!(
            normalize(FieldKind::Gtin, "00361414123452"),
            "00361414123452"
        );
        assert_eq!(normalize(FieldKind::Gtin, "ABC"), "ABC");
        assert_eq!(normalize(FieldKind::Expiry, "2027-03-31"), "270331");
        assert_eq!(normalize(FieldKind::Expiry, "270331"), "270331");
        assert_eq!(normalize(FieldKind::Serial, " abc "), "abc");
        assert_eq!(normalize(FieldKind::Serial, "ABC"), "ABC");
        let k = key(3, 16);
        assert_eq!(
            k.compute(1, FieldKind::Gtin, "361414123452"),
            k.compute(1, FieldKind::Gtin, "00361414123452")
        );
    }

    #[test]
    fn lengths_are_checked() {
        assert!(BlindIndexKey::from_bytes(&[0; 32], 7).is_err());
        assert!(BlindIndexKey::from_bytes(&[0; 32], 33).is_err());
        assert!(BlindIndexKey::from_bytes(&[0; 31], 16).is_err());
        assert_eq!(key_id_of(&[0, 0, 1]), None);
    }
}
