//! Noticing key rotations made by other sessions without asking the keyring on every
//! transaction.
//!
//! `dscsa.rotate_key` (and `retire_key`) end with `dscsa._keyring_changed()`, which queues
//! a relcache invalidation of `dscsa.keyring`. PostgreSQL delivers it to every backend
//! when that transaction commits, and each backend processes it before its next statement
//! takes its locks. Our relcache callback then bumps a per-backend generation number, and
//! encryption and blind-index lookups re-read the active key version (one SPI query) only
//! when the generation changed since they last checked that key name. Without a rotation
//! the hot path never leaves Rust.
//!
//! The callback is conservative: any invalidation of the keyring, a reset of all caches
//! (sinval queue overflow) or any invalidation before the keyring's OID is known bumps the
//! generation. An extra check is only a few tens of microseconds; a missed one would
//! encrypt under a decrypt-only version (still decryptable, and found by dscsa.reencrypt).

use std::cell::{Cell, RefCell};

use pgrx::pg_sys;
use pgrx::prelude::*;

thread_local! {
    static GENERATION: Cell<u64> = const { Cell::new(1) };
    static KEYRING_OID: Cell<u32> = const { Cell::new(0) };
    /// Key names and the generation at which their active version was last confirmed.
    static CHECKED: RefCell<Vec<(Vec<u8>, u64)>> = const { RefCell::new(Vec::new()) };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let keyring = KEYRING_OID.with(Cell::get);
    if relid == pg_sys::InvalidOid || keyring == 0 || relid.to_u32() == keyring {
        GENERATION.with(|g| g.set(g.get() + 1));
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

fn keyring_oid() -> pg_sys::Oid {
    // SAFETY: catalog lookups by name, in a transaction (called from SQL functions).
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"dscsa".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return pg_sys::InvalidOid;
        }
        pg_sys::get_relname_relid(c"keyring".as_ptr(), nsp)
    }
}

/// The generation to check `name` against, or None if it was already confirmed at the
/// current one.
pub fn pending_check(name: &[u8]) -> Option<u64> {
    if KEYRING_OID.with(Cell::get) == 0 {
        let oid = keyring_oid().to_u32();
        KEYRING_OID.with(|k| k.set(oid));
    }
    let current = GENERATION.with(Cell::get);
    let done = CHECKED.with(|c| c.borrow().iter().any(|(n, g)| n == name && *g == current));
    (!done).then_some(current)
}

/// Records that `name`'s active version was confirmed at `generation`.
pub fn confirmed(name: &[u8], generation: u64) {
    CHECKED.with(|c| {
        let mut c = c.borrow_mut();
        match c.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = generation,
            None => c.push((name.to_vec(), generation)),
        }
    })
}

/// `dscsa._keyring_changed()`: tells every backend, when the calling transaction
/// commits, that active key versions may have changed.
#[pg_extern(sql = false)]
fn keyring_changed() {
    let oid = keyring_oid();
    if oid != pg_sys::InvalidOid {
        // SAFETY: the relation exists (just looked up); the invalidation is transactional.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(oid) };
    }
}
