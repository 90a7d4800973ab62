//! dscsa_encrypt / dscsa_decrypt / dscsa_try_decrypt and their per-field variants.
//!
//! One symbol serves the `(value)` and `(value, context)` overloads. The domain variants
//! (gtin, serial, lot, expiry) write or require their field kind in the authenticated
//! header, which acts as a built-in context: a serial ciphertext cannot be stored in a
//! lot column (domain CHECK) nor decrypted as a lot (kind check, then GCM).

use dscsa_core::cipher::{check_plaintext, open, open_into, seal_into};
use dscsa_core::envelope::{check_context, envelope_len, Envelope, FieldKind};
use dscsa_core::{Error, Result};
use pgrx::pg_sys;
use zeroize::Zeroizing;

use crate::audit::{self, Op};
use crate::error::{raise, OrRaise};
use crate::fmgr::{arg_bytes, new_varlena, optional_arg_bytes, pg_v1_function, return_null};
use crate::keys::OpenFor;
use crate::{guc, keyring, keys};

/// Seals `plaintext` under the active version of data key `key_name` into a new
/// varlena (the envelope), following a rotation made by another session first.
pub(crate) fn seal_varlena(
    op: Op,
    key_name: &[u8],
    kind: FieldKind,
    context: &[u8],
    plaintext: &[u8],
) -> Result<pg_sys::Datum> {
    keyring::sync_with_keyring();
    // GS1 fields are validated, and a GTIN stored as GTIN-14, where they enter.
    let canonical = crate::gs1::checked_plaintext(kind, plaintext)?;
    let plaintext = canonical.as_deref().map_or(plaintext, |c| &c[..]);
    check_plaintext(plaintext)?;
    check_context(context)?;
    let nonce = keys::next_nonce()?;
    let (ptr, out) = new_varlena(envelope_len(plaintext.len()));
    let key_id = keys::with_active_key(key_name, |key_id, key| {
        seal_into(key, key_id, kind, context, nonce, plaintext, out).map(|()| key_id)
    })??;
    keys::record_seal(&nonce);
    audit::note(op, key_id, kind, context);
    Ok(pg_sys::Datum::from(ptr))
}

/// Authenticates and decrypts an envelope into a zeroizing buffer (for callers that
/// need the plaintext only transiently: blind indexes, verification).
pub(crate) fn open_transient(
    envelope: &[u8],
    context: &[u8],
    how: OpenFor<'_>,
) -> Result<Zeroizing<Vec<u8>>> {
    keyring::sync_with_keyring();
    let env = Envelope::parse(envelope)?;
    check_context(context)?;
    keys::with_key_id(env.key_id, how, |key| open(key, &env, context))
        .map_err(explain_missing_key)?
}

/// Authenticates and decrypts a field of `kind` sealed without a context, for a caller
/// that compares it and returns only the verdict (src/vrs.rs): recorded as a decryption,
/// admitted by the trail before the verdict leaves, like `dscsa_decrypt`'s plaintext.
pub(crate) fn open_for_comparison(envelope: &[u8], kind: FieldKind) -> Result<Zeroizing<Vec<u8>>> {
    let env = Envelope::parse(envelope)?;
    require_kind(&env, kind)?;
    keyring::sync_with_keyring();
    let plaintext = keys::with_key_id(env.key_id, OpenFor::Decrypt, |key| open(key, &env, b""))
        .map_err(explain_missing_key)??;
    audit::note_disclosure(Op::Decrypt, env.key_id, env.kind, b"")?;
    Ok(plaintext)
}

/// A field function's envelope must hold its own field kind (checked before the key is
/// used; GCM would refuse it too, since the kind is authenticated).
fn require_kind(env: &Envelope<'_>, expected: FieldKind) -> Result<()> {
    if env.kind == expected {
        return Ok(());
    }
    Err(Error::FieldKindMismatch {
        expected: expected.name(),
        found: env.kind.name(),
    })
}

/// Tells a key that is merely not loaded from a key id no keyring entry has (a modified
/// header, or data without its keyring); asked only on this error path.
fn explain_missing_key(e: Error) -> Error {
    match e {
        Error::KeyVersionNotLoaded(id) if !keyring::key_exists(id) => Error::KeyNotInKeyring(id),
        other => other,
    }
}

/// Errors that mean a value was modified (or does not belong where it is): recorded in
/// the audit trail one by one, and alerted on.
pub(crate) fn is_tampering(err: &Error) -> bool {
    matches!(err, Error::AuthenticationFailed | Error::KeyNotInKeyring(_))
}

/// Records a failed authentication of `envelope` (its header names key and kind).
pub(crate) fn record_tampering(op: Op, envelope: &[u8], context: &[u8], err: &Error) {
    if !is_tampering(err) {
        return;
    }
    let (key_id, kind) = match Envelope::parse(envelope) {
        Ok(env) => (env.key_id, Some(env.kind)),
        Err(_) => (0, None),
    };
    audit::tamper(op, key_id, kind, context, None);
}

/// # Safety
/// Called only from the V1 functions below, whose SQL declarations are STRICT.
unsafe fn encrypt(fcinfo: pg_sys::FunctionCallInfo, kind: FieldKind) -> pg_sys::Datum {
    let plaintext = arg_bytes(fcinfo, 0);
    let context = optional_arg_bytes(fcinfo, 1);
    seal_varlena(Op::Encrypt, guc::key_name(), kind, context, plaintext).or_raise()
}

thread_local! {
    /// The database encoding cannot change while a backend is connected to it.
    static DATABASE_IS_UTF8: std::cell::OnceCell<bool> = const { std::cell::OnceCell::new() };
}

pub(crate) fn valid_in_database_encoding(bytes: &[u8]) -> bool {
    // SAFETY: GetDatabaseEncoding only reads a backend global.
    let utf8 = DATABASE_IS_UTF8.with(|c| {
        *c.get_or_init(
            || unsafe { pg_sys::GetDatabaseEncoding() } == pg_sys::pg_enc::PG_UTF8 as i32,
        )
    });
    if utf8 {
        // Rust's validator is PostgreSQL's rule for UTF-8 text, plus: text holds no NUL.
        return crate::fmgr::utf8(bytes).is_ok() && !bytes.contains(&0);
    }
    // SAFETY: pg_verifymbstr only reads `len` bytes and, with noError, never raises.
    unsafe { pg_sys::pg_verifymbstr(bytes.as_ptr().cast(), bytes.len() as i32, true) }
}

fn decrypt_to_text(
    op: Op,
    envelope: &[u8],
    context: &[u8],
    expect: Option<FieldKind>,
) -> Result<pg_sys::Datum> {
    let env = Envelope::parse(envelope)?;
    if let Some(expected) = expect {
        require_kind(&env, expected)?;
    }
    check_context(context)?;
    keyring::sync_with_keyring();
    let (ptr, out) = new_varlena(env.plaintext_len());
    keys::with_key_id(env.key_id, OpenFor::Decrypt, |key| {
        open_into(key, &env, context, out)
    })
    .map_err(explain_missing_key)??;
    if !valid_in_database_encoding(out) {
        zeroize::Zeroize::zeroize(out);
        return Err(Error::InvalidTextEncoding);
    }
    // Recorded before the plaintext leaves; refused if the trail cannot take it.
    if let Err(e) = audit::note_disclosure(op, env.key_id, env.kind, context) {
        zeroize::Zeroize::zeroize(out);
        return Err(e);
    }
    Ok(pg_sys::Datum::from(ptr))
}

/// Errors that mean "this value is bad", for which the try variants return NULL. A key
/// that is not loaded or a bad argument still raises: a scan must not silently turn
/// every row into NULL because of a configuration mistake.
pub(crate) fn is_bad_value(err: &Error) -> bool {
    matches!(
        err,
        Error::AuthenticationFailed
            | Error::MalformedEnvelope(_)
            | Error::UnsupportedVersion(_)
            | Error::UnknownFieldKind(_)
            | Error::FieldKindMismatch { .. }
            | Error::InvalidTextEncoding
            | Error::KeyNotInKeyring(_)
    )
}

/// # Safety
/// Called only from the V1 functions below, whose SQL declarations are STRICT.
unsafe fn decrypt(
    fcinfo: pg_sys::FunctionCallInfo,
    expect: Option<FieldKind>,
    null_on_bad_value: bool,
) -> pg_sys::Datum {
    let envelope = arg_bytes(fcinfo, 0);
    let context = optional_arg_bytes(fcinfo, 1);
    let op = if null_on_bad_value {
        Op::TryDecrypt
    } else {
        Op::Decrypt
    };
    match decrypt_to_text(op, envelope, context, expect) {
        Ok(datum) => datum,
        Err(e) => {
            record_tampering(op, envelope, context, &e);
            if null_on_bad_value && is_bad_value(&e) {
                return_null(fcinfo)
            } else {
                raise(e)
            }
        }
    }
}

macro_rules! field_functions {
    ($kind:expr, $enc:ident, $enc_finfo:ident, $dec:ident, $dec_finfo:ident, $try:ident, $try_finfo:ident, $expect:expr) => {
        // SAFETY (all three): PostgreSQL calls these with a valid fcinfo, and the SQL
        // declarations are STRICT with varlena arguments.
        pg_v1_function!(fn $enc, $enc_finfo, |fcinfo| unsafe { encrypt(fcinfo, $kind) });
        pg_v1_function!(fn $dec, $dec_finfo, |fcinfo| unsafe { decrypt(fcinfo, $expect, false) });
        pg_v1_function!(fn $try, $try_finfo, |fcinfo| unsafe { decrypt(fcinfo, $expect, true) });
    };
}

// The generic functions decrypt any kind (the kind is still authenticated); the field
// functions accept only their own kind.
field_functions!(
    FieldKind::Generic,
    dscsa_encrypt,
    pg_finfo_dscsa_encrypt,
    dscsa_decrypt,
    pg_finfo_dscsa_decrypt,
    dscsa_try_decrypt,
    pg_finfo_dscsa_try_decrypt,
    None
);
field_functions!(
    FieldKind::Gtin,
    dscsa_encrypt_gtin,
    pg_finfo_dscsa_encrypt_gtin,
    dscsa_decrypt_gtin,
    pg_finfo_dscsa_decrypt_gtin,
    dscsa_try_decrypt_gtin,
    pg_finfo_dscsa_try_decrypt_gtin,
    Some(FieldKind::Gtin)
);
field_functions!(
    FieldKind::Serial,
    dscsa_encrypt_serial,
    pg_finfo_dscsa_encrypt_serial,
    dscsa_decrypt_serial,
    pg_finfo_dscsa_decrypt_serial,
    dscsa_try_decrypt_serial,
    pg_finfo_dscsa_try_decrypt_serial,
    Some(FieldKind::Serial)
);
field_functions!(
    FieldKind::Lot,
    dscsa_encrypt_lot,
    pg_finfo_dscsa_encrypt_lot,
    dscsa_decrypt_lot,
    pg_finfo_dscsa_decrypt_lot,
    dscsa_try_decrypt_lot,
    pg_finfo_dscsa_try_decrypt_lot,
    Some(FieldKind::Lot)
);
field_functions!(
    FieldKind::Expiry,
    dscsa_encrypt_expiry,
    pg_finfo_dscsa_encrypt_expiry,
    dscsa_decrypt_expiry,
    pg_finfo_dscsa_decrypt_expiry,
    dscsa_try_decrypt_expiry,
    pg_finfo_dscsa_try_decrypt_expiry,
    Some(FieldKind::Expiry)
);
