//! SQL functions over blind-index keys (docs/BLIND_INDEX.md): the index value of a
//! plaintext under the active key version, and under every loaded version (for lookups
//! that must keep working while the blind-index key is rotated).

use dscsa_core::envelope::FieldKind;
use dscsa_core::Error;
use pgrx::prelude::*;

use crate::audit::{self, Op};
use crate::error::{raise, OrRaise};
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
    crate::keyring::sync_with_keyring();
    let (id, index) = keys::with_active_blind_key(key_name.as_bytes(), |id, key| {
        (id, key.compute(id, kind, value))
    })
    .or_raise();
    audit::note(Op::BlindIndex, id, kind, b"");
    index
}

/// Blind index of `value` under the active version of `key_name`.
#[pg_extern(sql = false)]
fn blind_index(value: &str, key_name: &str, kind_name: &str) -> Vec<u8> {
    active_blind_index(key_name, parse_kind(kind_name), value)
}

/// Blind indexes of `value` under every loaded version of `key_name`, active first:
/// `WHERE col_bidx = ANY (dscsa.blind_index_candidates(...))` finds rows whichever
/// version indexed them, and still uses a btree index on the column.
#[pg_extern(sql = false)]
fn blind_index_candidates(value: &str, key_name: &str, kind_name: &str) -> Vec<Vec<u8>> {
    let kind = parse_kind(kind_name);
    crate::keyring::sync_with_keyring();
    let mut out = Vec::new();
    keys::for_each_blind_key(key_name.as_bytes(), |id, key| {
        audit::note(Op::BlindIndex, id, kind, b"");
        out.push(key.compute(id, kind, value))
    })
    .or_raise();
    out
}

/// The normalized form the blind index hashes (for tests and for comparing a request
/// with a decrypted value the same way the index does).
#[pg_extern(sql = false)]
fn normalize_identifier(value: &str, kind_name: &str) -> String {
    dscsa_core::blind::normalize(parse_kind(kind_name), value).into_owned()
}
