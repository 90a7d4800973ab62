//! GS1 product identifiers in SQL (docs/GS1.md): validation where identifiers enter,
//! `dscsa.parse_identifier`, and the product-identifier blind index.
//!
//! The rules and the parser are the pure-Rust core (`dscsa_core::gs1`); this layer only
//! reads the settings, converts arguments and raises. Messages name the rule that failed,
//! never the value: an identifier is regulated data.

use std::borrow::Cow;

use dscsa_core::blind::{identifier_pair, identifier_pair_of, IdentifierPair};
use dscsa_core::envelope::FieldKind;
use dscsa_core::gs1::{self, Field, Gs1Error};
use dscsa_core::{Error, Result};
use pgrx::prelude::*;
use zeroize::Zeroizing;

use crate::audit::{self, Op};
use crate::blind::{for_each_loaded_version, parse_kind, with_active_version};
use crate::error::OrRaise;
use crate::fmgr::{arg_i32, arg_str, arg_utf8, pg_v1_function, return_null, varlena_from};
use crate::guc::{GS1_VALIDATION, IDENTIFIER_INDEX_KEY};

/// The rule `bytes` breaks when none of its text is valid UTF-8 for the field.
fn not_text(kind: FieldKind) -> Gs1Error {
    match kind {
        FieldKind::Gtin => Gs1Error::GtinLength,
        FieldKind::Serial => Gs1Error::Charset(Field::Serial),
        FieldKind::Lot => Gs1Error::Charset(Field::Lot),
        _ => Gs1Error::ExpiryFormat,
    }
}

/// The rule `value` breaks as a `kind` field, if any.
fn violation(kind: FieldKind, value: &[u8]) -> Option<Gs1Error> {
    let text = match crate::fmgr::utf8(value) {
        Ok(t) => t,
        Err(_) => return Some(not_text(kind)),
    };
    gs1::canonical_field(kind, text, year_for(kind)).err()
}

/// The year where the rules need it (an expiry's century), 0 otherwise.
fn year_for(kind: FieldKind) -> i32 {
    if kind == FieldKind::Expiry {
        statement_year()
    } else {
        0
    }
}

/// The year (UTC) the current statement started in: the expiry's century window, the
/// same for every row of a statement (the functions that use it are STABLE), and read
/// without a clock call.
pub(crate) fn statement_year() -> i32 {
    gs1::year_at(crate::audit::statement_start_micros())
}

/// The plaintext to seal for a `kind` field: validated and canonical (GTIN-14) unless
/// `dscsa.gs1_validation` is off. `None`: seal `plaintext` as it is.
pub(crate) fn checked_plaintext(
    kind: FieldKind,
    plaintext: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    if kind == FieldKind::Generic || !GS1_VALIDATION.get() {
        return Ok(None);
    }
    let text = crate::fmgr::utf8(plaintext).map_err(|_| not_text(kind))?;
    match gs1::canonical_field(kind, text, year_for(kind))? {
        Cow::Borrowed(_) => Ok(None),
        Cow::Owned(canonical) => Ok(Some(Zeroizing::new(canonical.into_bytes()))),
    }
}

/// The GS1 rule a value breaks as a field of `kind` (gtin, serial, lot, expiry), or NULL
/// when it is valid; never the value itself. Used by `dscsa.gs1_problems`.
#[pg_extern(sql = false)]
fn gs1_violation(value: &str, kind_name: &str) -> Option<String> {
    let kind = parse_kind(kind_name);
    violation(kind, value.as_bytes()).map(|e| e.to_string())
}

/// `dscsa.parse_identifier(text) -> (gtin14, serial, lot, expiry)`: one record, built
/// here (a SQL wrapper around an array-returning function cost 7 µs per call, several
/// times the parse itself).
///
/// # Safety
/// Called only as the V1 function below, whose SQL declaration is STRICT with one text
/// argument and four text OUT parameters.
unsafe fn parse_identifier_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let text = arg_utf8(fcinfo, 0)
        .map_err(|_| Error::Gs1(Gs1Error::Unrecognised))
        .or_raise();
    let pi = gs1::parse_identifier_at(text, statement_year())
        .map_err(Error::from)
        .or_raise();
    let mut tupdesc: pg_sys::TupleDesc = std::ptr::null_mut();
    if pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut tupdesc)
        != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
    {
        crate::error::raise(Error::Internal(
            "parse_identifier must return a record".into(),
        ));
    }
    let tupdesc = pg_sys::BlessTupleDesc(tupdesc);
    let fields = [Some(pi.gtin14), pi.serial, pi.lot, pi.expiry];
    let mut values = [pg_sys::Datum::from(0); 4];
    let mut nulls = [true; 4];
    for (i, field) in fields.iter().enumerate() {
        if let Some(v) = field {
            values[i] = varlena_from(v.as_bytes());
            nulls[i] = false;
        }
    }
    let tuple = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
    pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
}

pg_v1_function!(fn dscsa_parse_identifier, pg_finfo_dscsa_parse_identifier, parse_identifier_impl);

fn identifier_key() -> String {
    let name = IDENTIFIER_INDEX_KEY
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.is_empty() {
        crate::error::raise(Error::InvalidArgument(
            "dscsa.identifier_index_key is not set".into(),
        ));
    }
    name
}

/// The product-identifier blind index of `pair` under the active version of key `key_name`.
fn active_identifier_index(pair: &IdentifierPair, key_name: &str) -> Vec<u8> {
    with_active_version(key_name, FieldKind::Serial, |id, key| {
        key.compute_identifier(id, pair)
    })
}

/// ... and under every loaded version, active first (lookups during a key rotation).
fn identifier_index_candidates(pair: &IdentifierPair, key_name: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for_each_loaded_version(key_name, |id, key| {
        audit::note(Op::BlindIndex, id, FieldKind::Serial, b"");
        out.push(key.compute_identifier(id, pair));
    });
    out
}

fn pair_of(identifier: &str) -> IdentifierPair {
    identifier_pair_of(identifier)
        .map_err(Error::from)
        .or_raise()
}

fn pair(gtin: &str, serial: &str) -> IdentifierPair {
    identifier_pair(gtin, serial)
        .map_err(Error::from)
        .or_raise()
}

// The key is dscsa.identifier_index_key's, or named by the caller (a function that must
// not depend on a session setting: examples/vrs.sql).

#[pg_extern(sql = false)]
fn identifier_index_of(identifier: &str) -> Vec<u8> {
    active_identifier_index(&pair_of(identifier), &identifier_key())
}

#[pg_extern(sql = false)]
fn identifier_index_pair(gtin: &str, serial: &str) -> Vec<u8> {
    active_identifier_index(&pair(gtin, serial), &identifier_key())
}

#[pg_extern(sql = false)]
fn identifier_index_pair_with_key(gtin: &str, serial: &str, key_name: &str) -> Vec<u8> {
    active_identifier_index(&pair(gtin, serial), key_name)
}

#[pg_extern(sql = false)]
fn identifier_index_candidates_of(identifier: &str) -> Vec<Vec<u8>> {
    identifier_index_candidates(&pair_of(identifier), &identifier_key())
}

#[pg_extern(sql = false)]
fn identifier_index_candidates_pair(gtin: &str, serial: &str) -> Vec<Vec<u8>> {
    identifier_index_candidates(&pair(gtin, serial), &identifier_key())
}

#[pg_extern(sql = false)]
fn identifier_index_candidates_pair_with_key(
    gtin: &str,
    serial: &str,
    key_name: &str,
) -> Vec<Vec<u8>> {
    identifier_index_candidates(&pair(gtin, serial), key_name)
}

/// `dscsa.try_identifier_index_candidates(gtin, serial, key_name)`: as
/// `identifier_index_candidates`, but no candidates (NULL; NULL slots where the planner
/// spells the call as slots: `= ANY` finds nothing either way) when the pair breaks a GS1
/// rule, for a lookup whose answer to a malformed request is "no such unit" (a VRS
/// responder: examples/vrs.sql) rather than an error. A malformed pair is answered
/// before the key is looked at.
#[pg_extern(sql = false)]
fn try_identifier_index_candidates(
    gtin: &str,
    serial: &str,
    key_name: &str,
) -> Option<Vec<Vec<u8>>> {
    let pair = identifier_pair(gtin, serial).ok()?;
    Some(identifier_index_candidates(&pair, key_name))
}

/// What a slot does with a request that breaks a GS1 rule.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnInvalid {
    /// 22023 naming the rule, as `identifier_index_candidates` does.
    Raise,
    /// No candidates, as `try_identifier_index_candidates` returns.
    NoCandidates,
}

/// `dscsa._identifier_index_slot(gtin, serial, key_name, slot, slots)` and
/// `dscsa._try_identifier_index_slot(...)`: the `slot`-th (from 1) of
/// `[try_]identifier_index_candidates(gtin, serial, key_name)`, or NULL past the last, for
/// a plan of `slots` slots (see `crate::blind::nth_slot`): what the planner calls in its
/// place (src/lookup/support.rs), one call per loaded key version, all sharing one
/// computation per statement. A VRS lookup runs it at every request, so it is a plain V1
/// function that reads its arguments in place.
///
/// # Safety
/// Called only through the V1 functions below, whose SQL declarations are STRICT with
/// arguments (text, text, text, integer, integer).
unsafe fn identifier_index_slot(
    fcinfo: pg_sys::FunctionCallInfo,
    on_invalid: OnInvalid,
) -> pg_sys::Datum {
    let (gtin, serial) = match on_invalid {
        OnInvalid::Raise => (arg_str(fcinfo, 0), arg_str(fcinfo, 1)),
        // Not UTF-8: not CSET 82 either.
        OnInvalid::NoCandidates => match (arg_utf8(fcinfo, 0), arg_utf8(fcinfo, 1)) {
            (Ok(gtin), Ok(serial)) => (gtin, serial),
            _ => return return_null(fcinfo),
        },
    };
    let key_name = arg_str(fcinfo, 2);
    let slot = arg_i32(fcinfo, 3);
    let slots = crate::blind::planned_slots(fcinfo, 4);
    let valid_pair = || match identifier_pair(gtin, serial) {
        Ok(pair) => Some(pair),
        Err(_) if on_invalid == OnInvalid::NoCandidates => None,
        Err(e) => crate::error::raise(Error::from(e)),
    };
    let candidate = if slots == 1 {
        // Planned with one key version (the usual case): the one candidate, computed
        // directly.
        valid_pair().and_then(|pair| {
            crate::blind::only_candidate(key_name, slot, |id, key| {
                audit::note(Op::BlindIndex, id, FieldKind::Serial, b"");
                key.compute_identifier(id, &pair)
            })
        })
    } else {
        let all =
            crate::blind::shared_candidates(key_name, &["identifier", gtin, serial], slots, || {
                valid_pair()
                    .map(|pair| identifier_index_candidates(&pair, key_name))
                    .unwrap_or_default()
            });
        crate::blind::nth_slot(all, slots, key_name, slot)
    };
    crate::blind::slot_datum(fcinfo, candidate)
}

pg_v1_function!(
    fn identifier_index_slot_wrapper,
    pg_finfo_identifier_index_slot_wrapper,
    |fcinfo| unsafe { identifier_index_slot(fcinfo, OnInvalid::Raise) }
);
pg_v1_function!(
    fn try_identifier_index_slot_wrapper,
    pg_finfo_try_identifier_index_slot_wrapper,
    |fcinfo| unsafe { identifier_index_slot(fcinfo, OnInvalid::NoCandidates) }
);
