//! Running pg_dscsa's own, fixed SQL with the extension owner's rights.
//!
//! A SECURITY DEFINER SQL function cannot see who called it (inside it `current_user` is
//! the definer), so it cannot bind a loaded key to its caller or check the caller's
//! per-key grants. The key functions are therefore invoker-rights C functions that note
//! the caller, then switch the user id to the owner of `dscsa.keyring` only around
//! statements written here, with `search_path` pinned to `pg_catalog, pg_temp`, exactly as
//! PostgreSQL applies a function's SET clause. Nothing a caller controls (no identifier,
//! no SQL text, no operator from the caller's search_path) runs while the user id is
//! switched: values go in as parameters only.
//!
//! The switch is marked SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION, so
//! the statements cannot SET ROLE or create temporary objects, and PostgreSQL's
//! (sub)transaction abort restores the user id and the GUC nest level if they fail.

use std::cell::Cell;

use dscsa_core::Error;
use pgrx::pg_sys;

thread_local! {
    /// OID of `dscsa.keyring` and of its owner, looked up once per backend and again
    /// when the extension may have been dropped and re-created (relcache reset).
    static KEYRING: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// Forgets the cached keyring OID (called from the relcache callback on a full reset or
/// an invalidation of the keyring itself).
pub fn forget_keyring() {
    KEYRING.with(|k| k.set((0, 0)));
}

/// The keyring OID if it was looked up already (no catalog access: safe in callbacks).
pub fn cached_keyring_oid() -> Option<pg_sys::Oid> {
    let (rel, _) = KEYRING.with(Cell::get);
    (rel != 0).then(|| pg_sys::Oid::from(rel))
}

/// The OID of `dscsa.keyring`, or None when the extension is not installed in this
/// database.
pub fn keyring_oid() -> Option<pg_sys::Oid> {
    lookup().map(|(rel, _)| rel)
}

fn lookup() -> Option<(pg_sys::Oid, pg_sys::Oid)> {
    let (rel, owner) = KEYRING.with(Cell::get);
    if rel != 0 {
        return Some((pg_sys::Oid::from(rel), pg_sys::Oid::from(owner)));
    }
    // SAFETY: catalog lookups by name and a syscache read, inside a transaction (this is
    // only called from SQL-callable functions and triggers).
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"dscsa".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        let relid = pg_sys::get_relname_relid(c"keyring".as_ptr(), nsp);
        if relid == pg_sys::InvalidOid {
            return None;
        }
        let owner = relation_owner(relid)?;
        KEYRING.with(|k| k.set((relid.to_u32(), owner.to_u32())));
        Some((relid, owner))
    }
}

/// The owner of relation `relid` (None if it does not exist).
pub fn relation_owner(relid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup; the tuple is released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(relid),
        );
        if tuple.is_null() {
            return None;
        }
        let form = pg_sys::GETSTRUCT(tuple) as *const pg_sys::FormData_pg_class;
        let owner = (*form).relowner;
        pg_sys::ReleaseSysCache(tuple);
        Some(owner)
    }
}

/// Restores the caller's user id and security context when dropped (also while an
/// error unwinds, before PostgreSQL's own abort processing would).
struct UserSwitch {
    user: pg_sys::Oid,
    context: i32,
}

impl Drop for UserSwitch {
    fn drop(&mut self) {
        // SAFETY: plain assignments of backend globals to values read from them.
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
    }
}

/// Runs `f` as the owner of `dscsa.keyring` with `search_path = pg_catalog, pg_temp`.
/// `f` must only run statements written in this crate, with every caller-supplied value
/// passed as a parameter.
pub fn as_extension_owner<T>(f: impl FnOnce() -> T) -> Result<T, Error> {
    let (_, owner) = lookup().ok_or_else(|| {
        Error::Internal("pg_dscsa is not installed in this database (no dscsa.keyring)".into())
    })?;
    let mut user = pg_sys::InvalidOid;
    let mut context = 0;
    // SAFETY: reading and setting the backend's user id, as fmgr_security_definer does;
    // NewGUCNestLevel/set_config_option/AtEOXact_GUC bracket the pinned search_path
    // exactly as a function's SET clause is applied.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        let guard = UserSwitch { user, context };
        pg_sys::SetUserIdAndSecContext(
            owner,
            context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        let nest = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        let result = f();
        pg_sys::AtEOXact_GUC(true, nest);
        drop(guard);
        Ok(result)
    }
}

/// Runs `f` with `search_path = pg_catalog, pg_temp` but the caller's own rights: for
/// statements of this crate that must see exactly what the caller may see.
pub fn with_pinned_search_path<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: as in as_extension_owner, without the user switch.
    unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        let result = f();
        pg_sys::AtEOXact_GUC(true, nest);
        result
    }
}

/// The current user (inside SECURITY DEFINER functions: their owner), as PostgreSQL
/// checks privileges.
pub fn current_user() -> pg_sys::Oid {
    // Without pgrx's error guard: on the path of every decryption (src/unguarded.rs).
    crate::unguarded::current_user()
}

/// Whether `role` has the privileges of `of` (is it, a superuser, or an inheriting member).
pub fn has_privs_of(role: pg_sys::Oid, of: pg_sys::Oid) -> bool {
    // SAFETY: a membership lookup through PostgreSQL's role cache.
    role == of || unsafe { pg_sys::has_privs_of_role(role, of) }
}

pub fn is_superuser(role: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup.
    unsafe { pg_sys::superuser_arg(role) }
}
