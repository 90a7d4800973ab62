//! Session key management: the Rust side of dscsa.load_key(), unload_key(),
//! loaded_keys(), implicit loads by triggers and imports, and keeping loaded keys in step
//! with the keyring (rotations, retirements and revoked grants made by other sessions).
//!
//! The keyring and the key grants are read here, with the extension owner's rights and a
//! pinned search_path (src/owner.rs), by statements written in this file; the caller of
//! dscsa.load_key() runs with its own rights, so the key can be bound to it and its
//! per-key grants checked. Wrapping for new keys and KEK rotation is in src/wrapping.rs.

use dscsa_core::access::{KeyPrivilege, Privileges};
use dscsa_core::blind::BlindIndexKey;
use dscsa_core::cipher::DataKey;
use dscsa_core::keycheck::key_check_value;
use dscsa_core::kms::Operation;
use dscsa_core::locked::Locked;
use dscsa_core::Error;
use pgrx::prelude::*;
use zeroize::Zeroizing;

use crate::authz::{self, Routine};
use crate::error::{raise, OrRaise};
use crate::keys::{self, KeyMaterial, LoadedBy, Scope, SessionKey};
use crate::{audit, keycache, kms, owner, rotation};

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

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

fn to_key_id(id: i32) -> Result<u32, Error> {
    u32::try_from(id).map_err(|_| internal("keyring", "negative key_id"))
}

/// The loadable versions of `key_name` (read as the extension owner).
fn keyring_rows(key_name: &str) -> Result<Vec<KeyringRow>, Error> {
    owner::as_extension_owner(|| {
        Spi::connect(|client| {
            let table = client.select(
                // blind_index_length through to_jsonb: the column does not exist in a 0.1.0
                // keyring, which this library must still read until ALTER EXTENSION UPDATE.
                "SELECT key_id, version, status = 'active', kek_ref, wrapped_key, key_check,
                        purpose, (to_jsonb(k) ->> 'blind_index_length')::int2
                   FROM dscsa.keyring k
                  WHERE key_name = $1 AND status IN ('active', 'decrypt_only')
                    AND purpose <> 'audit'  -- the audit key is the worker's alone
                  ORDER BY version",
                None,
                &[key_name.into()],
            )?;
            let mut rows = Vec::new();
            for row in table {
                let missing = || pgrx::spi::Error::NoTupleTable;
                rows.push((
                    row.get::<i32>(1)?.ok_or_else(missing)?,
                    KeyringRow {
                        key_id: 0,
                        version: row.get::<i32>(2)?.ok_or_else(missing)?,
                        active: row.get::<bool>(3)?.ok_or_else(missing)?,
                        kek_ref: row.get::<String>(4)?.ok_or_else(missing)?,
                        wrapped_key: row.get::<Vec<u8>>(5)?.ok_or_else(missing)?,
                        key_check: row.get::<Vec<u8>>(6)?.ok_or_else(missing)?,
                        purpose: row.get::<String>(7)?.ok_or_else(missing)?,
                        blind_index_length: row.get::<i16>(8)?,
                    },
                ));
            }
            Ok::<_, pgrx::spi::Error>(rows)
        })
    })?
    .map_err(|e| internal("reading the keyring failed", e))?
    .into_iter()
    .map(|(id, mut row)| {
        row.key_id = to_key_id(id)?;
        Ok(row)
    })
    .collect()
}

/// What `role` may do with key `key_name`: everything for a superuser; otherwise the
/// privileges granted by dscsa.grant_key to it or to a role whose privileges it has. A
/// database still on the 0.1.0/0.2.0 schema (library installed, ALTER EXTENSION UPDATE
/// not yet run) has no grants table: there the role-level grants alone decide, as before.
fn privileges_of(role: pg_sys::Oid, key_name: &str) -> Result<Privileges, Error> {
    if owner::is_superuser(role) {
        return Ok(Privileges::ALL);
    }
    let names = owner::as_extension_owner(|| {
        Spi::connect(|client| {
            let exists = client
                .select(
                    "SELECT to_regclass('dscsa.key_grants') IS NOT NULL",
                    None,
                    &[],
                )?
                .first()
                .get_one::<bool>()?
                .unwrap_or(false);
            if !exists {
                return Ok(None);
            }
            let rows = client.select(
                "SELECT DISTINCT g.privilege FROM dscsa.key_grants g
                  WHERE g.key_name = $1 AND pg_has_role($2, g.grantee, 'USAGE')",
                None,
                &[key_name.into(), role.into()],
            )?;
            let mut names = Vec::new();
            for row in rows {
                if let Some(n) = row.get::<String>(1)? {
                    names.push(n);
                }
            }
            Ok::<_, pgrx::spi::Error>(Some(names))
        })
    })?
    .map_err(|e| internal("reading the key grants failed", e))?;
    match names {
        None => Ok(Privileges::ALL),
        Some(names) => Privileges::from_names(names.iter().map(String::as_str)),
    }
}

/// The keyring's active version of key `key_name`.
fn active_key_id(key_name: &str) -> Result<Option<u32>, Error> {
    let id = owner::as_extension_owner(|| {
        crate::readonly::one::<i32>(
            "SELECT k.key_id FROM dscsa.keyring k WHERE k.key_name = $1 AND k.status = 'active'",
            &[key_name.into()],
        )
    })?
    .map_err(|e| internal("looking up the active key version failed", e))?;
    Ok(id.and_then(|id| u32::try_from(id).ok()))
}

/// Whether any keyring entry has this key id (whatever its status). Asked only on the
/// decrypt error path, to tell a key that is not loaded from a key id no entry has.
pub fn key_exists(key_id: u32) -> bool {
    let Ok(id) = i32::try_from(key_id) else {
        return false;
    };
    owner::as_extension_owner(|| {
        crate::readonly::one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM dscsa.keyring k WHERE k.key_id = $1)",
            &[id.into()],
        )
    })
    .or_raise()
    .unwrap_or_else(|e| raise(internal("looking up a key id failed", e)))
    .unwrap_or(false)
}

/// Unwraps a keyring row through the hook and checks the key against its check value.
pub(crate) fn unwrap_raw(
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

/// A keyring row's key, from the cluster's key cache or through the hook
/// (src/keycache.rs), with when it expires (its hard TTL; None without one).
fn unwrap_row(key_name: &str, row: &KeyringRow) -> Result<(KeyMaterial, Option<i64>), Error> {
    let cached = keycache::get_or_unwrap(
        &keycache::Row {
            key_id: row.key_id,
            version: row.version,
            name: key_name,
            check: &row.key_check,
        },
        || {
            unwrap_raw(
                key_name,
                row.key_id,
                row.version,
                &row.kek_ref,
                &row.wrapped_key,
                &row.key_check,
            )
        },
    )?;
    let raw = &cached.raw;
    let hard = keycache::hard_ttl_us();
    let expires = (hard > 0).then(|| cached.unwrapped_at_us + hard);
    let material = match row.purpose.as_str() {
        "blind_index" => {
            let length = row.blind_index_length.unwrap_or(0).max(0) as usize;
            KeyMaterial::BlindIndex(Locked::new(BlindIndexKey::from_bytes(raw, length)?))
        }
        "import" => KeyMaterial::Import(Locked::new(DataKey::from_bytes(raw)?)),
        _ => KeyMaterial::Data(Locked::new(DataKey::from_bytes(raw)?)),
    };
    Ok((material, expires))
}

/// Unwraps every usable version of `key_name` not yet in this session, for `role`. All or
/// nothing: if any unwrap fails, the ones already unwrapped are dropped (zeroized) with
/// the error. A role with no grant on the key is refused before the hook runs, with the
/// same message whether or not the key exists.
fn load(key_name: &str, scope: Scope, explicit: bool, role: pg_sys::Oid) -> Result<i32, Error> {
    let result = load_versions(key_name, scope, explicit, role);
    let detail = |extra: (&str, serde_json::Value)| {
        let mut d = serde_json::json!({ "scope": scope.name(), "explicit": explicit });
        d[extra.0] = extra.1;
        d
    };
    match &result {
        Ok(loaded) if !loaded.is_empty() => audit::key_event_now(
            "load_key",
            key_name,
            "ok",
            detail(("versions", serde_json::json!(loaded))),
        ),
        Ok(_) => {}
        Err(e) => audit::key_event_now(
            "load_key",
            key_name,
            "failed",
            detail(("failure", serde_json::json!(failure_class(e)))),
        ),
    }
    result.map(|_| keys::versions_loaded(key_name))
}

/// The class of a failed load, for its audit record (never key bytes or values).
fn failure_class(e: &Error) -> String {
    match e {
        Error::Kms(m) => format!("kms: {m}"),
        Error::KeyCheckFailed(_) => "kms: wrong key (key check value)".into(),
        Error::PermissionDenied(_) => "not granted".into(),
        Error::UnknownKey(_) => "unknown key".into(),
        other => other.sqlstate().code().to_string(),
    }
}

/// Unwraps what `load` needs; returns the versions it unwrapped.
fn load_versions(
    key_name: &str,
    scope: Scope,
    explicit: bool,
    role: pg_sys::Oid,
) -> Result<Vec<i32>, Error> {
    let privileges = privileges_of(role, key_name)?;
    if privileges.is_empty() {
        return Err(Error::PermissionDenied(format!(
            "the current role holds no grant on key \"{key_name}\" (dscsa.grant_key)"
        )));
    }
    let rows = keyring_rows(key_name)?;
    if rows.is_empty() {
        return Err(Error::UnknownKey(key_name.to_string()));
    }
    // Versions retired since this session loaded them are forgotten (and zeroized).
    keys::remove_where(|k| k.name == key_name && !rows.iter().any(|r| r.key_id == k.key_id));
    let explicit = explicit || keys::loaded_explicitly(key_name);
    let by = LoadedBy {
        role: role.to_u32(),
        privileges,
        scope,
        explicit,
    };
    let mut fresh = Vec::new();
    for row in &rows {
        if keys::is_loaded(row.key_id) {
            keys::refresh(row.key_id, row.active, &by);
            continue;
        }
        let (key, expires_at_us) = unwrap_row(key_name, row)?;
        fresh.push(SessionKey {
            expires_at_us,
            key_id: row.key_id,
            name: key_name.to_string(),
            version: row.version,
            active: row.active,
            scope,
            explicit,
            loaded_by: by.role,
            privileges,
            key,
        });
    }
    let active = rows.iter().find(|r| r.active).map(|r| r.key_id);
    let unwrapped = fresh.iter().map(|k| k.version).collect();
    keys::insert_all(key_name, fresh, active);
    Ok(unwrapped)
}

/// Loads `name` for the current role if no version of it is usable by that role yet:
/// what a trigger or an import does on first use. The key takes the scope the session
/// chose for its explicit loads, never more (keys::implicit_scope), and the role needs
/// EXECUTE on dscsa.load_key, as for an explicit load.
pub fn ensure_loaded(name: &str) {
    if name.is_empty() || keys::is_name_loaded_for_current_role(name) {
        return;
    }
    authz::require_execute(Routine::LoadKey).or_raise();
    load(name, keys::implicit_scope(), false, owner::current_user()).or_raise();
}

/// Brings the loaded keys in step with the keyring after another session changed it
/// (src/rotation.rs tells when): a rotated key is reloaded so new values go under its
/// new active version and lookups include it; a key whose versions were all retired
/// stops encrypting; revoked grants take effect. Skipped while a parallel plan runs (no
/// SPI is allowed then); the next statement of the session outside one catches up.
pub fn sync_with_keyring() {
    if keys::expiry_due() {
        refresh_expired_keys();
    }
    let Some(generation) = rotation::stale() else {
        return;
    };
    // SAFETY: IsInParallelMode only reads backend-local transaction state.
    if unsafe { pg_sys::IsInParallelMode() } {
        return;
    }
    for name in keys::loaded_names() {
        let allowed: Vec<(u32, Privileges)> = keys::loaders_of(&name)
            .into_iter()
            .map(|loader| {
                let p = privileges_of(pg_sys::Oid::from(loader), &name).or_raise();
                (loader, p)
            })
            .collect();
        keys::restrict(&name, &allowed);
        let Some(scope) = keys::loaded_scope(name.as_bytes()) else {
            continue; // every grant on it was revoked: dropped above
        };
        match active_key_id(&name).or_raise() {
            Some(id) if keys::is_loaded_active(id) => {}
            Some(_) => {
                // Reloaded for the role that holds it: the current role if that role may
                // use it, else the key stays on its old version until its loader returns.
                if keys::is_name_loaded_for_current_role(&name) {
                    load(&name, scope, false, owner::current_user()).or_raise();
                }
            }
            None => {
                // No active version any more (all retired): keep the decrypt-only ones,
                // but nothing may be encrypted under a stale active flag.
                keys::deactivate(&name);
            }
        }
    }
    rotation::synced(generation);
}

/// Keys past their hard TTL (dscsa.key_cache_max_ttl) are unwrapped again, from the
/// cluster's cache if another session refreshed them, else through the hook, for the
/// role that loaded them (whose grants are checked again). If that fails (KMS down),
/// they stay as they are and their use fails with SQLSTATE SK002; the next statement
/// tries again (at most once a second).
fn refresh_expired_keys() {
    // SAFETY: IsInParallelMode only reads backend-local transaction state.
    if unsafe { pg_sys::IsInParallelMode() } {
        return;
    }
    for (name, scope, explicit, loader) in keys::expired() {
        let taken = keys::take_expired(&name);
        match load(&name, scope, explicit, pg_sys::Oid::from(loader)) {
            Ok(_) => keys::refresh_succeeded(),
            Err(e) => {
                keys::refresh_failed(e.to_string());
                keys::restore(taken);
            }
        }
    }
}

/// `dscsa.load_key(key_name, scope)` (STRICT): runs with the caller's rights; the key is
/// bound to the caller (current_user) and carries the caller's per-key privileges. A V1
/// function of its own, so that a KMS taken to be down reaches the caller as SQLSTATE
/// SK001 (src/error.rs).
///
/// # Safety
/// Called only through the V1 wrapper below, with two non-NULL text arguments.
unsafe fn load_key_for_caller(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let key_name = crate::fmgr::arg_str(fcinfo, 0);
    let scope = Scope::parse(crate::fmgr::arg_str(fcinfo, 1)).or_raise();
    pg_sys::Datum::from(load(key_name, scope, true, owner::current_user()).or_raise())
}

crate::fmgr::pg_v1_function!(
    fn load_key_for_caller_wrapper,
    pg_finfo_load_key_for_caller_wrapper,
    load_key_for_caller
);

/// The 0.1.0/0.2.0 entry point, declared SECURITY DEFINER by those versions' scripts: in
/// a database whose ALTER EXTENSION UPDATE has not run yet, the key is bound to the role
/// outside the definer call (the session's current role), not to the definer.
#[pg_extern(sql = false)]
fn load_key(key_name: &str, scope: &str) -> i32 {
    let scope = Scope::parse(scope).or_raise();
    // SAFETY: reads a backend global.
    let outer = unsafe { pg_sys::GetOuterUserId() };
    load(key_name, scope, true, outer).or_raise()
}

#[pg_extern(sql = false)]
fn unload_key(key_name: &str) -> i32 {
    // The cluster's cached copy goes too: the next load asks the KMS.
    keycache::forget_key(key_name);
    let n = keys::remove_where(|k| k.name == key_name);
    if n > 0 {
        audit::key_event_now(
            "unload_key",
            key_name,
            "ok",
            serde_json::json!({ "versions": n }),
        );
    }
    n as i32
}

#[pg_extern(sql = false)]
fn unload_all_keys() -> i32 {
    let n = keys::remove_where(|_| true);
    if n > 0 {
        audit::key_event_now("unload_all", "", "ok", serde_json::json!({ "versions": n }));
    }
    n as i32
}

/// The 0.1.0/0.2.0 form of loaded_keys (five columns).
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
    TableIterator::new(keys::snapshot().into_iter().map(|k| {
        (
            k.name,
            k.version,
            k.key_id as i32,
            k.active,
            k.scope.name().to_string(),
        )
    }))
}

/// `dscsa.loaded_keys()`: which key versions this session holds, for which role and
/// with which privileges (never the key bytes). (pgrx needs the row type spelled out.)
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn loaded_key_details() -> TableIterator<
    'static,
    (
        name!(key_name, String),
        name!(version, i32),
        name!(key_id, i32),
        name!(active, bool),
        name!(scope, String),
        name!(loaded_by, pg_sys::Oid),
        name!(privileges, Vec<String>),
    ),
> {
    TableIterator::new(keys::snapshot().into_iter().map(|k| {
        let privileges = KeyPrivilege::ALL
            .into_iter()
            .filter(|p| k.privileges.has(*p))
            .map(|p| p.name().to_string())
            .collect();
        (
            k.name,
            k.version,
            k.key_id as i32,
            k.active,
            k.scope.name().to_string(),
            pg_sys::Oid::from(k.loaded_by),
            privileges,
        )
    }))
}

/// `dscsa._in_transaction_block()`: whether the current statement runs inside an explicit
/// or implicit transaction block, where procedures that COMMIT as they go cannot run.
/// Lets them refuse with a clear message before doing anything.
#[pg_extern(sql = false)]
fn in_transaction_block() -> bool {
    // SAFETY: reads the backend's transaction state only.
    unsafe { pg_sys::IsTransactionBlock() }
}
