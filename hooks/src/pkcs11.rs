//! The PKCS#11 HSM provider (`pg_dscsa_kms_pkcs11`): the KEK is a sensitive,
//! non-extractable AES-256 key in the token, found by its label (the `kek` of the
//! request); wrap = CKM_AES_GCM with a fresh 12-byte IV and the key's context as AAD.
//!
//! Blob: `0x01 || IV (12 bytes) || ciphertext || tag (16 bytes)`.
//!
//! Configuration (0600):
//!
//! ```text
//! module = /usr/lib/softhsm/libsofthsm2.so
//! token_label = pg_dscsa
//! pin_file = /etc/pg_dscsa/hsm.pin        # 0600, owned by postgres
//! kek = pg_dscsa-kek-1                    # for --check
//! softhsm2_conf = /var/lib/postgresql/softhsm2.conf   # optional (SoftHSM only)
//! cluster = erp-prod                      # optional: bound into every wrap
//! ```

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rand_core::{OsRng, TryRngCore};
use zeroize::Zeroizing;

use crate::{Class, Config, Context, HookError, Provider, Wrapped};

const BLOB_VERSION: u8 = 1;
const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;

pub struct Pkcs11Provider {
    // Dropped in this order: the session (logged out, closed), then the library.
    session: Session,
    _pkcs11: Pkcs11,
    token: String,
}

/// What a PKCS#11 return value means for the server.
fn class_of(e: &P11Error) -> Class {
    match e {
        P11Error::Pkcs11(rv, _) => match rv {
            RvError::DeviceError
            | RvError::DeviceRemoved
            | RvError::DeviceMemory
            | RvError::TokenNotPresent
            | RvError::SessionClosed
            | RvError::SessionHandleInvalid
            | RvError::FunctionFailed => Class::Unavailable,
            RvError::PinIncorrect
            | RvError::PinLocked
            | RvError::PinExpired
            | RvError::UserNotLoggedIn => Class::Denied,
            RvError::KeyHandleInvalid
            | RvError::KeyFunctionNotPermitted
            | RvError::KeyTypeInconsistent => Class::Config,
            _ => Class::Config,
        },
        _ => Class::Config,
    }
}

fn p11(what: &str) -> impl Fn(P11Error) -> HookError + '_ {
    move |e| HookError::new(class_of(&e), format!("{what}: {e}"))
}

impl Pkcs11Provider {
    pub fn from_config(config: &Config) -> Result<Self, HookError> {
        if let Some(conf) = config.get("softhsm2_conf") {
            // SoftHSM reads its configuration when the module initialises; without a
            // readable one it answers only CKR_GENERAL_ERROR.
            std::env::set_var("SOFTHSM2_CONF", conf);
        }
        let module = config.require("module")?;
        let pkcs11 = Pkcs11::new(module).map_err(|e| {
            HookError::new(
                Class::Config,
                format!("cannot load the PKCS#11 module {module}: {e}"),
            )
        })?;
        pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| {
                HookError::new(
                    Class::Config,
                    format!("C_Initialize failed ({e}); for SoftHSM, check softhsm2_conf and that its token directory is readable by this user"),
                )
            })?;
        let token = config.require("token_label")?.to_string();
        let mut found = None;
        for slot in pkcs11
            .get_slots_with_token()
            .map_err(p11("listing slots"))?
        {
            let info = pkcs11
                .get_token_info(slot)
                .map_err(p11("reading token info"))?;
            if info.label().trim_end() == token {
                found = Some(slot);
                break;
            }
        }
        let slot = found.ok_or_else(|| {
            HookError::new(
                Class::Config,
                format!(
                    "no token labelled {token:?} is visible to uid {} (a token initialised by another user, such as root, is invisible to this one)",
                    // SAFETY: getuid has no preconditions.
                    unsafe { libc::getuid() }
                ),
            )
        })?;
        let session = pkcs11
            .open_ro_session(slot)
            .map_err(p11("opening a session"))?;
        let pin = config.secret("pin_file")?;
        session
            .login(UserType::User, Some(&AuthPin::new(pin.as_str().into())))
            .map_err(p11("logging in to the token"))?;
        Ok(Pkcs11Provider {
            session,
            _pkcs11: pkcs11,
            token,
        })
    }

    /// The AES key labelled `label` in the token.
    fn kek(&self, label: &str) -> Result<ObjectHandle, HookError> {
        let found = self
            .session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(p11("looking up the KEK"))?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(HookError::new(
                Class::Config,
                format!("token {:?} has no AES key labelled {label:?}", self.token),
            )),
            _ => Err(HookError::new(
                Class::Config,
                format!(
                    "token {:?} has several AES keys labelled {label:?}",
                    self.token
                ),
            )),
        }
    }
}

impl Provider for Pkcs11Provider {
    fn name(&self) -> &'static str {
        "pkcs11"
    }

    fn wrap(&mut self, kek: &str, ctx: &Context, key: &[u8]) -> Result<Wrapped, HookError> {
        let handle = self.kek(kek)?;
        let mut iv = [0u8; IV_LEN];
        OsRng
            .try_fill_bytes(&mut iv)
            .map_err(|e| HookError::new(Class::Config, format!("no random IV: {e}")))?;
        let aad = ctx.aad();
        let sealed = {
            let params =
                GcmParams::new(&mut iv, &aad, TAG_BITS.into()).map_err(p11("GCM parameters"))?;
            self.session
                .encrypt(&Mechanism::AesGcm(params), handle, key)
                .map_err(p11("C_Encrypt (AES-GCM)"))?
        };
        // (An HSM that generates the IV itself writes it into `iv`.)
        let mut blob = Vec::with_capacity(1 + IV_LEN + sealed.len());
        blob.push(BLOB_VERSION);
        blob.extend_from_slice(&iv);
        blob.extend_from_slice(&sealed);
        Ok(Wrapped {
            blob,
            kek_ref: kek.to_string(),
        })
    }

    fn unwrap(
        &mut self,
        kek: &str,
        ctx: &Context,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HookError> {
        if blob.len() < 1 + IV_LEN + 16 || blob[0] != BLOB_VERSION {
            return Err(HookError::new(
                Class::InvalidCiphertext,
                "not a pg_dscsa PKCS#11 blob (version 1)".to_string(),
            ));
        }
        let handle = self.kek(kek)?;
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&blob[1..1 + IV_LEN]);
        let aad = ctx.aad();
        let params =
            GcmParams::new(&mut iv, &aad, TAG_BITS.into()).map_err(p11("GCM parameters"))?;
        match self.session.decrypt(&Mechanism::AesGcm(params), handle, &blob[1 + IV_LEN..]) {
            Ok(key) => Ok(Zeroizing::new(key)),
            // SoftHSM reports a failed GCM tag as CKR_GENERAL_ERROR; others as
            // CKR_ENCRYPTED_DATA_INVALID.
            Err(P11Error::Pkcs11(
                RvError::GeneralError | RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                _,
            )) => Err(HookError::new(
                Class::InvalidCiphertext,
                format!(
                    "the wrapped key does not decrypt under HSM key {kek:?} for key id {}, name {:?}, version {} (tampered, copied from another keyring row, or wrapped under another KEK)",
                    ctx.key_id, ctx.key_name, ctx.key_version
                ),
            )),
            Err(e) => Err(p11("C_Decrypt (AES-GCM)")(e)),
        }
    }
}
