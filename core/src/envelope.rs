//! Ciphertext envelope, format version 1 (specified in docs/FORMAT.md).
//!
//! ```text
//! offset  size  field
//! 0       1     version      = 0x01
//! 1       1     field kind   (0 generic, 1 GTIN, 2 serial, 3 lot, 4 expiry)
//! 2       4     key id       big-endian u32, the keyring row that holds the data key
//! 6       12    nonce        random, from a CSPRNG
//! 18      n     ciphertext   AES-256-GCM, same length as the plaintext
//! 18+n    16    tag          GCM authentication tag
//! ```
//!
//! Bytes 0..6 (the header) are authenticated as the start of the GCM associated data, so
//! neither the key id nor the field kind can be changed without the tag check failing.

use crate::error::{Error, Result};

pub const VERSION_1: u8 = 0x01;
pub const HEADER_LEN: usize = 6;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Header, nonce and tag: an envelope is this much longer than its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// Largest plaintext accepted (1 MiB). DSCSA fields are at most 20 characters; the limit
/// keeps a runaway value from becoming a huge allocation and is part of the v1 contract.
pub const MAX_PLAINTEXT_LEN: usize = 1 << 20;
/// Largest caller context in bytes.
pub const MAX_CONTEXT_LEN: usize = 255;

/// What a ciphertext holds. Stored in the authenticated header so a serial-number
/// ciphertext can never be accepted, stored or decrypted as a lot, and vice versa.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FieldKind {
    Generic = 0,
    Gtin = 1,
    Serial = 2,
    Lot = 3,
    Expiry = 4,
}

impl FieldKind {
    pub const ALL: [FieldKind; 5] = [
        FieldKind::Generic,
        FieldKind::Gtin,
        FieldKind::Serial,
        FieldKind::Lot,
        FieldKind::Expiry,
    ];

    pub fn from_byte(b: u8) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| *k as u8 == b)
            .ok_or(Error::UnknownFieldKind(b))
    }

    /// The name used in SQL (`dscsa.envelope_info`) and in messages.
    pub fn name(self) -> &'static str {
        match self {
            FieldKind::Generic => "generic",
            FieldKind::Gtin => "gtin",
            FieldKind::Serial => "serial",
            FieldKind::Lot => "lot",
            FieldKind::Expiry => "expiry",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A parsed, structurally valid v1 envelope borrowing the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub kind: FieldKind,
    pub key_id: u32,
    pub header: &'a [u8; HEADER_LEN],
    pub nonce: &'a [u8; NONCE_LEN],
    /// Ciphertext followed by the tag.
    pub sealed: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Checks structure only (version, kind, length); authenticity needs the key.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let (&version, _) = bytes
            .split_first()
            .ok_or(Error::MalformedEnvelope("value is empty"))?;
        if version != VERSION_1 {
            return Err(Error::UnsupportedVersion(version));
        }
        if bytes.len() < OVERHEAD {
            return Err(Error::MalformedEnvelope(
                "value is shorter than header, nonce and tag",
            ));
        }
        if bytes.len() > OVERHEAD + MAX_PLAINTEXT_LEN {
            return Err(Error::MalformedEnvelope(
                "value is longer than the largest envelope",
            ));
        }
        let kind = FieldKind::from_byte(bytes[1])?;
        let header: &[u8; HEADER_LEN] = bytes[..HEADER_LEN]
            .try_into()
            .map_err(|_| Error::MalformedEnvelope("truncated header"))?;
        let nonce: &[u8; NONCE_LEN] = bytes[HEADER_LEN..HEADER_LEN + NONCE_LEN]
            .try_into()
            .map_err(|_| Error::MalformedEnvelope("truncated nonce"))?;
        let key_id = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        Ok(Envelope {
            kind,
            key_id,
            header,
            nonce,
            sealed: &bytes[HEADER_LEN + NONCE_LEN..],
        })
    }

    /// Length of the plaintext this envelope decrypts to.
    pub fn plaintext_len(&self) -> usize {
        self.sealed.len() - TAG_LEN
    }
}

/// The envelope length for a plaintext of `plaintext_len` bytes.
pub fn envelope_len(plaintext_len: usize) -> usize {
    plaintext_len + OVERHEAD
}

pub fn encode_header(kind: FieldKind, key_id: u32) -> [u8; HEADER_LEN] {
    let id = key_id.to_be_bytes();
    [VERSION_1, kind as u8, id[0], id[1], id[2], id[3]]
}

/// Fails with `ContextTooLong` above `MAX_CONTEXT_LEN`.
pub fn check_context(context: &[u8]) -> Result<()> {
    if context.len() > MAX_CONTEXT_LEN {
        return Err(Error::ContextTooLong {
            len: context.len(),
            max: MAX_CONTEXT_LEN,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut v = encode_header(FieldKind::Serial, 0x0102_0304).to_vec();
        v.extend_from_slice(&[7u8; NONCE_LEN]);
        v.extend_from_slice(b"abc");
        v.extend_from_slice(&[9u8; TAG_LEN]);
        v
    }

    #[test]
    fn parses_fields() {
        let bytes = sample();
        let env = Envelope::parse(&bytes).expect("valid");
        assert_eq!(env.kind, FieldKind::Serial);
        assert_eq!(env.key_id, 0x0102_0304);
        assert_eq!(env.nonce, &[7u8; NONCE_LEN]);
        assert_eq!(env.plaintext_len(), 3);
    }

    #[test]
    fn rejects_bad_structure() {
        assert_eq!(
            Envelope::parse(&[]),
            Err(Error::MalformedEnvelope("value is empty"))
        );
        let mut bytes = sample();
        bytes[0] = 2;
        assert_eq!(Envelope::parse(&bytes), Err(Error::UnsupportedVersion(2)));
        let mut bytes = sample();
        bytes[1] = 9;
        assert_eq!(Envelope::parse(&bytes), Err(Error::UnknownFieldKind(9)));
        let bytes = sample();
        assert!(matches!(
            Envelope::parse(&bytes[..OVERHEAD - 1]),
            Err(Error::MalformedEnvelope(_))
        ));
        assert!(Envelope::parse(&bytes[..OVERHEAD]).is_ok());
    }

    #[test]
    fn kind_names_round_trip() {
        for k in FieldKind::ALL {
            assert_eq!(FieldKind::from_name(k.name()), Some(k));
            assert_eq!(FieldKind::from_byte(k as u8), Ok(k));
        }
        assert_eq!(FieldKind::from_name("nope"), None);
    }

    #[test]
    fn context_limit() {
        assert!(check_context(&[b'a'; MAX_CONTEXT_LEN]).is_ok());
        assert_eq!(
            check_context(&[b'a'; MAX_CONTEXT_LEN + 1]),
            Err(Error::ContextTooLong {
                len: MAX_CONTEXT_LEN + 1,
                max: MAX_CONTEXT_LEN
            })
        );
    }
}
