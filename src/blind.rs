//! SQL functions over blind-index keys (docs/BLIND_INDEX.md): the index value of a
//! plaintext under the active key version, and under every loaded version (for lookups
//! that must keep working while the blind-index key is rotated).

use dscsa_core::blind::BlindIndexKey;
use dscsa_core::envelope::FieldKind;
use dscsa_core::Error;
use pgrx::prelude::*;

use crate::audit::{self, Op};
use crate::error::{raise, OrRaise};
use crate::fmgr::{arg_i32, arg_str, pg_v1_function, return_null, varlena_from};
use crate::keys;

/// A field kind by name, or 22023.
pub(crate) fn parse_kind(name: &str) -> FieldKind {
    FieldKind::from_name(name).unwrap_or_else(|| {
        raise(Error::InvalidArgument(
            "kind must be one of generic, gtin, serial, lot, expiry".into(),
        ))
    })
}

/// Blind index of `value` under the active version of `key_name` (after following a
/// rotation); shared by the SQL function and the row triggers.
pub(crate) fn active_blind_index(key_name: &str, kind: FieldKind, value: &str) -> Vec<u8> {
    with_active_version(key_name, kind, |id, key| key.compute(id, kind, value))
}

/// `compute` under the active version of blind-index key `key_name`, after following a
/// rotation; recorded in the audit trail as a blind-index use of `kind`. Shared by the
/// field blind index and the product-identifier index (src/gs1.rs).
pub(crate) fn with_active_version(
    key_name: &str,
    kind: FieldKind,
    compute: impl FnOnce(u32, &BlindIndexKey) -> Vec<u8>,
) -> Vec<u8> {
    crate::keyring::sync_with_keyring();
    let (id, index) =
        keys::with_active_blind_key(key_name.as_bytes(), |id, key| (id, compute(id, key)))
            .or_raise();
    audit::note(Op::BlindIndex, id, kind, b"");
    index
}

/// Calls `each` for every loaded version of blind-index key `key_name` (active first),
/// after following a rotation: lookups that must find rows of any version.
pub(crate) fn for_each_loaded_version(key_name: &str, each: impl FnMut(u32, &BlindIndexKey)) {
    crate::keyring::sync_with_keyring();
    keys::for_each_blind_key(key_name.as_bytes(), each).or_raise();
}

/// Blind index of `value` under the active version of `key_name`.
#[pg_extern(sql = false)]
fn blind_index(value: &str, key_name: &str, kind_name: &str) -> Vec<u8> {
    active_blind_index(key_name, parse_kind(kind_name), value)
}

/// The field kinds a lookup hashes with: one, or all of them for `any` (a generic column
/// may hold envelopes of every kind, and the blind-index trigger hashes with the
/// envelope's own kind).
fn lookup_kinds(kind_name: &str) -> &'static [FieldKind] {
    if kind_name == "any" {
        return &FieldKind::ALL;
    }
    let kind = parse_kind(kind_name);
    let at = FieldKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
    &FieldKind::ALL[at..=at]
}

/// Blind indexes of every value under every loaded version of `key_name` (active
/// first) and every kind asked for.
fn candidates_of(values: &[&str], key_name: &str, kinds: &[FieldKind]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * kinds.len());
    for_each_loaded_version(key_name, |id, key| {
        for &kind in kinds {
            audit::note(Op::BlindIndex, id, kind, b"");
            for value in values {
                out.push(key.compute(id, kind, value));
            }
        }
    });
    out
}

/// Blind indexes of `value` under every loaded version of `key_name`, active first:
/// `WHERE col_bidx = ANY (dscsa.blind_index_candidates(...))` finds rows whichever
/// version indexed them, and still uses a btree index on the column. Kind `any`: under
/// every field kind too (what the planner asks for a generic column, src/lookup.rs).
#[pg_extern(sql = false)]
fn blind_index_candidates(value: &str, key_name: &str, kind_name: &str) -> Vec<Vec<u8>> {
    candidates_of(&[value], key_name, lookup_kinds(kind_name))
}

/// As `blind_index_candidates`, for each value of an IN list (NULLs match nothing).
#[pg_extern(sql = false)]
fn blind_index_candidates_array<'a>(
    values: pgrx::Array<'a, &'a str>,
    key_name: &str,
    kind_name: &str,
) -> Vec<Vec<u8>> {
    let values: Vec<&str> = values.iter().flatten().collect();
    candidates_of(&values, key_name, lookup_kinds(kind_name))
}

/// The candidates the slots of one lookup share: computed by the first slot of a
/// statement, reused by the others (same request, key, statement and loaded versions).
struct SlotCache {
    statement: pg_sys::TimestampTz,
    versions: i32,
    key_name: String,
    request: Vec<String>,
    candidates: Vec<Vec<u8>>,
}

thread_local! {
    static SLOT_CACHE: std::cell::RefCell<Option<SlotCache>> = const { std::cell::RefCell::new(None) };
}

/// The candidates of `request` (what they are computed from, e.g. kind and value) under
/// blind-index key `key_name` for a lookup spelled as `slots` slots: `compute`d by the
/// first slot of a statement, reused by the other slots of the same lookup. A lookup of
/// one slot (one key version loaded: the usual case) computes them directly.
pub(crate) fn shared_candidates(
    key_name: &str,
    request: &[&str],
    slots: usize,
    compute: impl FnOnce() -> Vec<Vec<u8>>,
) -> Vec<Vec<u8>> {
    if slots <= 1 {
        return compute();
    }
    let statement = crate::unguarded::statement_start();
    let versions = keys::versions_loaded(key_name);
    let hit = SLOT_CACHE.with(|c| {
        c.borrow().as_ref().and_then(|e| {
            (e.statement == statement
                && e.versions == versions
                && e.key_name == key_name
                && e.request
                    .iter()
                    .map(String::as_str)
                    .eq(request.iter().copied()))
            .then(|| e.candidates.clone())
        })
    });
    if let Some(candidates) = hit {
        return candidates;
    }
    let candidates = compute();
    SLOT_CACHE.with(|c| {
        *c.borrow_mut() = Some(SlotCache {
            statement,
            versions,
            key_name: key_name.to_owned(),
            request: request.iter().map(|r| (*r).to_owned()).collect(),
            candidates: candidates.clone(),
        })
    });
    candidates
}

/// The `slot`-th (from 1) of `all`, or NULL past the last. Refuses (22023) when the
/// candidates do not fit in the `slots` the plan spelled, so that a lookup never silently
/// misses rows indexed under a version it did not ask for.
pub(crate) fn nth_slot(
    all: Vec<Vec<u8>>,
    slots: usize,
    key_name: &str,
    slot: i32,
) -> Option<Vec<u8>> {
    if all.len() > slots {
        refuse_stale_plan(key_name);
    }
    let slot = usize::try_from(slot).ok()?.checked_sub(1)?;
    all.into_iter().nth(slot)
}

/// Slot `slot` of a lookup spelled as one slot (one key version loaded when it was
/// planned, the usual case): its candidate, `compute`d directly without the
/// per-statement cache the slots of a several-version lookup share, or NULL for a later
/// slot (as `nth_slot`). A version loaded since the plan was made is refused as in
/// `nth_slot`.
pub(crate) fn only_candidate(
    key_name: &str,
    slot: i32,
    compute: impl FnOnce(u32, &BlindIndexKey) -> Vec<u8>,
) -> Option<Vec<u8>> {
    let mut compute = Some(compute);
    let mut only = None;
    let mut versions = 0;
    for_each_loaded_version(key_name, |id, key| {
        versions += 1;
        if let Some(compute) = compute.take() {
            only = Some(compute(id, key));
        }
    });
    match only {
        Some(index) if versions == 1 => (slot == 1).then_some(index),
        // for_each_loaded_version raises when no version is loaded.
        _ => refuse_stale_plan(key_name),
    }
}

/// A slot function's result: the candidate, or NULL past the last.
///
/// # Safety
/// `fcinfo` is the slot function's own call.
pub(crate) unsafe fn slot_datum(
    fcinfo: pg_sys::FunctionCallInfo,
    candidate: Option<Vec<u8>>,
) -> pg_sys::Datum {
    match candidate {
        Some(index) => varlena_from(&index),
        None => return_null(fcinfo),
    }
}

/// A lookup found more candidates than its plan has slots (a version loaded after the
/// plan was made, and the plan still running): 22023 rather than miss a row.
fn refuse_stale_plan(key_name: &str) -> ! {
    raise(Error::InvalidArgument(format!(
        "more versions of blind-index key \"{key_name}\" are loaded than this plan was made for: run the statement again (DISCARD PLANS)"
    )))
}

/// How many slots per field kind the planner spells for a lookup with blind-index key
/// `key_name` (src/lookup): one per version loaded now, which the planner brings in step
/// with the keyring first. A rotation by another session invalidates this session's
/// cached plans (src/rotation.rs) and loading a version resets them (keys::insert_all),
/// so a cached plan is made again for the new count before it runs. A plan can still
/// outlive a load (a cursor, a statement that runs on while its session loads a version):
/// its slot functions are told how many slots it has and refuse to run for more versions
/// than that (`nth_slot`, `only_candidate`) rather than miss rows.
pub(crate) fn lookup_slots(key_name: &str) -> usize {
    usize::try_from(keys::versions_loaded(key_name))
        .unwrap_or(0)
        .max(1)
}

/// All the slots of a lookup: `lookup_slots` for each field kind it hashes under (what
/// the planner spells, and tells each slot).
pub(crate) fn lookup_slot_count(key_name: &str, kind_name: &str) -> usize {
    lookup_slots(key_name) * lookup_kinds(kind_name).len()
}

/// How many slots the plan calling a slot function has: its argument `n`.
///
/// # Safety
/// Argument `n` must exist, be non-NULL and be an int4.
pub(crate) unsafe fn planned_slots(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> usize {
    usize::try_from(arg_i32(fcinfo, n)).unwrap_or(0)
}

/// `dscsa._blind_index_slot(value, key_name, kind, slot, slots)`: the `slot`-th (from 1)
/// of `blind_index_candidates(value, key_name, kind)`, or NULL past the last, for a plan
/// of `slots` slots (see `nth_slot`). A transparent lookup (src/lookup) runs it at every
/// execution, so it is a plain V1 function that reads its arguments in place.
///
/// # Safety
/// Called only through the V1 function below, whose SQL declaration is STRICT with
/// arguments (text, text, text, integer, integer).
unsafe fn blind_index_slot(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let value = arg_str(fcinfo, 0);
    let key_name = arg_str(fcinfo, 1);
    let kind_name = arg_str(fcinfo, 2);
    let slot = arg_i32(fcinfo, 3);
    let slots = planned_slots(fcinfo, 4);
    // The kind name is resolved once per call.
    let kinds = lookup_kinds(kind_name);
    let candidate = if let ([kind], 1) = (kinds, slots) {
        // Planned with one key version and one kind (the usual case): the one candidate,
        // computed directly.
        let kind = *kind;
        only_candidate(key_name, slot, |id, key| {
            audit::note(Op::BlindIndex, id, kind, b"");
            key.compute(id, kind, value)
        })
    } else {
        let all = shared_candidates(key_name, &[kind_name, value], slots, || {
            candidates_of(&[value], key_name, kinds)
        });
        nth_slot(all, slots, key_name, slot)
    };
    slot_datum(fcinfo, candidate)
}

pg_v1_function!(
    fn blind_index_slot_wrapper,
    pg_finfo_blind_index_slot_wrapper,
    blind_index_slot
);

/// The normalized form the blind index hashes (for tests and for comparing a request
/// with a decrypted value the same way the index does).
#[pg_extern(sql = false)]
fn normalize_identifier(value: &str, kind_name: &str) -> String {
    dscsa_core::blind::normalize(parse_kind(kind_name), value).into_owned()
}
