//! Noticing key rotations made by other sessions without asking the keyring on every
//! transaction.
//!
//! `dscsa.rotate_key`, `retire_key` and `revoke_key` end with `dscsa._keyring_changed()`,
//! which queues a relcache invalidation of `dscsa.keyring`. PostgreSQL delivers it to
//! every backend when that transaction commits, and each backend processes it before its
//! next statement takes its locks. Our relcache callback then bumps a per-backend
//! generation number, and the next use of a key brings every loaded key in step with the
//! keyring (src/keyring.rs, sync_with_keyring: one query per loaded key name). Without a
//! change the hot path never leaves Rust.
//!
//! The callback is conservative: any invalidation of the keyring, a reset of all caches
//! (sinval queue overflow) or any invalidation before the keyring's OID is known bumps the
//! generation. An extra check is only a few tens of microseconds; a missed one would
//! encrypt under a decrypt-only version (still decryptable, and found by dscsa.reencrypt).

use std::cell::Cell;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::{authz, owner};

thread_local! {
    static GENERATION: Cell<u64> = const { Cell::new(1) };
    /// The generation the loaded keys were last brought in step with the keyring at.
    static SYNCED: Cell<u64> = const { Cell::new(0) };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // Only a Cell read here: a relcache callback must not access the catalogs.
    let keyring = owner::cached_keyring_oid();
    if relid == pg_sys::InvalidOid || keyring.is_none() || Some(relid) == keyring {
        GENERATION.with(|g| g.set(g.get() + 1));
        // The extension may have been dropped and re-created: look its objects up again.
        owner::forget_keyring();
        authz::forget_routines();
        // A transparent lookup's plan holds one candidate slot per blind-index version
        // loaded when it was planned (src/lookup): planned again, it follows a rotation
        // (the planner brings the keys in step first). Only marks plans invalid, which
        // is what PostgreSQL's own invalidation callbacks do; no catalog access.
        if crate::keys::any_blind_index_key_loaded() {
            pg_sys::ResetPlanCache();
        }
    }
}

pub fn init() {
    // SAFETY: registers a callback whose function pointer lives as long as the library
    // (PostgreSQL never unloads it); backends forked after _PG_init inherit it.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(
            Some(on_relcache_invalidation),
            pg_sys::Datum::from(0),
        )
    };
}

/// The current generation if the keyring may have changed since the loaded keys were
/// last brought in step with it (one Cell comparison on the hot path).
pub fn stale() -> Option<u64> {
    let current = GENERATION.with(Cell::get);
    (SYNCED.with(Cell::get) != current).then_some(current)
}

/// Records that the loaded keys are in step with the keyring as of `generation`.
pub fn synced(generation: u64) {
    SYNCED.with(|s| s.set(generation));
}

/// `dscsa._keyring_changed()`: tells every backend, when the calling transaction
/// commits, that active key versions or key grants may have changed.
#[pg_extern(sql = false)]
fn keyring_changed() {
    // Cached keys of this database go at once (the cache is refilled through the hook).
    crate::keycache::forget_database();
    if let Some(oid) = owner::keyring_oid() {
        // SAFETY: the relation exists (just looked up); the invalidation is transactional.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(oid) };
    }
}
