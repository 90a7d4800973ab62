//! Planner support for `dscsa.identifier_index_candidates(gtin, serial, key_name)` and
//! `dscsa.try_identifier_index_candidates(...)` (the same, NULL for a pair that breaks a
//! GS1 rule; its slots are `_try_identifier_index_slot`).
//!
//! A VRS responder probes the product-identifier index with
//! `pi = ANY (dscsa.identifier_index_candidates($1, $2, 'key'))`: one candidate per
//! loaded version of the key, so that units indexed before a rotation are still found.
//! Written that way, the planner sees one array-valued call, counts it as ten elements in
//! a generic plan, and the probe becomes an unnest join or a bitmap scan. This support
//! function (`SupportRequestSimplify`) spells the call as
//! `ARRAY[dscsa._identifier_index_slot($1, $2, 'key', 1, n), ...]`, one slot per version
//! loaded now, as transparent lookups do (condition.rs): the array's length is known,
//! and `= ANY` of it is one index scan with one probe per version. The slots share one
//! computation per statement and return exactly the candidates, in order; a slot refuses
//! (22023) rather than miss a version loaded after the plan was made, and loading a
//! version resets the session's cached plans.
//!
//! Nothing changes (the call stays as written) when `dscsa.blind_index_rewrite` is off,
//! when the key name is not a constant, when the key is not loaded for the current role,
//! or when the role may not execute the candidates function.

use std::ffi::CStr;

use pgrx::pg_sys;

use super::catalog::{session_can_compute, Catalog};
use super::condition::{array_of, slot_calls};
use super::nodes::{cells, is_a};
use crate::fmgr::pg_v1_function;
use crate::guc;

unsafe fn identifier_candidates_support_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY (for the handler): the planner passes one non-NULL `internal` argument, a
    // SupportRequest node.
    let request = pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 0).cast_mut_ptr::<pg_sys::Node>();
    match simplified(request) {
        Some(node) => pg_sys::Datum::from(node),
        None => pg_sys::Datum::from(0usize),
    }
}
pg_v1_function!(
    fn identifier_candidates_support,
    pg_finfo_identifier_candidates_support,
    identifier_candidates_support_impl
);

/// The slots that replace the call in `request`, if it is a simplification request this
/// session can answer.
unsafe fn simplified(request: *mut pg_sys::Node) -> Option<*mut pg_sys::Node> {
    if !is_a(request, pg_sys::NodeTag::T_SupportRequestSimplify) || !guc::BLIND_INDEX_REWRITE.get()
    {
        return None;
    }
    let call = (*request.cast::<pg_sys::SupportRequestSimplify>()).fcall;
    let catalog = Catalog::get()?;
    if call.is_null() {
        return None;
    }
    let slot_fn = if (*call).funcid == catalog.identifier_candidates_fn {
        catalog.identifier_slot_fn
    } else if (*call).funcid == catalog.try_identifier_candidates_fn {
        catalog.try_identifier_slot_fn
    } else {
        return None;
    };
    if slot_fn == pg_sys::InvalidOid {
        return None;
    }
    let args: Vec<*mut pg_sys::Node> = cells((*call).args)
        .iter()
        .map(|c| c.ptr_value.cast())
        .collect();
    let [gtin, serial, key] = args[..] else {
        return None;
    };
    let key_name = constant_text(key)?;
    // The slots are counted from the versions loaded: first follow any rotation made (or
    // rolled back) since, as transparent lookups do (condition.rs).
    crate::keyring::sync_with_keyring();
    if !session_can_compute(&catalog, &key_name, (*call).funcid) {
        return None;
    }
    let count = crate::blind::lookup_slots(&key_name);
    Some(array_of(slot_calls(slot_fn, &[gtin, serial, key], count)))
}

/// The value of a non-NULL text constant.
unsafe fn constant_text(node: *mut pg_sys::Node) -> Option<String> {
    if !is_a(node, pg_sys::NodeTag::T_Const) {
        return None;
    }
    let c = &*node.cast::<pg_sys::Const>();
    if c.constisnull || c.consttype != pg_sys::TEXTOID {
        return None;
    }
    let cstr = pg_sys::text_to_cstring(c.constvalue.cast_mut_ptr());
    Some(CStr::from_ptr(cstr).to_string_lossy().into_owned())
}
