//! The development KMS hook: a key-encryption key in a local file (mode 0600).
//!
//! It speaks the same protocol as a production hook (docs/KMS.md) and exists so that
//! the extension can be installed, demonstrated and tested without a cloud KMS or HSM.
//! The KEK never leaves this process; PostgreSQL only ever sees wrapped data keys.
//!
//! The KEK file holds one or more 32-byte KEKs back to back; the first is the current
//! one (new keys are wrapped under it) and the others are kept so that keys wrapped
//! under them still unwrap until `dscsa.rotate_kek()` has re-wrapped them. A KEK is
//! named by its fingerprint, which the keyring records beside each wrapped key.
//! `--add-kek` puts a new current KEK in front; `--remove-kek dev:…` drops an old one.
//!
//! Keys of other applications (for `import`) are read from `<kek file>.imports`, also
//! mode 0600: one `reference base64-key` line per key.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::path::PathBuf;

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
            Operation::Import => Err(fail("import is answered by DevKeks, not by one KEK")),
            Operation::Unwrap => {
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

/// Every KEK in the KEK file, current first.
pub struct DevKeks {
    keks: Vec<DevKek>,
    path: PathBuf,
}

fn check_private_file(meta: &std::fs::Metadata, what: &str) -> Result<()> {
    if !meta.is_file() {
        return Err(fail(format!("{what} is not a regular file")));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(fail(format!(
            "{what} permissions are {:o}; it must not be accessible by group or others (chmod 600)",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

fn write_private_file(path: &Path, bytes: &[u8], create_new: bool) -> Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).mode(0o600);
    if create_new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(true);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
}

impl DevKeks {
    /// Reads the KEK file, creating it (one fresh KEK, mode 0600) when `create` is true
    /// and it does not exist. Refuses a file that group or others could read.
    pub fn load(path: &Path, create: bool) -> Result<Self> {
        if create && !path.exists() {
            let key = generate_data_key()?;
            match write_private_file(path, &key[..], true) {
                Ok(()) => {}
                // Another session created it first: read theirs.
                Err(_) if path.exists() => {}
                Err(e) => return Err(e),
            }
        }
        let mut file = File::open(path).map_err(|e| fail(format!("cannot open KEK file: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| fail(format!("cannot stat KEK file: {e}")))?;
        check_private_file(&meta, "KEK file")?;
        let mut all = Zeroizing::new(Vec::new());
        file.read_to_end(&mut all)
            .map_err(|e| fail(format!("cannot read KEK file: {e}")))?;
        if all.is_empty() || all.len() % KEY_LEN != 0 || all.len() > 64 * KEY_LEN {
            return Err(fail("KEK file must hold one or more 32-byte keys"));
        }
        let keks = all
            .chunks_exact(KEY_LEN)
            .map(|c| {
                let mut k = Zeroizing::new([0u8; KEY_LEN]);
                k.copy_from_slice(c);
                DevKek::from_bytes(k)
            })
            .collect();
        Ok(DevKeks {
            keks,
            path: path.to_path_buf(),
        })
    }

    pub fn current(&self) -> &DevKek {
        &self.keks[0]
    }

    pub fn fingerprints(&self) -> Vec<String> {
        self.keks.iter().map(|k| k.fingerprint.clone()).collect()
    }

    fn save(&self) -> Result<()> {
        let mut all = Zeroizing::new(Vec::with_capacity(self.keks.len() * KEY_LEN));
        for k in &self.keks {
            all.extend_from_slice(&k.key[..]);
        }
        let tmp = self.path.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        write_private_file(&tmp, &all, true)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| fail(format!("cannot replace KEK file: {e}")))
    }

    /// Puts a fresh KEK in front (it becomes current); returns its fingerprint.
    pub fn add_kek(&mut self) -> Result<String> {
        let kek = DevKek::from_bytes(generate_data_key()?);
        let fp = kek.fingerprint.clone();
        self.keks.insert(0, kek);
        self.save()?;
        Ok(fp)
    }

    /// Drops a KEK that is not current. Keys still wrapped under it stop unwrapping.
    pub fn remove_kek(&mut self, fingerprint: &str) -> Result<()> {
        let pos = self
            .keks
            .iter()
            .position(|k| k.fingerprint == fingerprint)
            .ok_or_else(|| fail(format!("no KEK {fingerprint} in the KEK file")))?;
        if pos == 0 {
            return Err(fail(
                "the current KEK cannot be removed; add a new one first",
            ));
        }
        self.keks.remove(pos);
        self.save()
    }

    /// Answers one protocol request: wrap under the current KEK, unwrap under the KEK
    /// the request names, import from the imports file.
    pub fn handle(&self, req: &Request) -> Result<Response> {
        match req.operation {
            Operation::Wrap => self.current().handle(req),
            Operation::Unwrap => {
                let kek = if req.kek.starts_with("dev:") {
                    self.keks
                        .iter()
                        .find(|k| k.fingerprint == req.kek)
                        .ok_or_else(|| {
                            fail(format!(
                                "data key was wrapped under {} but the KEK file holds {}",
                                req.kek,
                                self.fingerprints().join(", ")
                            ))
                        })?
                } else {
                    self.current()
                };
                kek.handle(req)
            }
            Operation::Import => self.import(&req.kek),
        }
    }

    fn import(&self, reference: &str) -> Result<Response> {
        let mut path = self.path.clone().into_os_string();
        path.push(".imports");
        let path = PathBuf::from(path);
        let mut file =
            File::open(&path).map_err(|e| fail(format!("cannot open imports file: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| fail(format!("cannot stat imports file: {e}")))?;
        check_private_file(&meta, "imports file")?;
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text)
            .map_err(|_| fail("imports file is not text"))?;
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            if let (Some(r), Some(key), None) = (parts.next(), parts.next(), parts.next()) {
                if r == reference {
                    use base64::Engine;
                    let key = Zeroizing::new(
                        base64::engine::general_purpose::STANDARD
                            .decode(key)
                            .map_err(|_| fail("imports file: key is not base64"))?,
                    );
                    if key.len() != KEY_LEN {
                        return Err(fail("imports file: a key must be 32 bytes"));
                    }
                    return Ok(Response {
                        kek: None,
                        data: key,
                    });
                }
            }
        }
        Err(fail("no such key reference in the imports file"))
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
        let other = DevKeks {
            keks: vec![DevKek::from_bytes(Zeroizing::new([4u8; 32]))],
            path: PathBuf::from("/nonexistent"),
        };
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
            DevKeks::load(&path, false).is_err(),
            "missing file without create"
        );
        let a = DevKeks::load(&path, true).expect("created");
        let b = DevKeks::load(&path, true).expect("reused");
        assert_eq!(a.fingerprints(), b.fingerprints());
        let mode = std::fs::metadata(&path).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        assert!(
            matches!(DevKeks::load(&path, false), Err(Error::Kms(m)) if m.contains("chmod 600"))
        );
        std::fs::write(&path, [1u8; 31]).expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        assert!(DevKeks::load(&path, false).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn several_keks_rotate_and_import() {
        let dir = std::env::temp_dir().join(format!("dscsa-devkms-rot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("kek");
        let _ = std::fs::remove_file(&path);
        let mut keks = DevKeks::load(&path, true).expect("created");
        let old_fp = keks.current().fingerprint.clone();
        let wrapped = keks
            .handle(&req(Operation::Wrap, "dev", 1, vec![7u8; 32]))
            .expect("wrap");
        assert_eq!(wrapped.kek.as_deref(), Some(old_fp.as_str()));
        let new_fp = keks.add_kek().expect("add");
        assert_ne!(new_fp, old_fp);
        let keks = {
            drop(keks);
            DevKeks::load(&path, false).expect("reload")
        };
        assert_eq!(keks.fingerprints(), vec![new_fp.clone(), old_fp.clone()]);
        // Old wraps still unwrap; new wraps use the new KEK.
        let blob = wrapped.data.to_vec();
        let back = keks
            .handle(&req(Operation::Unwrap, &old_fp, 1, blob.clone()))
            .expect("unwrap under the old KEK");
        assert_eq!(&back.data[..], &[7u8; 32]);
        let rewrapped = keks
            .handle(&req(Operation::Wrap, "dev", 1, back.data.to_vec()))
            .expect("wrap");
        assert_eq!(rewrapped.kek.as_deref(), Some(new_fp.as_str()));
        let mut keks = keks;
        assert!(keks.remove_kek(&new_fp).is_err(), "current KEK stays");
        keks.remove_kek(&old_fp).expect("remove old");
        let keks = DevKeks::load(&path, false).expect("reload");
        assert!(keks
            .handle(&req(Operation::Unwrap, &old_fp, 1, blob))
            .is_err());
        assert!(keks
            .handle(&req(Operation::Unwrap, &new_fp, 1, rewrapped.data.to_vec()))
            .is_ok());
        // Imports.
        assert!(keks
            .handle(&req(Operation::Import, "mw", 0, vec![]))
            .is_err());
        let imports = dir.join("kek.imports");
        let _ = std::fs::remove_file(&imports);
        write_private_file(
            &imports,
            format!("other {}\nmw {}\n", "A".repeat(44), {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode([9u8; 32])
            })
            .as_bytes(),
            true,
        )
        .expect("imports");
        let got = keks
            .handle(&req(Operation::Import, "mw", 0, vec![]))
            .expect("import");
        assert_eq!(&got.data[..], &[9u8; 32]);
        assert!(keks
            .handle(&req(Operation::Import, "nope", 0, vec![]))
            .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
