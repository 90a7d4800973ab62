//! `dscsa.identifier_matches` and `dscsa.verification_failure_reason` (docs/GS1.md,
//! "Verification"): a VRS responder's comparisons of one unit with a request, on the
//! decrypted fields, in one call each. The decision is the core's
//! (`dscsa_core::gs1::verify`); only a verdict leaves, never a plaintext, but each field
//! opened is recorded and authorized as a decryption (the verdict tells whether the
//! plaintext equals the request).
//!
//! Why functions and not SQL: the same decision written with `dscsa_decrypt` and
//! `dscsa.normalize_identifier` is about a dozen function calls per request, and
//! PostgreSQL prepares each of them again at every execution of a cached plan
//! (docs/BENCHMARKS.md, "VRS verification lookups").

use dscsa_core::envelope::FieldKind;
use dscsa_core::gs1::verify;
use dscsa_core::Error;
use pgrx::pg_sys;
use zeroize::Zeroizing;

use crate::audit::Op;
use crate::crypto::{open_for_comparison, record_tampering};
use crate::error::raise;
use crate::fmgr::{arg_bytes, arg_utf8, pg_v1_function, return_null, varlena_from};
use crate::gs1::statement_year;

/// Decrypted field argument `n` of `kind` as text; a value that does not authenticate is
/// recorded as a tamper detection and raises, as `dscsa_decrypt` does.
///
/// # Safety
/// Argument `n` must exist, be non-NULL and be a varlena (the SQL declarations are STRICT).
unsafe fn field(fcinfo: pg_sys::FunctionCallInfo, n: usize, kind: FieldKind) -> Zeroizing<String> {
    let envelope = arg_bytes(fcinfo, n);
    match open_for_comparison(envelope, kind) {
        // The buffer moves into the String (no copy); either way it is zeroized on drop.
        Ok(mut plaintext) => match String::from_utf8(std::mem::take(&mut *plaintext)) {
            Ok(text) => Zeroizing::new(text),
            Err(e) => {
                let mut bytes = e.into_bytes();
                zeroize::Zeroize::zeroize(&mut bytes);
                raise(Error::InvalidTextEncoding)
            }
        },
        Err(e) => {
            record_tampering(Op::Decrypt, envelope, b"", &e);
            raise(e)
        }
    }
}

/// Request argument `n` as text (text arguments are valid UTF-8 in a UTF-8 database; in
/// another encoding a non-UTF-8 request cannot equal a stored GS1 value).
///
/// # Safety
/// As [`field`], for a text argument.
unsafe fn request<'a>(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Option<&'a str> {
    arg_utf8(fcinfo, n).ok()
}

/// `dscsa.identifier_matches(gtin, serial, request_gtin, request_serial) -> boolean`.
/// The serial number is compared first: a unit found by the identifier index whose serial
/// differs (a truncated-HMAC collision, or a swapped index value) is not decrypted further.
unsafe fn identifier_matches_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let (Some(gtin), Some(serial)) = (request(fcinfo, 2), request(fcinfo, 3)) else {
        return pg_sys::Datum::from(false);
    };
    let matches = verify::serial_matches(&field(fcinfo, 1, FieldKind::Serial), serial)
        && verify::gtin_matches(&field(fcinfo, 0, FieldKind::Gtin), gtin);
    pg_sys::Datum::from(matches)
}

/// `dscsa.verification_failure_reason(lot, expiry, request_lot, request_expiry) -> text`:
/// NULL when both match, else the PI-VRS reason code.
unsafe fn verification_failure_reason_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let lot = field(fcinfo, 0, FieldKind::Lot);
    let expiry = field(fcinfo, 1, FieldKind::Expiry);
    let mismatch = match (request(fcinfo, 2), request(fcinfo, 3)) {
        (Some(want_lot), Some(want_expiry)) => {
            verify::lot_expiry_mismatch(&lot, &expiry, want_lot, want_expiry, statement_year())
        }
        _ => Some(verify::Mismatch::LotAndExpiry),
    };
    match mismatch {
        None => return_null(fcinfo),
        Some(m) => varlena_from(m.reason().as_bytes()),
    }
}

pg_v1_function!(
    fn dscsa_identifier_matches,
    pg_finfo_dscsa_identifier_matches,
    identifier_matches_impl
);
pg_v1_function!(
    fn dscsa_verification_failure_reason,
    pg_finfo_dscsa_verification_failure_reason,
    verification_failure_reason_impl
);
