//! Opening values that another application encrypted with AES-256-GCM outside
//! pg_dscsa: a 12-byte nonce and the ciphertext with its 16-byte tag appended, each
//! base64-encoded (the `{"nonce": ..., "ciphertext": ...}` JSON some middleware stores),
//! no associated data. The plaintext is returned in a zeroizing buffer so that the
//! caller can seal it into a pg_dscsa envelope without it ever leaving memory.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::AeadInPlace;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use zeroize::Zeroizing;

use crate::cipher::{check_plaintext, DataKey};
use crate::envelope::{NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};

/// Standard base64, padding optional (both forms are common in the wild).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn bad(what: &str) -> Error {
    Error::InvalidArgument(format!("foreign ciphertext: {what}"))
}

/// Decodes and authenticates one foreign value. Fails with `AuthenticationFailed` when
/// the key is wrong or the value was modified, and with `InvalidArgument` (never echoing
/// the input) when the fields are not well-formed.
pub fn open_foreign(
    key: &DataKey,
    nonce_b64: &str,
    ciphertext_b64: &str,
) -> Result<Zeroizing<Vec<u8>>> {
    let nonce = LENIENT
        .decode(nonce_b64.trim())
        .map_err(|_| bad("\"nonce\" is not base64"))?;
    if nonce.len() != NONCE_LEN {
        return Err(bad("\"nonce\" must be 12 bytes"));
    }
    let mut body = Zeroizing::new(
        LENIENT
            .decode(ciphertext_b64.trim())
            .map_err(|_| bad("\"ciphertext\" is not base64"))?,
    );
    if body.len() < TAG_LEN {
        return Err(bad("\"ciphertext\" is shorter than its 16-byte tag"));
    }
    let n = body.len() - TAG_LEN;
    check_plaintext(&body[..n])?;
    let (msg, tag) = body.split_at_mut(n);
    let tag = GenericArray::clone_from_slice(tag);
    key.cipher()
        .decrypt_in_place_detached(GenericArray::<u8, U12>::from_slice(&nonce), b"", msg, &tag)
        .map_err(|_| Error::AuthenticationFailed)?;
    body.truncate(n);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{Aead, KeyInit};
    use aes_gcm::Aes256Gcm;
    use base64::engine::general_purpose::STANDARD;

    fn foreign(key: &[u8; 32], nonce: &[u8; 12], pt: &[u8]) -> (String, String) {
        let c = Aes256Gcm::new_from_slice(key).expect("key");
        let ct = c
            .encrypt(GenericArray::from_slice(nonce), pt)
            .expect("encrypt");
        (STANDARD.encode(nonce), STANDARD.encode(ct))
    }

    #[test]
    fn opens_what_a_plain_aes_gcm_client_sealed() {
        let raw = [5u8; 32];
        let (n, c) = foreign(&raw, &[1; 12], b"SN-000123");
        let key = DataKey::from_bytes(&raw).expect("key");
        assert_eq!(&open_foreign(&key, &n, &c).expect("open")[..], b"SN-000123");
        // Unpadded base64 is accepted too.
        assert_eq!(
            &open_foreign(&key, n.trim_end_matches('='), c.trim_end_matches('=')).expect("open")[..],
            b"SN-000123"
        );
    }

    #[test]
    fn wrong_key_tampering_and_garbage_fail_cleanly() {
        let raw = [5u8; 32];
        let (n, c) = foreign(&raw, &[1; 12], b"SN-000123");
        let wrong = DataKey::from_bytes(&[6u8; 32]).expect("key");
        assert_eq!(
            open_foreign(&wrong, &n, &c).unwrap_err(),
            Error::AuthenticationFailed
        );
        let key = DataKey::from_bytes(&raw).expect("key");
        let mut bytes = STANDARD.decode(&c).expect("b64");
        bytes[0] ^= 1;
        assert_eq!(
            open_foreign(&key, &n, &STANDARD.encode(&bytes)).unwrap_err(),
            Error::AuthenticationFailed
        );
        for (nn, cc) in [
            ("!!", c.as_str()),
            (n.as_str(), "%%"),
            ("AAAA", c.as_str()),
            (n.as_str(), "AAAA"),
        ] {
            let err = open_foreign(&key, nn, cc).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
            assert!(!err.to_string().contains(cc) || cc.len() < 3);
        }
    }
}
