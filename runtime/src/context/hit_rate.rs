//! The hit-rate gate (aioctx's own; QEMU has none): whether busy-polling has been paying lately, and
//! so whether the loop spins its poll window at all. The window's length is `poll_params.rs`'s rule;
//! `polling.rs` asks the gate before a polling phase and tells it how the phase ended. Pure: tested on
//! scripted phase outcomes below.
//!
//! A phase *hits* when it ends before its window ran out (a poll function or the completion ring had
//! work, or a due timer ended it) and *misses* when the window ran out. A miss costs the whole window
//! of CPU and, with io_uring, a submission of its own; on a machine with more busy threads than cores
//! that CPU is taken from the thread that was to produce the event. While the moving average of hits
//! is under [`PollParams::min_hit_percent`], the loop polls only one chance in 8 (a sample, so that the
//! average sees the load change) and skips the polling phase otherwise, as with polling off; every
//! sample that misses doubles that interval, up to 256, so a load that polling never catches pays for
//! a miss in well under 1% of its requests and keeps the tail latency of polling off.

use std::cell::Cell;

use crate::PollParams;

/// A rate's fixed-point one: rates run from 0 (every recent phase missed) to this (every one hit).
/// 32 fraction bits keep a step of `1/2^weight` exact for every weight that matters (up to 32).
const ONE: u64 = 1 << 32;

/// The sampling interval while the rate is under the minimum: it starts here...
const SAMPLE_INTERVAL_MIN: u32 = 8;
/// ...and every sample that misses doubles it, up to this. A sample that hits brings it back.
const SAMPLE_INTERVAL_MAX: u32 = 256;

/// One gate: the moving average of hits and, under the minimum, the sampling interval. It starts at
/// "every phase hit", so a new context polls.
#[derive(Debug)]
pub(crate) struct HitRate {
    rate: Cell<u64>,
    /// Chances skipped since the last phase that ran.
    skipped: Cell<u32>,
    /// Under the minimum: one chance in this many polls.
    interval: Cell<u32>,
}

/// A polling phase the gate admitted; hand it back to [`HitRate::record`] when it ends.
#[derive(Debug)]
#[must_use]
pub(crate) struct Phase {
    /// Admitted as a sample (the rate was under the minimum).
    sample: bool,
}

impl Default for HitRate {
    fn default() -> Self {
        Self {
            rate: Cell::new(ONE),
            skipped: Cell::new(0),
            interval: Cell::new(SAMPLE_INTERVAL_MIN),
        }
    }
}

impl HitRate {
    fn below_minimum(&self, params: PollParams) -> bool {
        // `validate` keeps min_hit_percent at most 100.
        self.rate.get() < ONE * params.min_hit_percent / 100
    }

    /// Whether this chance may poll: always while the rate is at least the minimum, else once per
    /// sampling interval. Asking changes nothing: call [`skip`](Self::skip) for a chance that does
    /// not poll and [`begin`](Self::begin) for one that does, so a chance that ends up not polling
    /// for another reason (completions already waiting) does not use up a sample.
    pub(crate) fn admits(&self, params: PollParams) -> bool {
        !self.below_minimum(params) || self.skipped.get() + 1 >= self.interval.get()
    }

    /// A chance the gate did not admit.
    pub(crate) fn skip(&self) {
        self.skipped.set(self.skipped.get() + 1);
    }

    /// An admitted chance starts its polling phase.
    pub(crate) fn begin(&self, params: PollParams) -> Phase {
        self.skipped.set(0);
        Phase {
            sample: self.below_minimum(params),
        }
    }

    /// `phase` ended: `hit` if it found work before its window ran out. The step is rounded up so
    /// that a run of hits (misses) reaches one (zero) exactly.
    pub(crate) fn record(&self, params: PollParams, phase: Phase, hit: bool) {
        let rate = self.rate.get();
        let step = |distance: u64| distance.div_ceil(1 << params.shift());
        self.rate.set(if hit {
            rate + step(ONE - rate)
        } else {
            rate - step(rate)
        });
        let interval = self.interval.get();
        self.interval.set(match (hit, phase.sample) {
            (true, _) => SAMPLE_INTERVAL_MIN,
            (false, true) => (interval * 2).min(SAMPLE_INTERVAL_MAX),
            (false, false) => interval,
        });
    }

    /// Forgets the history (new parameters): the next chance polls.
    pub(crate) fn reset(&self) {
        self.rate.set(ONE);
        self.skipped.set(0);
        self.interval.set(SAMPLE_INTERVAL_MIN);
    }

    /// The rate in whole percent (rounded down).
    #[cfg(test)]
    fn percent(&self) -> u64 {
        self.rate.get() * 100 / ONE
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const P: PollParams = PollParams::IOTHREAD;

    /// One chance: polls if admitted, and the phase hits if `hit()` (asked only then). Returns
    /// whether it polled.
    fn chance_with(gate: &HitRate, params: PollParams, hit: impl FnOnce() -> bool) -> bool {
        if !gate.admits(params) {
            gate.skip();
            return false;
        }
        let phase = gate.begin(params);
        gate.record(params, phase, hit());
        true
    }

    fn chance(gate: &HitRate, params: PollParams, hit: bool) -> bool {
        chance_with(gate, params, || hit)
    }

    /// Runs `chances` chances, the `i`th hitting if admitted and `hit(i)`. Returns how many polled.
    fn chances(gate: &HitRate, params: PollParams, n: usize, hit: impl Fn(usize) -> bool) -> usize {
        (0..n).filter(|&i| chance(gate, params, hit(i))).count()
    }

    #[test]
    fn a_new_gate_admits_every_chance_and_hits_keep_it_open() {
        let gate = HitRate::default();
        assert_eq!(gate.percent(), 100);
        assert_eq!(chances(&gate, P, 1_000, |_| true), 1_000);
        // A reads-from-cache or cross-thread-wake load: one miss in 50 keeps the rate far above 75%.
        assert_eq!(chances(&gate, P, 1_000, |i| i % 50 != 0), 1_000);
        assert!(gate.percent() >= 90, "{}", gate.percent());
    }

    #[test]
    fn misses_below_the_minimum_leave_one_chance_in_8() {
        let gate = HitRate::default();
        // Weight 3: each miss keeps 7/8 of the rate; 87, 76, then 66%, under the IOThread's 75%.
        for expected in [87, 76, 66] {
            assert!(chance(&gate, P, false));
            assert_eq!(gate.percent(), expected);
        }
        let polled: Vec<bool> = (0..16).map(|_| chance(&gate, P, true)).collect();
        assert_eq!(polled.iter().position(|&p| p), Some(7), "{polled:?}");
    }

    /// A chance admitted but never polled (completions were already waiting) keeps its sample.
    #[test]
    fn an_admitted_chance_that_does_not_poll_keeps_the_sample() {
        let gate = HitRate::default();
        chances(&gate, P, 3, |_| false);
        for _ in 0..7 {
            assert!(!gate.admits(P));
            gate.skip();
        }
        assert!(gate.admits(P));
        assert!(gate.admits(P), "asking again changes nothing");
        assert!(chance(&gate, P, false), "the sample is still there");
    }

    /// A write-heavy qd1 load in which one admitted phase in five finds its completion in time polls
    /// a small share of its chances once the rate has fallen.
    #[test]
    fn a_load_that_mostly_misses_polls_a_small_share_of_chances() {
        let gate = HitRate::default();
        let phases = Cell::new(0u32);
        let every_fifth_phase_hits = || {
            phases.set(phases.get() + 1);
            phases.get() % 5 == 0
        };
        let run = |n| {
            (0..n)
                .filter(|_| chance_with(&gate, P, every_fifth_phase_hits))
                .count()
        };
        run(100);
        let polled = run(10_000);
        // About one in 50 (201 here): hits bring the interval back to 8, the misses between them
        // double it. Without the gate all 10,000 would poll; without the backoff, 1,250.
        assert!(
            (100..=400).contains(&polled),
            "{polled} of 10000 chances polled"
        );
    }

    /// A load polling never catches: every sample misses, and the interval doubles from 8 to 256.
    #[test]
    fn samples_that_miss_back_off_to_one_chance_in_256() {
        let gate = HitRate::default();
        chances(&gate, P, 3, |_| false);
        let polled_at: Vec<usize> = (1..=2_000).filter(|_| chance(&gate, P, false)).collect();
        let gaps: Vec<usize> = polled_at
            .iter()
            .scan(0, |last, &at| Some(at - std::mem::replace(last, at)))
            .collect();
        assert_eq!(gaps[..7], [8, 16, 32, 64, 128, 256, 256], "{gaps:?}");
        assert!(gaps[7..].iter().all(|&gap| gap == 256), "{gaps:?}");
        // A sample that hits brings the interval back to 8.
        while !chance(&gate, P, true) {}
        assert_eq!((1..=8).filter(|_| chance(&gate, P, true)).count(), 1);
    }

    #[test]
    fn hits_in_the_sampled_chances_open_the_gate_again() {
        let gate = HitRate::default();
        for _ in 0..200 {
            gate.record(P, Phase { sample: false }, false);
        }
        assert_eq!(gate.percent(), 0);
        // From 0, 11 hits in a row pass 75% (1 - (7/8)^11 = 0.77): 11 sampled chances, 8 apart.
        let (mut n, mut polled) = (0, 0);
        while gate.percent() < 75 {
            n += 1;
            polled += usize::from(chance(&gate, P, true));
        }
        assert_eq!(polled, 11);
        assert!(n <= 88, "{n} chances");
        assert_eq!(chances(&gate, P, 100, |_| true), 100, "open again");
    }

    #[test]
    fn min_hit_percent_zero_polls_at_every_chance() {
        let qemu = PollParams {
            min_hit_percent: 0,
            ..P
        };
        let gate = HitRate::default();
        assert_eq!(chances(&gate, qemu, 1_000, |_| false), 1_000);
        assert_eq!(gate.percent(), 0);
        // 100 demands that every recent phase hit: one miss closes the gate until hits repair it.
        let strict = PollParams {
            min_hit_percent: 100,
            ..P
        };
        let gate = HitRate::default();
        chance(&gate, strict, false);
        assert!(!gate.admits(strict));
    }

    #[test]
    fn the_gate_weighs_phases_like_the_block_times() {
        let misses_to_close = |weight| {
            let params = PollParams { weight, ..P };
            let gate = HitRate::default();
            (1..100_000)
                .find(|_| {
                    chance(&gate, params, false);
                    !gate.admits(params)
                })
                .expect("misses close the gate")
        };
        assert_eq!(misses_to_close(1), 1, "the newest phase counts 1/2");
        assert_eq!(misses_to_close(3), 3);
        assert_eq!(misses_to_close(5), 10);
        // A heavy weight is slow, not stuck: at weight 16 a miss keeps 1 - 2^-16 of the rate.
        assert!((18_000..20_000).contains(&misses_to_close(16)));
        let gate = HitRate::default();
        chances(&gate, P, 50, |_| false);
        gate.reset();
        assert_eq!(gate.percent(), 100);
        assert!(gate.admits(P));
    }
}
