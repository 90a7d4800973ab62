//! What a DBA sees of key management: `dscsa.kms_status` (provider, circuit breaker,
//! hook and cache counters), `dscsa.kms_cache` (this database's cached keys, their ages;
//! never key bytes) and `dscsa.kms_health()` (a canary wrap and unwrap through the hook).

use std::time::Instant;

use dscsa_core::kms::{FailureClass, Operation};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use zeroize::Zeroizing;

use crate::{breaker, guc, keycache, kms, shmem};

fn ts(us: i64) -> Option<TimestampWithTimeZone> {
    (us != 0)
        .then(|| TimestampWithTimeZone::try_from(us).ok())
        .flatten()
}

fn now_us() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

type StatusRow = (
    String,
    String,
    i32,
    Option<TimestampWithTimeZone>,
    i64,
    i64,
    i64,
    Option<TimestampWithTimeZone>,
    Option<TimestampWithTimeZone>,
    Option<String>,
    Option<f64>,
    i64,
    i64,
    i64,
    i32,
    i32,
    bool,
    bool,
    i32,
    i32,
);

/// `dscsa._kms_status()`, behind the view `dscsa.kms_status`: one row per hook command
/// the cluster has called (the current one first, even before its first call), with its
/// circuit breaker; the key cache's counters on every row.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn kms_status() -> TableIterator<
    'static,
    (
        name!(provider, String),
        name!(breaker, String),
        name!(consecutive_failures, i32),
        name!(opened_at, Option<TimestampWithTimeZone>),
        name!(hook_runs, i64),
        name!(hook_failures, i64),
        name!(rejected, i64),
        name!(last_success, Option<TimestampWithTimeZone>),
        name!(last_failure, Option<TimestampWithTimeZone>),
        name!(last_failure_class, Option<String>),
        name!(last_latency_ms, Option<f64>),
        name!(cache_hits, i64),
        name!(cache_misses, i64),
        name!(cache_refreshes, i64),
        name!(cache_entries, i32),
        name!(cache_capacity, i32),
        name!(cache_memory_locked, bool),
        name!(session_key_memory_locked, bool),
        name!(soft_ttl_s, i32),
        name!(hard_ttl_s, i32),
    ),
> {
    let current = kms::provider_name(&kms::configured_command());
    let session_locked = !dscsa_core::locked::lock_refused();
    let (soft, hard) = (guc::KEY_CACHE_TTL_S.get(), guc::KEY_CACHE_MAX_TTL_S.get());
    let snapshot = shmem::with_kms(false, |k, entries| {
        let mut breakers: Vec<shmem::Breaker> = k
            .breakers
            .iter()
            .filter(|b| b.command_hash != 0)
            .copied()
            .collect();
        breakers.sort_by_key(|b| (b.provider() != current, -b.last_used_us));
        (
            breakers,
            k.cache,
            entries.iter().filter(|e| e.used).count() as i32,
            k.cache_capacity as i32,
            k.cache_locked,
        )
    });
    let Some((breakers, cache, used, capacity, locked)) = snapshot else {
        return TableIterator::new(vec![(
            current,
            "not preloaded".into(),
            0,
            None,
            0,
            0,
            0,
            None,
            None,
            None,
            None,
            0,
            0,
            0,
            0,
            0,
            false,
            session_locked,
            soft,
            hard,
        )]);
    };
    let cache_part = |row: (
        String,
        String,
        i32,
        Option<TimestampWithTimeZone>,
        i64,
        i64,
        i64,
        Option<TimestampWithTimeZone>,
        Option<TimestampWithTimeZone>,
        Option<String>,
        Option<f64>,
    )|
     -> StatusRow {
        (
            row.0,
            row.1,
            row.2,
            row.3,
            row.4,
            row.5,
            row.6,
            row.7,
            row.8,
            row.9,
            row.10,
            cache.hits as i64,
            cache.misses as i64,
            cache.refreshes as i64,
            used,
            capacity,
            locked,
            session_locked,
            soft,
            hard,
        )
    };
    let mut rows: Vec<StatusRow> = breakers
        .iter()
        .map(|b| {
            cache_part((
                b.provider(),
                breaker::state_name(b.state).into(),
                b.failures as i32,
                (b.state != breaker::CLOSED)
                    .then(|| ts(b.opened_at_us))
                    .flatten(),
                b.hook_runs as i64,
                b.hook_failures as i64,
                b.rejected as i64,
                ts(b.last_success_us),
                ts(b.last_failure_us),
                FailureClass::ALL
                    .get(b.last_failure_class as usize)
                    .map(|f| f.name().to_string()),
                (b.hook_runs > 0).then_some(b.last_latency_us as f64 / 1000.0),
            ))
        })
        .collect();
    if rows.is_empty() {
        rows.push(cache_part((
            current,
            "closed".into(),
            0,
            None,
            0,
            0,
            0,
            None,
            None,
            None,
            None,
        )));
    }
    TableIterator::new(rows)
}

/// `dscsa._kms_cache()`, behind the view `dscsa.kms_cache`: this database's cached keys.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn kms_cache() -> TableIterator<
    'static,
    (
        name!(key_name, String),
        name!(version, i32),
        name!(key_id, i64),
        name!(unwrapped_at, Option<TimestampWithTimeZone>),
        name!(age_s, f64),
        name!(refresh_in_s, f64),
        name!(expires_in_s, f64),
        name!(last_used, Option<TimestampWithTimeZone>),
        name!(hits, i64),
    ),
> {
    // SAFETY: MyDatabaseId is set before any SQL runs.
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let now = now_us();
    let soft = i64::from(guc::KEY_CACHE_TTL_S.get()) * 1_000_000;
    let hard = keycache::hard_ttl_us();
    let rows = shmem::with_kms(false, |_, entries| {
        entries
            .iter()
            .filter(|e| e.used && e.dboid == db)
            .map(|e| {
                let age = now - e.unwrapped_at_us;
                (
                    e.name(),
                    e.version,
                    i64::from(e.key_id),
                    ts(e.unwrapped_at_us),
                    age as f64 / 1e6,
                    (soft - age) as f64 / 1e6,
                    (hard - age) as f64 / 1e6,
                    ts(e.last_used_us),
                    e.hits as i64,
                )
            })
            .collect::<Vec<_>>()
    })
    .unwrap_or_default();
    TableIterator::new(rows)
}

/// `dscsa.kms_health(kek)`: wraps a random canary under `kek` through the hook and
/// unwraps it again; reports the provider, the latencies and what went wrong. Goes
/// through the circuit breaker like every hook call (an open breaker is reported).
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn kms_health(
    kek: &str,
) -> TableIterator<
    'static,
    (
        name!(provider, String),
        name!(kek_ref, Option<String>),
        name!(ok, bool),
        name!(wrap_ms, Option<f64>),
        name!(unwrap_ms, Option<f64>),
        name!(message, String),
    ),
> {
    let provider = kms::provider_name(&kms::configured_command());
    let canary = match dscsa_core::nonce::generate_data_key() {
        Ok(k) => k,
        Err(e) => return TableIterator::once((provider, None, false, None, None, e.to_string())),
    };
    let started = Instant::now();
    let wrapped = kms::call(
        Operation::Wrap,
        kek,
        0,
        "pg_dscsa-health",
        0,
        Zeroizing::new(canary.to_vec()),
    );
    let wrap_ms = started.elapsed().as_secs_f64() * 1000.0;
    let wrapped = match wrapped {
        Ok(w) => w,
        Err(e) => {
            return TableIterator::once((provider, None, false, Some(wrap_ms), None, e.to_string()))
        }
    };
    let kek_ref = wrapped.kek.clone().unwrap_or_else(|| kek.to_string());
    let started = Instant::now();
    let back = kms::call(
        Operation::Unwrap,
        &kek_ref,
        0,
        "pg_dscsa-health",
        0,
        wrapped.data,
    );
    let unwrap_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (ok, message) = match back {
        Ok(r) if r.data[..] == canary[..] => (true, "the canary wrapped and unwrapped".to_string()),
        Ok(_) => (
            false,
            "the hook unwrapped the canary to another value".to_string(),
        ),
        Err(e) => (false, e.to_string()),
    };
    TableIterator::once((
        provider,
        Some(kek_ref),
        ok,
        Some(wrap_ms),
        Some(unwrap_ms),
        message,
    ))
}
