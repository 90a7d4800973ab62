//! The KMS circuit breakers, shared by the cluster (src/shmem.rs, `KmsShared`): one per
//! hook command, since databases may name different hooks.
//!
//! Closed: hook calls run. After `dscsa.kms_breaker_failures` consecutive failures that
//! mean the KMS is down (unreachable, timed out, throttled, crashed: see
//! `FailureClass::means_kms_down`) within `dscsa.kms_breaker_window`, it opens: calls
//! that need the hook fail at once (SQLSTATE SK001) instead of each waiting for
//! `dscsa.kms_timeout`, while keys already unwrapped (cache, sessions) go on working until
//! their hard TTL. After `dscsa.kms_breaker_cooldown` one caller probes (half-open): its
//! success closes the breaker, its failure opens it again. Without preloading there is
//! no shared state and no breaker.

use dscsa_core::kms::FailureClass;
use dscsa_core::Error;
use pgrx::pg_sys;

use crate::guc;
use crate::shmem::{self, Breaker};

pub const CLOSED: u32 = 0;
pub const OPEN: u32 = 1;
pub const HALF_OPEN: u32 = 2;

pub fn state_name(state: u32) -> &'static str {
    match state {
        CLOSED => "closed",
        OPEN => "open",
        _ => "half-open",
    }
}

/// How a hook call was let through, and by which breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Normal(u64),
    /// The one call that tests a KMS the breaker took for down.
    Probe(u64),
    /// Not preloaded: no shared state.
    Unshared,
}

fn now_us() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// A stable hash of the command (FNV-1a; never 0, which marks a free slot).
fn command_hash(command: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in command.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// The breaker of `hash`, taking a free slot or the least recently used closed one.
fn slot<'a>(breakers: &'a mut [Breaker], hash: u64, provider: &str) -> &'a mut Breaker {
    let index = breakers
        .iter()
        .position(|b| b.command_hash == hash)
        .or_else(|| breakers.iter().position(|b| b.command_hash == 0))
        .unwrap_or_else(|| {
            breakers
                .iter()
                .enumerate()
                .filter(|(_, b)| b.state == CLOSED)
                .min_by_key(|(_, b)| b.last_used_us)
                .map_or(0, |(i, _)| i)
        });
    let b = &mut breakers[index];
    if b.command_hash != hash {
        *b = Breaker {
            command_hash: hash,
            last_failure_class: u32::MAX,
            ..Breaker::default()
        };
        b.provider = crate::shmem::fixed_name(provider);
    }
    b
}

/// Lets a hook call of `command` through, or refuses it at once while its breaker is open.
pub fn enter(command: &str, provider: &str) -> Result<Gate, Error> {
    let now = now_us();
    let hash = command_hash(command);
    let cooldown = i64::from(guc::KMS_BREAKER_COOLDOWN_S.get()) * 1_000_000;
    // A probe whose backend died (or hangs) past the hook's own limit frees the slot.
    let stale_probe = i64::from(guc::KMS_TIMEOUT_MS.get()) * 1000 + 5_000_000;
    // SAFETY: reads MyProcPid.
    let me = unsafe { pg_sys::MyProcPid };
    let verdict = shmem::with_kms(true, |k, _| {
        let b = slot(&mut k.breakers, hash, provider);
        b.last_used_us = now;
        match b.state {
            CLOSED => Ok(Gate::Normal(hash)),
            _ if now - b.opened_at_us >= cooldown
                && (b.probe_pid == 0 || now - b.probe_started_us > stale_probe) =>
            {
                b.state = HALF_OPEN;
                b.probe_pid = me;
                b.probe_started_us = now;
                Ok(Gate::Probe(hash))
            }
            _ => {
                b.rejected += 1;
                Err(((b.opened_at_us + cooldown - now) / 1_000_000).max(0))
            }
        }
    });
    match verdict {
        None => Ok(Gate::Unshared),
        Some(Ok(gate)) => Ok(gate),
        Some(Err(retry_s)) => Err(Error::KmsUnavailable {
            provider: provider.to_string(),
            reason: format!(
                "its circuit breaker is open after repeated failures; a probe is allowed in {retry_s} s (see dscsa.kms_status)"
            ),
        }),
    }
}

/// Records how a call let through by `enter` ended.
pub fn leave(gate: Gate, outcome: Result<(), FailureClass>, latency_us: i64) {
    let (hash, probe) = match gate {
        Gate::Unshared => return,
        Gate::Normal(h) => (h, false),
        Gate::Probe(h) => (h, true),
    };
    let now = now_us();
    let threshold = guc::KMS_BREAKER_FAILURES.get().max(1) as u32;
    let window = i64::from(guc::KMS_BREAKER_WINDOW_S.get()) * 1_000_000;
    shmem::with_kms(true, |k, _| {
        let Some(b) = k.breakers.iter_mut().find(|b| b.command_hash == hash) else {
            return; // its slot was reused meanwhile
        };
        b.hook_runs += 1;
        b.last_latency_us = latency_us;
        let down = match outcome {
            Ok(()) => false,
            Err(class) => {
                b.hook_failures += 1;
                b.last_failure_us = now;
                b.last_failure_class = FailureClass::ALL
                    .iter()
                    .position(|x| *x == class)
                    .unwrap_or(0) as u32;
                class.means_kms_down()
            }
        };
        if !down {
            // The KMS answered (a refusal or a bad blob is an answer): closed.
            if outcome.is_ok() {
                b.last_success_us = now;
            }
            b.state = CLOSED;
            b.failures = 0;
            b.probe_pid = 0;
            return;
        }
        if probe {
            b.state = OPEN;
            b.opened_at_us = now;
            b.probe_pid = 0;
            return;
        }
        if b.failures == 0 || now - b.window_start_us > window {
            b.failures = 0;
            b.window_start_us = now;
        }
        b.failures += 1;
        if b.failures >= threshold && b.state == CLOSED {
            b.state = OPEN;
            b.opened_at_us = now;
        }
    });
}
