//! Key check values: a short, one-way fingerprint of a data key stored in the keyring,
//! so that a hook which "successfully" returns the wrong key (wrong KEK, buggy hook)
//! is caught at load time instead of making every decrypt look like tampering.

use sha2::{Digest, Sha256};

pub const KEY_CHECK_LEN: usize = 16;

pub fn key_check_value(key: &[u8]) -> [u8; KEY_CHECK_LEN] {
    let digest = Sha256::new()
        .chain_update(b"pg_dscsa key check value v1")
        .chain_update(key)
        .finalize();
    let mut out = [0u8; KEY_CHECK_LEN];
    out.copy_from_slice(&digest[..KEY_CHECK_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differs_per_key_and_is_stable() {
        assert_eq!(key_check_value(&[1; 32]), key_check_value(&[1; 32]));
        assert_ne!(key_check_value(&[1; 32]), key_check_value(&[2; 32]));
    }
}
