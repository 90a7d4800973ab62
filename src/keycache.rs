//! The cluster's key cache (src/shmem.rs, `KmsShared`): unwrapped keys shared by the
//! backends of the cluster, so that sessions and transactions (behind a transaction
//! pooler, every transaction) reuse a key instead of running the KMS hook.
//!
//! - An entry is found by database, key id and key check value: a key rewrapped under
//!   another KEK is the same key; a keyring row replaced by another key is not.
//! - Younger than `dscsa.key_cache_ttl` (soft): used as is. Older: the next use unwraps
//!   it again through the hook; if the KMS cannot be reached (breaker open, unavailable,
//!   timed out) the cached key goes on serving until `dscsa.key_cache_max_ttl` (hard),
//!   after which it is dropped and only the KMS can give it back. A KMS that answers that
//!   the key may no longer be unwrapped (disabled, denied, invalid) evicts it at once.
//! - Rotations, retirements, grant revocations, KEK rotations (`dscsa._keyring_changed`),
//!   `dscsa.unload_key` and `dscsa.flush_key_cache()` evict entries at once.
//! - Evicted entries are zeroed; the pages are locked in RAM and left out of core dumps.
//! - The cache saves hook runs, not authorization: every load still checks the loading
//!   role's grants first (src/keyring.rs).
//!
//! `dscsa.key_cache_max_ttl = 0` turns the cache (and key expiry) off.

use dscsa_core::kms::FailureClass;
use dscsa_core::Error;
use pgrx::pg_sys;
use zeroize::{Zeroize, Zeroizing};

use crate::{audit, guc, shmem};

fn now_us() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn dboid() -> u32 {
    // SAFETY: MyDatabaseId is set before any SQL runs.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Hard TTL in microseconds; 0 when the cache and key expiry are off.
pub fn hard_ttl_us() -> i64 {
    i64::from(guc::KEY_CACHE_MAX_TTL_S.get()) * 1_000_000
}

fn soft_ttl_us() -> i64 {
    (i64::from(guc::KEY_CACHE_TTL_S.get()) * 1_000_000).min(hard_ttl_us())
}

/// A key as the cache (or the hook) gave it, with when it was unwrapped.
pub struct CachedKey {
    pub raw: Zeroizing<Vec<u8>>,
    pub unwrapped_at_us: i64,
}

/// Who asks for which keyring row.
pub struct Row<'a> {
    pub key_id: u32,
    pub version: i32,
    pub name: &'a str,
    pub check: &'a [u8],
}

/// Whether a failed refresh means "the KMS is not there" (serve the cached key until the
/// hard TTL) rather than "the KMS refuses this key" (stop using it).
fn kms_down(e: &Error) -> bool {
    matches!(e, Error::KmsUnavailable { .. }) || FailureClass::of(e).means_kms_down()
}

fn matches(e: &shmem::CacheEntry, db: u32, row: &Row<'_>) -> bool {
    e.used
        && e.dboid == db
        && e.key_id == row.key_id
        && e.check[..] == row.check[..row.check.len().min(16)]
}

/// The key for `row`: from the cache, or from `unwrap` (the hook), cached for the
/// cluster's other sessions.
pub fn get_or_unwrap(
    row: &Row<'_>,
    unwrap: impl Fn() -> Result<Zeroizing<Vec<u8>>, Error>,
) -> Result<CachedKey, Error> {
    let hard = hard_ttl_us();
    if hard == 0 || !shmem::available() {
        return Ok(CachedKey {
            raw: unwrap()?,
            unwrapped_at_us: now_us(),
        });
    }
    let now = now_us();
    let db = dboid();
    let found = shmem::with_kms(true, |k, entries| {
        match entries.iter_mut().find(|e| matches(e, db, row)) {
            Some(e) if now - e.unwrapped_at_us < hard => {
                e.last_used_us = now;
                e.hits += 1;
                k.cache.hits += 1;
                Some((Zeroizing::new(e.key.to_vec()), e.unwrapped_at_us))
            }
            Some(e) => {
                // Past its hard TTL: only the KMS can give it back.
                e.key.zeroize();
                e.used = false;
                k.cache.misses += 1;
                None
            }
            None => {
                k.cache.misses += 1;
                None
            }
        }
    })
    .flatten();
    match found {
        Some((raw, at)) if now - at < soft_ttl_us() => Ok(CachedKey {
            raw,
            unwrapped_at_us: at,
        }),
        Some((cached, at)) => match claim(row, db, false) {
            // Another backend is refreshing it: go on with the cached key meanwhile.
            Claim::Wait => Ok(CachedKey {
                raw: cached,
                unwrapped_at_us: at,
            }),
            Claim::Cached(raw, at) => Ok(CachedKey {
                raw,
                unwrapped_at_us: at,
            }),
            Claim::Mine(held) => {
                let refreshed = refresh(row, db, &unwrap, cached, at);
                drop(held);
                refreshed
            }
            Claim::Unclaimed | Claim::Failed(_) => refresh(row, db, &unwrap, cached, at),
        },
        None => unwrap_once(row, db, &unwrap),
    }
}

/// A stale (past the soft TTL) key unwrapped again; kept until the hard TTL when the KMS
/// cannot be reached.
fn refresh(
    row: &Row<'_>,
    db: u32,
    unwrap: &impl Fn() -> Result<Zeroizing<Vec<u8>>, Error>,
    cached: Zeroizing<Vec<u8>>,
    at: i64,
) -> Result<CachedKey, Error> {
    let hard = hard_ttl_us();
    let now = now_us();
    match unwrap() {
        Ok(raw) => {
            store(row, &raw, now);
            shmem::with_kms(true, |k, _| k.cache.refreshes += 1);
            Ok(CachedKey {
                raw,
                unwrapped_at_us: now,
            })
        }
        Err(e) if kms_down(&e) => {
            pgrx::debug1!(
                    "pg_dscsa: key \"{}\" version {} stays cached (KMS unavailable; {} s of its hard TTL left)",
                    row.name,
                    row.version,
                    (at + hard - now) / 1_000_000
                );
            Ok(CachedKey {
                raw: cached,
                unwrapped_at_us: at,
            })
        }
        Err(e) => {
            evict(db, |x| x.key_id == row.key_id);
            Err(e)
        }
    }
}

/// What a backend that missed the cache does.
enum Claim {
    /// Another backend stored the key meanwhile.
    Cached(Zeroizing<Vec<u8>>, i64),
    /// Another backend is unwrapping it now.
    Wait,
    /// This backend unwraps it; the others wait (released when dropped).
    Mine(InFlightClaim),
    /// The in-flight table is full: unwrap without telling the others.
    Unclaimed,
    /// The unwrap this backend waited for failed just now, with this class.
    Failed(FailureClass),
}

/// This backend's slot in `KmsShared::in_flight`, freed when dropped (also when the hook
/// fails or the statement is cancelled: pgrx unwinds Rust frames on errors). A failed
/// hook call leaves its class there for a moment, for the backends that waited for it.
struct InFlightClaim {
    slot: usize,
    failure: Option<FailureClass>,
}

impl Drop for InFlightClaim {
    fn drop(&mut self) {
        let me = my_pid();
        let failure = self.failure;
        shmem::with_kms(true, |k, _| {
            let f = &mut k.in_flight[self.slot];
            if f.pid == me {
                f.pid = 0;
                if let Some(class) = failure {
                    f.failed_until_us = now_us() + FAILURE_SHARED_US;
                    f.failure = FailureClass::ALL
                        .iter()
                        .position(|c| *c == class)
                        .and_then(|i| u8::try_from(i).ok())
                        .unwrap_or(0);
                }
            }
        });
    }
}

/// How long the backends that waited for a failed unwrap take its failure as theirs.
const FAILURE_SHARED_US: i64 = 1_000_000;

fn my_pid() -> i32 {
    // SAFETY: MyProcPid is set at backend start.
    unsafe { pg_sys::MyProcPid }
}

/// `waited`: this backend has been waiting for another's unwrap of the key.
fn claim(row: &Row<'_>, db: u32, waited: bool) -> Claim {
    let hard = hard_ttl_us();
    let prefix = &row.check[..row.check.len().min(16)];
    shmem::with_kms(true, |k, entries| {
        let now = now_us();
        if let Some(e) = entries
            .iter_mut()
            .find(|e| matches(e, db, row) && now - e.unwrapped_at_us < soft_ttl_us().min(hard))
        {
            e.last_used_us = now;
            e.hits += 1;
            k.cache.hits += 1;
            return Claim::Cached(Zeroizing::new(e.key.to_vec()), e.unwrapped_at_us);
        }
        let same_key = |f: &shmem::InFlight| {
            f.dboid == db && f.key_id == row.key_id && f.check[..prefix.len()] == *prefix
        };
        if k.in_flight
            .iter()
            .any(|f| f.pid != 0 && same_key(f) && f.until_us > now)
        {
            return Claim::Wait;
        }
        if waited {
            if let Some(f) = k
                .in_flight
                .iter()
                .find(|f| f.pid == 0 && same_key(f) && f.failed_until_us > now)
            {
                let class = FailureClass::ALL
                    .get(usize::from(f.failure))
                    .copied()
                    .unwrap_or(FailureClass::Unclassified);
                return Claim::Failed(class);
            }
        }
        match k
            .in_flight
            .iter()
            .position(|f| f.pid == 0 || f.until_us <= now)
        {
            Some(i) => {
                let f = &mut k.in_flight[i];
                f.pid = my_pid();
                f.dboid = db;
                f.key_id = row.key_id;
                f.check = [0; 16];
                f.check[..prefix.len()].copy_from_slice(prefix);
                // The hook's timeout and a margin for its process to be reaped.
                f.until_us = now + i64::from(guc::KMS_TIMEOUT_MS.get()) * 1000 + 2_000_000;
                f.failed_until_us = 0;
                Claim::Mine(InFlightClaim {
                    slot: i,
                    failure: None,
                })
            }
            None => Claim::Unclaimed,
        }
    })
    .unwrap_or(Claim::Unclaimed)
}

/// A key not in the cache: unwrapped by one backend at a time per key, so that many
/// sessions starting together (a pooler opening its connections, packaging lines after a
/// rotation) make one hook run, not one each.
fn unwrap_once(
    row: &Row<'_>,
    db: u32,
    unwrap: &impl Fn() -> Result<Zeroizing<Vec<u8>>, Error>,
) -> Result<CachedKey, Error> {
    let mut waited = false;
    loop {
        match claim(row, db, waited) {
            Claim::Cached(raw, at) => {
                return Ok(CachedKey {
                    raw,
                    unwrapped_at_us: at,
                })
            }
            Claim::Wait => {
                waited = true;
                // SAFETY: a short sleep; interrupts (cancel, statement_timeout) are
                // honoured between sleeps.
                unsafe { pg_sys::pg_usleep(2_000) };
                pgrx::check_for_interrupts!();
            }
            // Not run again at once: with a hung KMS, each waiter would otherwise wait
            // out the hook's timeout in turn.
            Claim::Failed(class) => {
                return Err(Error::Kms(format!(
                    "another session's unwrap of key \"{}\" version {} through the hook failed just now ({}); not retried at once",
                    row.name,
                    row.version,
                    class.name()
                )))
            }
            Claim::Mine(mut held) => {
                let result = unwrap_and_store(row, unwrap);
                if let Err(e) = &result {
                    held.failure = Some(if matches!(e, Error::KmsUnavailable { .. }) {
                        FailureClass::Unavailable
                    } else {
                        FailureClass::of(e)
                    });
                }
                return result;
            }
            Claim::Unclaimed => return unwrap_and_store(row, unwrap),
        }
    }
}

fn unwrap_and_store(
    row: &Row<'_>,
    unwrap: &impl Fn() -> Result<Zeroizing<Vec<u8>>, Error>,
) -> Result<CachedKey, Error> {
    let raw = unwrap()?;
    let now = now_us();
    store(row, &raw, now);
    Ok(CachedKey {
        raw,
        unwrapped_at_us: now,
    })
}

fn store(row: &Row<'_>, raw: &[u8], now: i64) {
    if raw.len() != 32 || row.check.len() < 16 {
        return;
    }
    let db = dboid();
    shmem::with_kms(true, |_, entries| {
        if entries.is_empty() {
            return;
        }
        // The same key, a free entry, or the least recently used one.
        let index = entries
            .iter()
            .position(|e| matches(e, db, row))
            .or_else(|| entries.iter().position(|e| !e.used))
            .unwrap_or_else(|| {
                entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.last_used_us)
                    .map_or(0, |(i, _)| i)
            });
        let e = &mut entries[index];
        e.key.zeroize();
        e.used = true;
        e.dboid = db;
        e.key_id = row.key_id;
        e.version = row.version;
        e.check.copy_from_slice(&row.check[..16]);
        e.key.copy_from_slice(raw);
        // Key names are at most 63 ASCII characters (the keyring's CHECK): kept whole.
        e.name = shmem::fixed_name(row.name);
        e.unwrapped_at_us = now;
        e.last_used_us = now;
        e.hits = 0;
    });
}

/// Zeroes and frees this database's entries that `which` selects; returns how many.
fn evict(db: u32, which: impl Fn(&shmem::CacheEntry) -> bool) -> i64 {
    shmem::with_kms(true, |_, entries| {
        let mut n = 0;
        for e in entries
            .iter_mut()
            .filter(|e| e.used && e.dboid == db && which(e))
        {
            e.key.zeroize();
            e.used = false;
            n += 1;
        }
        n
    })
    .unwrap_or(0)
}

/// Every entry of this database (the keyring changed: rotation, retirement, revocation,
/// KEK rotation).
pub fn forget_database() -> i64 {
    evict(dboid(), |_| true)
}

/// The entries of key `name` in this database (`dscsa.unload_key`).
pub fn forget_key(name: &str) -> i64 {
    evict(dboid(), |e| e.name() == name)
}

/// `dscsa.flush_key_cache()`: empties this database's part of the cache; returns how
/// many keys it held. Recorded in the audit trail.
#[pgrx::pg_extern(sql = false)]
fn flush_key_cache() -> i64 {
    let n = forget_database();
    audit::key_event_now(
        "flush_key_cache",
        "",
        "ok",
        serde_json::json!({ "evicted": n }),
    );
    n
}
