//! Session key management and key wrapping: the Rust side of dscsa.load_key(),
//! unload_key(), loaded_keys(), of creating, importing and re-wrapping (KEK rotation)
//! keyring entries, and the lookups encryption needs on the keyring (key_exists,
//! active_key_id, reload). The keyring table itself and the SECURITY DEFINER wrappers
//! that read it are SQL (sql/keyring.sql); key material only passes through here in
//! zeroizing buffers.

use dscsa_core::blind::BlindIndexKey;
use dscsa_core::cipher::DataKey;
use dscsa_core::keycheck::key_check_value;
use dscsa_core::kms::Operation;
use dscsa_core::nonce::generate_data_key;
use dscsa_core::Error;
use pgrx::prelude::*;
use zeroize::Zeroizing;

use crate::error::{raise, OrRaise};
use crate::keys::{self, KeyMaterial, Scope, SessionKey};
use crate::kms;

struct KeyringRow {
    key_id: u32,
    version: i32,
    active: bool,
    purpose: String,
    blind_index_length: Option<i16>,
    kek_ref: String,
    wrapped_key: Vec<u8>,
    key_check: Vec<u8>,
}

fn internal(what: &str, e: impl std::fmt::Display) -> ! {
    pgrx::error!("pg_dscsa: {what}: {e}")
}

fn to_key_id(id: i32) -> u32 {
    u32::try_from(id).unwrap_or_else(|_| internal("keyring", "negative key_id"))
}

fn keyring_rows(key_name: &str) -> Vec<KeyringRow> {
    Spi::connect(|client| {
        let table = client.select(
            // blind_index_length through to_jsonb: the column does not exist in a 0.1.0
            // keyring, which this library must still read until ALTER EXTENSION UPDATE.
            "SELECT key_id, version, status = 'active', kek_ref, wrapped_key, key_check,
                    purpose, (pg_catalog.to_jsonb(k) ->> 'blind_index_length')::int2
               FROM dscsa.keyring k
              WHERE key_name = $1 AND status IN ('active', 'decrypt_only')
              ORDER BY version",
            None,
            &[key_name.into()],
        )?;
        let mut rows = Vec::new();
        for row in table {
            let missing = || pgrx::spi::Error::NoTupleTable;
            rows.push(KeyringRow {
                key_id: to_key_id(row.get::<i32>(1)?.ok_or_else(missing)?),
                version: row.get::<i32>(2)?.ok_or_else(missing)?,
                active: row.get::<bool>(3)?.ok_or_else(missing)?,
                kek_ref: row.get::<String>(4)?.ok_or_else(missing)?,
                wrapped_key: row.get::<Vec<u8>>(5)?.ok_or_else(missing)?,
                key_check: row.get::<Vec<u8>>(6)?.ok_or_else(missing)?,
                purpose: row.get::<String>(7)?.ok_or_else(missing)?,
                blind_index_length: row.get::<i16>(8)?,
            });
        }
        Ok::<_, pgrx::spi::Error>(rows)
    })
    .unwrap_or_else(|e| internal("reading the keyring failed", e))
}

/// Unwraps a keyring row through the hook and checks the key against its check value.
fn unwrap_raw(
    key_name: &str,
    key_id: u32,
    version: i32,
    kek_ref: &str,
    wrapped_key: &[u8],
    key_check: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let response = kms::call(
        Operation::Unwrap,
        kek_ref,
        key_id,
        key_name,
        version as u32,
        Zeroizing::new(wrapped_key.to_vec()),
    )?;
    if key_check_value(&response.data)[..] != key_check[..] {
        return Err(Error::KeyCheckFailed(key_id));
    }
    Ok(response.data)
}

fn unwrap_row(key_name: &str, row: &KeyringRow) -> Result<KeyMaterial, Error> {
    let raw = unwrap_raw(
        key_name,
        row.key_id,
        row.version,
        &row.kek_ref,
        &row.wrapped_key,
        &row.key_check,
    )?;
    match row.purpose.as_str() {
        "blind_index" => {
            let length = row.blind_index_length.unwrap_or(0).max(0) as usize;
            Ok(KeyMaterial::BlindIndex(BlindIndexKey::from_bytes(
                &raw, length,
            )?))
        }
        "import" => Ok(KeyMaterial::Import(DataKey::from_bytes(&raw)?)),
        _ => Ok(KeyMaterial::Data(DataKey::from_bytes(&raw)?)),
    }
}

/// Whether any keyring entry has this key id (whatever its status). Asked through a
/// SECURITY DEFINER function because decrypting roles cannot read the keyring.
pub fn key_exists(key_id: u32) -> bool {
    let Ok(id) = i32::try_from(key_id) else {
        return false;
    };
    Spi::get_one_with_args::<bool>("SELECT dscsa._key_exists($1)", &[id.into()])
        .unwrap_or_else(|e| internal("looking up a key id failed", e))
        .unwrap_or(false)
}

thread_local! {
    /// The rotation check runs once per transaction of every session that encrypts or
    /// looks up blind indexes, so its statement is prepared once per backend (the
    /// plancache re-plans it if the extension is dropped and re-created).
    static ACTIVE_KEY_PLAN: std::cell::RefCell<Option<pgrx::spi::OwnedPreparedStatement>> =
        const { std::cell::RefCell::new(None) };
}

/// The keyring's active version of key `key_name`, asked through a SECURITY DEFINER
/// function (encrypting and reading roles cannot read the keyring).
pub fn active_key_id(key_name: &str) -> Option<u32> {
    Spi::connect(|client| {
        ACTIVE_KEY_PLAN.with(|plan| {
            let mut plan = plan.borrow_mut();
            if plan.is_none() {
                let stmt = client.prepare(
                    "SELECT dscsa._active_key_id($1)",
                    &[pgrx::PgOid::from(pg_sys::TEXTOID)],
                )?;
                *plan = Some(stmt.keep());
            }
            let Some(stmt) = plan.as_ref() else {
                return Ok(None);
            };
            client
                .select(stmt, Some(1), &[key_name.into()])?
                .first()
                .get_one::<i32>()
        })
    })
    .unwrap_or_else(|e| internal("looking up the active key version failed", e))
    .and_then(|id| u32::try_from(id).ok())
}

/// Reloads `key_name` through the SQL entry point, so that the keyring is read with the
/// extension owner's rights whoever the caller is.
pub fn reload(key_name: &str, scope: Scope) {
    Spi::run_with_args(
        "SELECT dscsa.load_key($1, $2)",
        &[key_name.into(), scope.name().into()],
    )
    .unwrap_or_else(|e| internal("reloading a rotated key failed", e));
}

/// Loads a key into this session through the KMS hook (as the current user, through
/// dscsa.load_key) if no version of it is loaded yet.
pub fn ensure_loaded(name: &str) {
    if !name.is_empty() && keys::loaded_scope(name.as_bytes()).is_none() {
        reload(name, Scope::Session);
    }
}

/// Unwraps every usable version of `key_name` not yet in this session. All or nothing:
/// if any unwrap fails, the ones already unwrapped are dropped (zeroized) with the error.
#[pg_extern(sql = false)]
fn load_key(key_name: &str, scope: &str) -> i32 {
    let scope = Scope::parse(scope).or_raise();
    let rows = keyring_rows(key_name);
    if rows.is_empty() {
        raise(Error::UnknownKey(key_name.to_string()));
    }
    // Versions retired since this session loaded them are forgotten (and zeroized).
    keys::remove_where(|k| k.name == key_name && !rows.iter().any(|r| r.key_id == k.key_id));
    let mut fresh = Vec::new();
    for row in &rows {
        if keys::is_loaded(row.key_id) {
            keys::refresh(row.key_id, row.active, scope);
            continue;
        }
        let key = unwrap_row(key_name, row).or_raise();
        fresh.push(SessionKey {
            key_id: row.key_id,
            name: key_name.to_string(),
            version: row.version,
            active: row.active,
            scope,
            key,
        });
    }
    let active = rows.iter().find(|r| r.active).map(|r| r.key_id);
    keys::insert_all(key_name, fresh, active);
    rows.len() as i32
}

#[pg_extern(sql = false)]
fn unload_key(key_name: &str) -> i32 {
    keys::remove_where(|k| k.name == key_name) as i32
}

#[pg_extern(sql = false)]
fn unload_all_keys() -> i32 {
    keys::remove_where(|_| true) as i32
}

#[pg_extern(sql = false)]
fn loaded_keys() -> TableIterator<
    'static,
    (
        name!(key_name, String),
        name!(version, i32),
        name!(key_id, i32),
        name!(active, bool),
        name!(scope, String),
    ),
> {
    TableIterator::new(
        keys::snapshot()
            .into_iter()
            .map(|(name, version, id, active, scope)| {
                (name, version, id as i32, active, scope.name().to_string())
            }),
    )
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

/// `dscsa._in_transaction_block()`: whether the current statement runs inside an explicit
/// or implicit transaction block, where procedures that COMMIT as they go cannot run.
/// Lets them refuse with a clear message before doing anything.
#[pg_extern(sql = false)]
fn in_transaction_block() -> bool {
    // SAFETY: reads the backend's transaction state only.
    unsafe { pg_sys::IsTransactionBlock() }
}
