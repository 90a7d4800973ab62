//! AES-256-GCM sealing and opening of v1 envelopes.
//!
//! The associated data is the 6-byte header followed by the caller's context, so the
//! tag covers the version, field kind, key id and context. We never implement any
//! primitive ourselves: all of it is the RustCrypto `aes-gcm` crate.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes256Gcm;
use zeroize::Zeroizing;

use crate::envelope::{
    check_context, encode_header, envelope_len, Envelope, FieldKind, HEADER_LEN, MAX_CONTEXT_LEN,
    MAX_PLAINTEXT_LEN, NONCE_LEN, TAG_LEN,
};
use crate::error::{Error, Result};

pub const KEY_LEN: usize = 32;

/// A data key with its AES key schedule expanded once. The schedule and GHASH key are
/// zeroized when this is dropped (the `zeroize` features of `aes` and `ghash`).
pub struct DataKey {
    cipher: Aes256Gcm,
}

impl DataKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEY_LEN {
            return Err(Error::BadKeyLength(bytes.len()));
        }
        let cipher =
            Aes256Gcm::new_from_slice(bytes).map_err(|_| Error::BadKeyLength(bytes.len()))?;
        Ok(DataKey { cipher })
    }

    /// The expanded cipher, for opening values not in envelope form (`import`).
    pub(crate) fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// Associated data = header || context. Without a context the header itself is the
/// AAD (no copy); with one, both are joined in a stack buffer (no allocation per row).
struct Aad {
    buf: [u8; HEADER_LEN + MAX_CONTEXT_LEN],
    len: usize,
}

impl Aad {
    fn join(header: &[u8; HEADER_LEN], context: &[u8]) -> Result<Self> {
        check_context(context)?;
        let mut buf = [0u8; HEADER_LEN + MAX_CONTEXT_LEN];
        buf[..HEADER_LEN].copy_from_slice(header);
        buf[HEADER_LEN..HEADER_LEN + context.len()].copy_from_slice(context);
        Ok(Aad {
            buf,
            len: HEADER_LEN + context.len(),
        })
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Calls `f` with the associated data for `header` and `context`.
fn with_aad<T>(header: &[u8; HEADER_LEN], context: &[u8], f: impl FnOnce(&[u8]) -> T) -> Result<T> {
    if context.is_empty() {
        Ok(f(header))
    } else {
        Ok(f(Aad::join(header, context)?.as_slice()))
    }
}

/// Fails with `PlaintextTooLong` above `MAX_PLAINTEXT_LEN`.
pub fn check_plaintext(plaintext: &[u8]) -> Result<()> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(Error::PlaintextTooLong {
            len: plaintext.len(),
            max: MAX_PLAINTEXT_LEN,
        });
    }
    Ok(())
}

/// Seals `plaintext` into `out`, which must be exactly `envelope_len(plaintext.len())`
/// bytes (the caller allocates it, so the pgrx layer can write straight into a varlena).
pub fn seal_into(
    key: &DataKey,
    key_id: u32,
    kind: FieldKind,
    context: &[u8],
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
    out: &mut [u8],
) -> Result<()> {
    check_plaintext(plaintext)?;
    if out.len() != envelope_len(plaintext.len()) {
        return Err(Error::MalformedEnvelope(
            "output buffer has the wrong length",
        ));
    }
    let header = encode_header(kind, key_id);
    let body_start = HEADER_LEN + NONCE_LEN;
    let body_end = body_start + plaintext.len();
    out[..HEADER_LEN].copy_from_slice(&header);
    out[HEADER_LEN..body_start].copy_from_slice(&nonce);
    out[body_start..body_end].copy_from_slice(plaintext);
    let tag = with_aad(&header, context, |aad| {
        key.cipher.encrypt_in_place_detached(
            GenericArray::<u8, U12>::from_slice(&nonce),
            aad,
            &mut out[body_start..body_end],
        )
    })?
    .map_err(|_| Error::PlaintextTooLong {
        len: plaintext.len(),
        max: MAX_PLAINTEXT_LEN,
    })?;
    out[body_end..].copy_from_slice(&tag);
    Ok(())
}

/// Convenience form of `seal_into` that allocates.
pub fn seal(
    key: &DataKey,
    key_id: u32,
    kind: FieldKind,
    context: &[u8],
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    check_plaintext(plaintext)?;
    let mut out = vec![0u8; envelope_len(plaintext.len())];
    seal_into(key, key_id, kind, context, nonce, plaintext, &mut out)?;
    Ok(out)
}

/// Authenticates and decrypts into `out` (exactly `env.plaintext_len()` bytes). On
/// failure `out` is zeroed and `AuthenticationFailed` is returned: the caller learns
/// nothing about which part (key, context, header, body) was wrong.
pub fn open_into(key: &DataKey, env: &Envelope<'_>, context: &[u8], out: &mut [u8]) -> Result<()> {
    let n = env.plaintext_len();
    if out.len() != n {
        return Err(Error::MalformedEnvelope(
            "output buffer has the wrong length",
        ));
    }
    out.copy_from_slice(&env.sealed[..n]);
    let tag = GenericArray::from_slice(&env.sealed[n..n + TAG_LEN]);
    let result = with_aad(env.header, context, |aad| {
        key.cipher.decrypt_in_place_detached(
            GenericArray::<u8, U12>::from_slice(env.nonce),
            aad,
            &mut *out,
            tag,
        )
    })?;
    if result.is_err() {
        zeroize::Zeroize::zeroize(out);
        return Err(Error::AuthenticationFailed);
    }
    Ok(())
}

/// Convenience form of `open_into` that allocates a zeroizing buffer.
pub fn open(key: &DataKey, env: &Envelope<'_>, context: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(vec![0u8; env.plaintext_len()]);
    open_into(key, env, context, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> DataKey {
        DataKey::from_bytes(&[b; KEY_LEN]).expect("32 bytes")
    }

    #[test]
    fn round_trip_with_and_without_context() {
        let k = key(1);
        for ctx in [&b""[..], b"erp.stock_lot.serial"] {
            for pt in [&b""[..], b"SN0000000000000001", "Grüße ✓".as_bytes()] {
                let env_bytes =
                    seal(&k, 7, FieldKind::Serial, ctx, [3; NONCE_LEN], pt).expect("seal");
                let env = Envelope::parse(&env_bytes).expect("parse");
                assert_eq!(env.key_id, 7);
                assert_eq!(&open(&k, &env, ctx).expect("open")[..], pt);
            }
        }
    }

    #[test]
    fn wrong_key_context_or_header_fails() {
        let k = key(1);
        let bytes = seal(&k, 7, FieldKind::Serial, b"a.b.c", [3; NONCE_LEN], b"SN1").expect("seal");
        let env = Envelope::parse(&bytes).expect("parse");
        assert_eq!(
            open(&key(2), &env, b"a.b.c").err(),
            Some(Error::AuthenticationFailed)
        );
        assert_eq!(
            open(&k, &env, b"a.b.d").err(),
            Some(Error::AuthenticationFailed)
        );
        assert_eq!(open(&k, &env, b"").err(), Some(Error::AuthenticationFailed));
        let mut swapped = bytes.clone();
        swapped[1] = FieldKind::Lot as u8;
        let env2 = Envelope::parse(&swapped).expect("parse");
        assert_eq!(
            open(&k, &env2, b"a.b.c").err(),
            Some(Error::AuthenticationFailed)
        );
        let mut other_id = bytes.clone();
        other_id[5] ^= 1;
        let env3 = Envelope::parse(&other_id).expect("parse");
        assert_eq!(
            open(&k, &env3, b"a.b.c").err(),
            Some(Error::AuthenticationFailed)
        );
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let k = key(4);
        let bytes = seal(
            &k,
            1,
            FieldKind::Generic,
            b"ctx",
            [5; NONCE_LEN],
            b"00300010123455",
        )
        .expect("seal");
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut t = bytes.clone();
                t[i] ^= 1 << bit;
                match Envelope::parse(&t) {
                    Ok(env) => assert_eq!(
                        open(&k, &env, b"ctx").err(),
                        Some(Error::AuthenticationFailed),
                        "flip of bit {bit} in byte {i} must not decrypt"
                    ),
                    // Version or kind byte flipped to an unknown value: rejected before GCM.
                    Err(e) => assert!(i < 2, "byte {i}: unexpected structural error {e}"),
                }
            }
        }
    }

    #[test]
    fn limits_are_enforced() {
        let k = key(1);
        let big = vec![0u8; MAX_PLAINTEXT_LEN + 1];
        assert!(matches!(
            seal(&k, 1, FieldKind::Generic, b"", [0; NONCE_LEN], &big),
            Err(Error::PlaintextTooLong { .. })
        ));
        let ctx = vec![b'c'; MAX_CONTEXT_LEN + 1];
        assert!(matches!(
            seal(&k, 1, FieldKind::Generic, &ctx, [0; NONCE_LEN], b"x"),
            Err(Error::ContextTooLong { .. })
        ));
        assert_eq!(
            DataKey::from_bytes(&[0u8; 16]).err(),
            Some(Error::BadKeyLength(16))
        );
    }

    #[test]
    fn debug_does_not_print_key() {
        assert_eq!(format!("{:?}", key(0xAB)), "DataKey(<redacted>)");
    }
}
