//! Which envelopes a role sealed itself, recently.
//!
//! A blind index is computed from a value's plaintext. When a role writes an envelope into
//! a blind-indexed column, the blind-index trigger has to decrypt it to hash it; if the
//! role cannot decrypt, the index it reads back afterwards would turn the trigger into an
//! oracle for values it could not see (copy someone's lot ciphertext in, read its HMAC
//! out, guess). A role that sealed the envelope itself already knew the plaintext and
//! could have called `dscsa.blind_index` on it, so indexing it reveals nothing new.
//!
//! This log remembers the nonces of the last `capacity` envelopes sealed in the backend's
//! current transaction, with the role that sealed each. Nonces are 96 random bits, so
//! they identify an envelope; the log is cleared at every transaction end. An envelope
//! older than the window needs the decrypt privilege, exactly as one sealed by another role.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::envelope::NONCE_LEN;

/// Default window: enough for any realistic INSERT ... SELECT / VALUES list, bounded in
/// memory (about 3 MiB at most).
pub const DEFAULT_CAPACITY: usize = 65_536;

/// Nonces are uniformly random: their first eight bytes are already a good hash.
#[derive(Default)]
struct NonceHasher(u64);

impl Hasher for NonceHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(17) ^ u64::from_le_bytes(word);
        }
    }
}

type Nonce = [u8; NONCE_LEN];

/// A bounded log of (nonce, sealing role).
pub struct SealLog {
    capacity: usize,
    order: VecDeque<Nonce>,
    sealed_by: HashMap<Nonce, u32, BuildHasherDefault<NonceHasher>>,
}

impl SealLog {
    pub fn new(capacity: usize) -> Self {
        SealLog {
            capacity,
            order: VecDeque::new(),
            sealed_by: HashMap::default(),
        }
    }

    /// Records that `role` sealed the envelope with this nonce; forgets the oldest entry
    /// once the window is full.
    pub fn record(&mut self, nonce: &Nonce, role: u32) {
        if self.capacity == 0 {
            return;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.sealed_by.remove(&oldest);
            }
        }
        self.order.push_back(*nonce);
        self.sealed_by.insert(*nonce, role);
    }

    /// Whether `role` sealed the envelope with this nonce within the window.
    pub fn sealed_by(&self, nonce: &Nonce, role: u32) -> bool {
        self.sealed_by.get(nonce) == Some(&role)
    }

    pub fn clear(&mut self) {
        if !self.order.is_empty() {
            self.order.clear();
            self.sealed_by.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nonce(i: u32) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&i.to_le_bytes());
        n[8..].copy_from_slice(&(i ^ 0xdead_beef).to_be_bytes());
        n
    }

    #[test]
    fn remembers_the_sealing_role_only() {
        let mut log = SealLog::new(8);
        log.record(&nonce(1), 10);
        assert!(log.sealed_by(&nonce(1), 10));
        assert!(
            !log.sealed_by(&nonce(1), 11),
            "another role did not seal it"
        );
        assert!(!log.sealed_by(&nonce(2), 10), "never sealed");
        log.clear();
        assert!(!log.sealed_by(&nonce(1), 10), "cleared at transaction end");
        assert!(log.is_empty());
    }

    #[test]
    fn forgets_the_oldest_beyond_the_window() {
        let mut log = SealLog::new(3);
        for i in 0..5 {
            log.record(&nonce(i), 7);
        }
        assert_eq!(log.len(), 3);
        assert!(!log.sealed_by(&nonce(0), 7));
        assert!(!log.sealed_by(&nonce(1), 7));
        for i in 2..5 {
            assert!(log.sealed_by(&nonce(i), 7));
        }
        let mut off = SealLog::new(0);
        off.record(&nonce(1), 7);
        assert!(!off.sealed_by(&nonce(1), 7));
    }

    proptest! {
        // Against a plain model: an entry is found iff it is among the last `cap` recorded
        // (nonces unique, as random 96-bit nonces are) and the role matches.
        #[test]
        fn matches_a_sliding_window_model(cap in 1usize..50, roles in proptest::collection::vec(0u32..3, 0..200)) {
            let mut log = SealLog::new(cap);
            for (i, role) in roles.iter().enumerate() {
                log.record(&nonce(i as u32), *role);
            }
            let start = roles.len().saturating_sub(cap);
            for (i, role) in roles.iter().enumerate() {
                for probe in 0..3u32 {
                    let expected = i >= start && probe == *role;
                    prop_assert_eq!(log.sealed_by(&nonce(i as u32), probe), expected);
                }
            }
            prop_assert_eq!(log.len(), roles.len().min(cap));
        }
    }
}
