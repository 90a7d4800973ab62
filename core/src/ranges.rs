//! The block ranges of a parallel backfill, handed out in order to the participants (the
//! session that runs `dscsa.protect_column`, participant 0, and its background workers,
//! 1..=MAX_WORKERS), with what is done.
//!
//! The table lives in shared memory (plain `repr(C)` data, no pointers). What makes it
//! safe to resume from: `done_below()` is a range index below which every range is done,
//! and the protection records the block it stands for, never more. Ranges finish out of
//! order, so a window of `WINDOW` ranges past that mark remembers each one's state; a
//! participant that would claim beyond the window waits for the mark to move. A range of
//! a participant that stopped (a worker that failed) can be taken over by another.

/// Ranges past `done_below()` whose state is kept.
pub const WINDOW: usize = 1024;

const UNCLAIMED: u8 = 0;
const DONE: u8 = 1;
/// Claimed by participant p: `CLAIMED + p`.
const CLAIMED: u8 = 2;

/// What a participant may do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Backfill range `index`.
    Range(u64),
    /// Every range is claimed or the window is full: wait for others to finish theirs.
    Wait,
    /// Every range is done.
    Finished,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ranges {
    count: u64,
    next: u64,
    low: u64,
    state: [u8; WINDOW],
}

impl Ranges {
    pub const fn new(count: u64) -> Self {
        Ranges {
            count,
            next: 0,
            low: 0,
            state: [UNCLAIMED; WINDOW],
        }
    }

    fn slot(&self, index: u64) -> usize {
        (index % WINDOW as u64) as usize
    }

    /// The next range in order for `participant` (at most 253).
    pub fn claim(&mut self, participant: u8) -> Claim {
        if self.low >= self.count {
            return Claim::Finished;
        }
        if self.next >= self.count || self.next >= self.low + WINDOW as u64 {
            return Claim::Wait;
        }
        let index = self.next;
        let slot = self.slot(index);
        self.state[slot] = CLAIMED.saturating_add(participant);
        self.next += 1;
        Claim::Range(index)
    }

    /// Whether every range has been handed out (a worker then has nothing left to do).
    pub fn all_claimed(&self) -> bool {
        self.next >= self.count
    }

    /// Takes over the first range still claimed by a participant for which `stopped`
    /// holds, for `participant`.
    pub fn take_over(&mut self, participant: u8, stopped: impl Fn(u8) -> bool) -> Option<u64> {
        let index = (self.low..self.next).find(|&i| {
            let s = self.state[self.slot(i)];
            s >= CLAIMED && s - CLAIMED != participant && stopped(s - CLAIMED)
        })?;
        let slot = self.slot(index);
        self.state[slot] = CLAIMED.saturating_add(participant);
        Some(index)
    }

    /// Range `index` is done (committed) by `participant`; ignored unless it holds the
    /// range (it was taken over meanwhile, or is not in the window).
    pub fn done(&mut self, index: u64, participant: u8) -> bool {
        if index < self.low || index >= self.next {
            return false;
        }
        let slot = self.slot(index);
        if self.state[slot] != CLAIMED.saturating_add(participant) {
            return false;
        }
        self.state[slot] = DONE;
        while self.low < self.next && self.state[self.slot(self.low)] == DONE {
            let low = self.slot(self.low);
            self.state[low] = UNCLAIMED;
            self.low += 1;
        }
        true
    }

    /// Every range below this index is done.
    pub fn done_below(&self) -> u64 {
        self.low
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_come_in_order_and_the_mark_waits_for_the_slowest() {
        let mut r = Ranges::new(4);
        assert_eq!(r.claim(0), Claim::Range(0));
        assert_eq!(r.claim(1), Claim::Range(1));
        assert_eq!(r.claim(2), Claim::Range(2));
        assert!(r.done(2, 2));
        assert!(r.done(1, 1));
        assert_eq!(r.done_below(), 0, "range 0 is still running");
        assert!(r.done(0, 0));
        assert_eq!(r.done_below(), 3);
        assert_eq!(r.claim(1), Claim::Range(3));
        assert!(r.all_claimed());
        assert_eq!(r.claim(2), Claim::Wait);
        assert!(r.done(3, 1));
        assert_eq!(r.claim(0), Claim::Finished);
    }

    #[test]
    fn only_the_holder_can_finish_a_range() {
        let mut r = Ranges::new(2);
        assert_eq!(r.claim(1), Claim::Range(0));
        assert!(!r.done(0, 2), "another participant");
        assert!(!r.done(1, 1), "not claimed yet");
        assert!(!r.done(7, 1), "out of range");
        assert_eq!(r.done_below(), 0);
        assert!(r.done(0, 1));
        assert!(!r.done(0, 1), "already done");
    }

    #[test]
    fn a_stopped_participants_ranges_are_taken_over() {
        let mut r = Ranges::new(3);
        assert_eq!(r.claim(1), Claim::Range(0));
        assert_eq!(r.claim(2), Claim::Range(1));
        assert_eq!(r.claim(0), Claim::Range(2));
        assert_eq!(r.take_over(0, |p| p == 3), None, "nobody stopped");
        assert_eq!(r.take_over(0, |p| p == 2), Some(1));
        assert!(!r.done(1, 2), "the stopped worker no longer holds it");
        assert!(r.done(0, 1));
        assert!(r.done(2, 0));
        assert!(r.done(1, 0));
        assert_eq!(r.claim(0), Claim::Finished);
    }

    #[test]
    fn the_window_bounds_how_far_claims_run_ahead() {
        let mut r = Ranges::new(WINDOW as u64 + 10);
        for i in 0..WINDOW as u64 {
            assert_eq!(r.claim(1), Claim::Range(i));
        }
        assert_eq!(r.claim(1), Claim::Wait, "range 0 holds the window");
        for i in 1..WINDOW as u64 {
            assert!(r.done(i, 1));
        }
        assert_eq!(r.claim(1), Claim::Wait);
        assert!(r.done(0, 1));
        assert_eq!(r.done_below(), WINDOW as u64);
        assert_eq!(r.claim(1), Claim::Range(WINDOW as u64));
    }

    #[test]
    fn no_ranges_is_finished_at_once() {
        let mut r = Ranges::new(0);
        assert_eq!(r.claim(0), Claim::Finished);
        assert!(r.all_claimed());
    }

    /// Any interleaving of claims, completions and stops ends with every range done
    /// exactly once by its holder, and the mark never passes a range that is not done.
    #[test]
    fn random_schedules_finish_every_range() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let count = next() % 3000;
            let mut r = Ranges::new(count);
            let mut holding: [Option<u64>; 4] = [None; 4];
            let mut stopped = [false; 4];
            let mut done = vec![false; count as usize];
            let mut steps = 0;
            loop {
                steps += 1;
                assert!(steps < 1_000_000, "no progress");
                let p = (next() % 4) as usize;
                if stopped[p] {
                    continue;
                }
                if p != 0 && next() % 500 == 0 {
                    stopped[p] = true;
                    continue;
                }
                if let Some(i) = holding[p] {
                    assert!(r.done(i, p as u8));
                    assert!(!done[i as usize]);
                    done[i as usize] = true;
                    holding[p] = None;
                    assert!(done[..r.done_below() as usize].iter().all(|d| *d));
                    continue;
                }
                match r.claim(p as u8) {
                    Claim::Range(i) => holding[p] = Some(i),
                    Claim::Finished => break,
                    Claim::Wait if p == 0 => {
                        holding[0] = r.take_over(0, |q| stopped[q as usize]);
                    }
                    Claim::Wait => {}
                }
            }
            assert!(done.iter().all(|d| *d));
            assert_eq!(r.done_below(), count);
        }
    }
}
