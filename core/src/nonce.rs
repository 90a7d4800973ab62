//! Nonces and fresh data keys.
//!
//! A getrandom syscall per nonce costs about 0.5 µs; a userspace ChaCha20 CSPRNG seeded
//! from the OS costs a few nanoseconds. The danger of a userspace generator inside
//! PostgreSQL is `fork()`: every backend is forked from the postmaster, and a generator
//! seeded before the fork would hand the same nonce stream to every child. So the source
//! remembers the process id it was seeded in and reseeds from the OS whenever the caller
//! reports a different one. (rand 0.9 dropped its own fork protection; we do not rely on it.)

use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, RngCore, SeedableRng, TryRngCore};
use zeroize::Zeroizing;

use crate::cipher::KEY_LEN;
use crate::envelope::NONCE_LEN;
use crate::error::{Error, Result};

/// Fork-aware source of 96-bit GCM nonces.
pub struct NonceSource {
    seeded_in_pid: u32,
    rng: Option<ChaCha20Rng>,
}

impl NonceSource {
    pub const fn new() -> Self {
        NonceSource {
            seeded_in_pid: 0,
            rng: None,
        }
    }

    /// The next nonce. `pid` is the calling process's id (PostgreSQL's `MyProcPid`).
    pub fn next_nonce(&mut self, pid: u32) -> Result<[u8; NONCE_LEN]> {
        let rng = match &mut self.rng {
            Some(rng) if self.seeded_in_pid == pid => rng,
            _ => {
                let fresh = ChaCha20Rng::try_from_os_rng()
                    .map_err(|e| Error::RandomSource(e.to_string()))?;
                self.seeded_in_pid = pid;
                self.rng.insert(fresh)
            }
        };
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        Ok(nonce)
    }
}

impl Default for NonceSource {
    fn default() -> Self {
        Self::new()
    }
}

/// Fills `buf` straight from the operating system (used for keys, never for nonces in bulk).
pub fn os_random(buf: &mut [u8]) -> Result<()> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|e| Error::RandomSource(e.to_string()))
}

/// A fresh 256-bit data key from the operating system's CSPRNG.
pub fn generate_data_key() -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    os_random(&mut key[..])?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reseeds_when_the_process_changes() {
        let mut a = NonceSource::new();
        let first = a.next_nonce(10).expect("nonce");
        // Simulate a fork: the child inherits the state but has a new pid.
        let mut child = NonceSource {
            seeded_in_pid: a.seeded_in_pid,
            rng: a.rng.clone(),
        };
        let parent_next = a.next_nonce(10).expect("nonce");
        let child_next = child.next_nonce(11).expect("nonce");
        assert_ne!(first, parent_next);
        assert_ne!(
            parent_next, child_next,
            "a forked child must not repeat the parent's stream"
        );
        // Without a pid change the cloned state would repeat: that is the hazard we guard against.
        let mut clone_same_pid = NonceSource {
            seeded_in_pid: a.seeded_in_pid,
            rng: a.rng.clone(),
        };
        assert_eq!(
            a.next_nonce(10).expect("n"),
            clone_same_pid.next_nonce(10).expect("n")
        );
    }

    #[test]
    fn data_keys_differ() {
        let k1 = generate_data_key().expect("key");
        let k2 = generate_data_key().expect("key");
        assert_ne!(*k1, *k2);
    }
}
