//! The development KMS hook: a key-encryption key in a local file (mode 0600).
//!
//! It speaks the same protocol as a production hook (docs/KMS.md) and exists so that
//! the extension can be installed, demonstrated and tested without a cloud KMS or HSM.
//! The KEK never leaves this process; PostgreSQL only ever sees wrapped data keys.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::cipher::KEY_LEN;
use crate::error::{Error, Result};
use crate::kms::{Operation, Request, Response};
use crate::nonce::{generate_data_key, os_random};

const WRAP_AAD_PREFIX: &[u8] = b"pg_dscsa-devkms/1";
const WRAP_NONCE_LEN: usize = 12;

/// A loaded key-encryption key and its public fingerprint (`dev:` + 16 hex digits).
pub struct DevKek {
    key: Zeroizing<[u8; KEY_LEN]>,
    pub fingerprint: String,
}

fn fail(msg: impl Into<String>) -> Error {
    Error::Kms(msg.into())
}

impl DevKek {
    pub fn from_bytes(key: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let digest = Sha256::new()
            .chain_update(b"pg_dscsa-devkms kek fingerprint")
            .chain_update(&key[..])
            .finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        DevKek {
            key,
            fingerprint: format!("dev:{hex}"),
        }
    }

    /// Reads the KEK file, creating it with mode 0600 when `create` is true and it does
    /// not exist. Refuses a file that group or others could read.
    pub fn load(path: &Path, create: bool) -> Result<Self> {
        if create && !path.exists() {
            let key = generate_data_key()?;
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(mut f) => {
                    f.write_all(&key[..])
                        .and_then(|_| f.sync_all())
                        .map_err(|e| fail(format!("cannot write KEK file: {e}")))?;
                }
                // Another session created it first: read theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(fail(format!("cannot create KEK file: {e}"))),
            }
        }
        let mut file = File::open(path).map_err(|e| fail(format!("cannot open KEK file: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| fail(format!("cannot stat KEK file: {e}")))?;
        if !meta.is_file() {
            return Err(fail("KEK file is not a regular file"));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(fail(format!(
                "KEK file permissions are {:o}; it must not be accessible by group or others (chmod 600)",
                meta.mode() & 0o777
            )));
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        let mut extra = [0u8; 1];
        file.read_exact(&mut key[..])
            .map_err(|_| fail("KEK file must hold exactly 32 bytes"))?;
        if file.read(&mut extra).map_err(|e| fail(e.to_string()))? != 0 {
            return Err(fail("KEK file must hold exactly 32 bytes"));
        }
        Ok(DevKek::from_bytes(key))
    }

    fn cipher(&self) -> Result<Aes256Gcm> {
        Aes256Gcm::new_from_slice(&self.key[..]).map_err(|_| fail("bad KEK length"))
    }

    /// Answers one protocol request.
    pub fn handle(&self, req: &Request) -> Result<Response> {
        let mut aad = WRAP_AAD_PREFIX.to_vec();
        aad.extend_from_slice(&req.key_id.to_be_bytes());
        aad.extend_from_slice(req.key_name.as_bytes());
        match req.operation {
            Operation::Wrap => {
                if req.data.len() != KEY_LEN {
                    return Err(fail("wrap expects a 32-byte data key"));
                }
                let mut nonce = [0u8; WRAP_NONCE_LEN];
                os_random(&mut nonce)?;
                let sealed = self
                    .cipher()?
                    .encrypt(
                        Nonce::from_slice(&nonce),
                        Payload {
                            msg: &req.data,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| fail("wrapping failed"))?;
                let mut blob = nonce.to_vec();
                blob.extend_from_slice(&sealed);
                Ok(Response {
                    kek: Some(self.fingerprint.clone()),
                    data: Zeroizing::new(blob),
                })
            }
            Operation::Unwrap => {
                if req.kek.starts_with("dev:") && req.kek != self.fingerprint {
                    return Err(fail(format!(
                        "data key was wrapped under {} but the KEK file is {}",
                        req.kek, self.fingerprint
                    )));
                }
                if req.data.len() < WRAP_NONCE_LEN + 16 {
                    return Err(fail("wrapped key is too short"));
                }
                let (nonce, sealed) = req.data.split_at(WRAP_NONCE_LEN);
                let key = self
                    .cipher()?
                    .decrypt(
                        Nonce::from_slice(nonce),
                        Payload {
                            msg: sealed,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| fail("wrapped key failed authentication under this KEK"))?;
                Ok(Response {
                    kek: None,
                    data: Zeroizing::new(key),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(op: Operation, kek: &str, key_id: u32, data: Vec<u8>) -> Request {
        Request {
            operation: op,
            kek: kek.into(),
            key_id,
            key_name: "default".into(),
            key_version: 1,
            data: Zeroizing::new(data),
        }
    }

    #[test]
    fn wrap_unwrap_round_trip_and_binding() {
        let kek = DevKek::from_bytes(Zeroizing::new([3u8; 32]));
        let wrapped = kek
            .handle(&req(Operation::Wrap, "dev", 5, vec![8u8; 32]))
            .expect("wrap");
        let fp = wrapped.kek.clone().expect("fingerprint");
        assert!(fp.starts_with("dev:") && fp.len() == 20);
        let blob = wrapped.data.to_vec();
        let back = kek
            .handle(&req(Operation::Unwrap, &fp, 5, blob.clone()))
            .expect("unwrap");
        assert_eq!(&back.data[..], &[8u8; 32]);
        // Bound to the key id: a blob moved to another keyring row does not unwrap.
        assert!(kek
            .handle(&req(Operation::Unwrap, &fp, 6, blob.clone()))
            .is_err());
        // Another KEK refuses it, with a clear message naming fingerprints only.
        let other = DevKek::from_bytes(Zeroizing::new([4u8; 32]));
        let err = other
            .handle(&req(Operation::Unwrap, &fp, 5, blob))
            .unwrap_err();
        assert!(matches!(err, Error::Kms(m) if m.contains("wrapped under dev:")));
    }

    #[test]
    fn kek_file_permissions_and_length() {
        let dir = std::env::temp_dir().join(format!("dscsa-devkms-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("kek");
        let _ = std::fs::remove_file(&path);
        assert!(
            DevKek::load(&path, false).is_err(),
            "missing file without create"
        );
        let a = DevKek::load(&path, true).expect("created");
        let b = DevKek::load(&path, true).expect("reused");
        assert_eq!(a.fingerprint, b.fingerprint);
        let mode = std::fs::metadata(&path).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        assert!(
            matches!(DevKek::load(&path, false), Err(Error::Kms(m)) if m.contains("chmod 600"))
        );
        std::fs::write(&path, [1u8; 31]).expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        assert!(DevKek::load(&path, false).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
