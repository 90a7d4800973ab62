//! Wrapping keys for the keyring: new data and blind-index keys, imported application
//! keys, and re-wrapping under another KEK (KEK rotation). Called only by the key
//! administration functions of sql/keyring.sql (SECURITY DEFINER, EXECUTE granted to no
//! role directly); key material passes through here in zeroizing buffers only and the
//! functions return the wrapped form and its check value.

use dscsa_core::keycheck::key_check_value;
use dscsa_core::kms::Operation;
use dscsa_core::nonce::generate_data_key;
use dscsa_core::Error;
use pgrx::prelude::*;
use zeroize::Zeroizing;

use crate::error::{raise, OrRaise};
use crate::keyring::unwrap_raw;
use crate::kms;

fn to_key_id(id: i32) -> u32 {
    u32::try_from(id).unwrap_or_else(|_| raise(Error::Internal("negative key_id".into())))
}

/// What the wrapping functions return: wrapped key, KEK reference, key check value.
type Wrapped = (Vec<u8>, String, Vec<u8>);

/// Has the hook wrap `key` under `kek` and checks that the hook can unwrap it again
/// before anything depends on it: a hook that cannot unwrap what it wrapped would make
/// every value under this key unrecoverable.
fn wrap_and_verify(key_id: i32, key_name: &str, version: i32, kek: &str, key: &[u8]) -> Wrapped {
    let id = to_key_id(key_id);
    let check = key_check_value(key);
    let wrapped = kms::call(
        Operation::Wrap,
        kek,
        id,
        key_name,
        version as u32,
        Zeroizing::new(key.to_vec()),
    )
    .or_raise();
    let kek_ref = wrapped.kek.clone().unwrap_or_else(|| kek.to_string());
    drop(unwrap_raw(key_name, id, version, &kek_ref, &wrapped.data, &check).or_raise());
    (wrapped.data.to_vec(), kek_ref, check.to_vec())
}

/// A fresh random key (data or blind-index), wrapped. Returns only the wrapped form and
/// its check value.
#[pg_extern(sql = false)]
fn wrap_new_key(
    key_id: i32,
    key_name: &str,
    version: i32,
    kek: &str,
) -> TableIterator<
    'static,
    (
        name!(wrapped_key, Vec<u8>),
        name!(kek_ref, String),
        name!(key_check, Vec<u8>),
    ),
> {
    let key = generate_data_key().or_raise();
    TableIterator::once(wrap_and_verify(key_id, key_name, version, kek, &key[..]))
}

/// Another application's key, fetched from the KMS by `reference` (hook operation
/// `import`) and wrapped under `kek` like our own keys.
#[pg_extern(sql = false)]
fn wrap_imported_key(
    key_id: i32,
    key_name: &str,
    version: i32,
    reference: &str,
    kek: &str,
) -> TableIterator<
    'static,
    (
        name!(wrapped_key, Vec<u8>),
        name!(kek_ref, String),
        name!(key_check, Vec<u8>),
    ),
> {
    let id = to_key_id(key_id);
    let key = kms::call(
        Operation::Import,
        reference,
        id,
        key_name,
        version as u32,
        Zeroizing::new(Vec::new()),
    )
    .or_raise();
    TableIterator::once(wrap_and_verify(key_id, key_name, version, kek, &key.data))
}

/// KEK rotation for one keyring entry: unwrap under its current KEK, wrap under
/// `new_kek`, prove the new wrap unwraps to the same key (check value). No data changes.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn rewrap_key(
    key_id: i32,
    key_name: &str,
    version: i32,
    kek_ref: &str,
    wrapped_key: &[u8],
    key_check: &[u8],
    new_kek: &str,
) -> TableIterator<
    'static,
    (
        name!(wrapped_key, Vec<u8>),
        name!(kek_ref, String),
        name!(key_check, Vec<u8>),
    ),
> {
    let key = unwrap_raw(
        key_name,
        to_key_id(key_id),
        version,
        kek_ref,
        wrapped_key,
        key_check,
    )
    .or_raise();
    TableIterator::once(wrap_and_verify(key_id, key_name, version, new_kek, &key))
}
