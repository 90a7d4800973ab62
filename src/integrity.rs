//! Integrity checks for auditors and for imports: authenticating a value without
//! revealing it, and converting values encrypted by other applications.

use dscsa_core::import::open_foreign;
use dscsa_core::Error;
use pgrx::pg_sys;

use crate::audit::{self, Op};
use crate::crypto::{is_bad_value, is_tampering, open_transient, seal_varlena};
use crate::error::{raise, OrRaise};
use crate::fmgr::{arg_bytes, arg_str, optional_arg_bytes, pg_v1_function};
use crate::keys::OpenFor;
use crate::{guc, keys};

// `dscsa.authenticate(value, context)`: 'ok' when the value authenticates under its
// key version, 'failed' when it does not (modified, wrong context or field kind, or a
// key id no keyring entry has), 'malformed' when it is not an envelope. A key version
// that exists but is not loaded is an error, not a failure: an audit must not report
// "tampered" because of a configuration mistake. Never returns plaintext.
/// The verdict on one value; a failure is recorded as a tamper detection, with
/// `location` (table, column, primary key) when the caller knows it.
unsafe fn authenticate(fcinfo: pg_sys::FunctionCallInfo, location: Option<&str>) -> pg_sys::Datum {
    let envelope = arg_bytes(fcinfo, 0);
    let context = optional_arg_bytes(fcinfo, 1);
    let verdict = match open_transient(envelope, context, OpenFor::Decrypt) {
        Ok(_) => {
            if let Ok(env) = dscsa_core::envelope::Envelope::parse(envelope) {
                audit::note_disclosure(Op::Authenticate, env.key_id, env.kind, context).or_raise();
            }
            "ok"
        }
        Err(
            Error::MalformedEnvelope(_) | Error::UnsupportedVersion(_) | Error::UnknownFieldKind(_),
        ) => "malformed",
        Err(e) if is_bad_value(&e) => {
            if is_tampering(&e) {
                let (key_id, kind) = match dscsa_core::envelope::Envelope::parse(envelope) {
                    Ok(env) => (env.key_id, Some(env.kind)),
                    Err(_) => (0, None),
                };
                audit::tamper(Op::Authenticate, key_id, kind, context, location);
            }
            "failed"
        }
        Err(e) => raise(e),
    };
    pgrx::IntoDatum::into_datum(verdict).unwrap_or(pg_sys::Datum::from(0))
}

unsafe fn dscsa_authenticate_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    authenticate(fcinfo, None)
}

// `dscsa._authenticate_at(value, context, location jsonb)`: as authenticate, for reports
// that know where the value is.
unsafe fn dscsa_authenticate_at_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let location: Option<pgrx::JsonB> =
        pgrx::FromDatum::from_datum(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 2), false);
    let location = location.map(|j| dscsa_core::audit::record::canonical_json(&j.0));
    authenticate(fcinfo, location.as_deref())
}

pg_v1_function!(
    fn dscsa_authenticate_at,
    pg_finfo_dscsa_authenticate_at,
    dscsa_authenticate_at_impl
);

pg_v1_function!(fn dscsa_authenticate, pg_finfo_dscsa_authenticate, dscsa_authenticate_impl);

// `dscsa.import_json(value jsonb, import_key text, kind text, context text)`: opens a
// `{"nonce": ..., "ciphertext": ...}` value with import key `import_key` (loaded through
// the KMS hook on first use) and seals its plaintext as an envelope of field `kind`
// under the active version of `dscsa.key_name`. The plaintext exists only in a
// zeroizing buffer between the two steps; errors never echo the value.
unsafe fn dscsa_import_json_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let json: pgrx::JsonB =
        pgrx::FromDatum::from_datum(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 0), false)
            .unwrap_or_else(|| raise(Error::InvalidArgument("value is NULL".into())));
    let import_key = arg_str(fcinfo, 1);
    let kind = crate::blind::parse_kind(arg_str(fcinfo, 2));
    let context = optional_arg_bytes(fcinfo, 3);
    let field = |name: &str| {
        json.0
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| {
                raise(Error::InvalidArgument(format!(
                    "foreign ciphertext: the JSON object needs a string \"{name}\""
                )))
            })
    };
    let (nonce, ciphertext) = (field("nonce"), field("ciphertext"));
    crate::keyring::ensure_loaded(import_key);
    let plaintext = keys::try_import_keys(import_key.as_bytes(), |key| {
        open_foreign(key, nonce, ciphertext)
    })
    .or_raise();
    if !crate::crypto::valid_in_database_encoding(&plaintext) {
        raise(Error::InvalidTextEncoding);
    }
    seal_varlena(Op::Import, guc::key_name(), kind, context, &plaintext).or_raise()
}

pg_v1_function!(fn dscsa_import_json, pg_finfo_dscsa_import_json, dscsa_import_json_impl);
