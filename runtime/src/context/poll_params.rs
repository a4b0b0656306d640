//! [`PollParams`]: the adaptive polling parameters, and the rule that sizes the busy-poll window from
//! how long the loop blocked (QEMU's `adjust_block_ns`, `grow_polling_time` and `shrink_polling_time`
//! of the `poll-weight` series, which replaced `adjust_polling_time`). The rule is pure: the machinery
//! that spins and feeds it block times is `polling.rs`; whether a window is spun at all is the
//! hit-rate gate's decision (`hit_rate.rs`).

use std::cell::Cell;
use std::io;

/// The largest accepted weight (a shift of an `i64`).
const MAX_POLL_WEIGHT: u64 = 62;

/// How long the loop may busy-poll before it sleeps, and how that window adapts.
///
/// Every handler with a poll function keeps an estimate of how long the loop blocks between its events:
/// a weighted moving average of the block times of the iterations that dispatched it (the newest counts
/// `1/2^weight`; the first one after a reset counts fully). An iteration that does not dispatch the
/// handler adds its block time to the estimate, so a handler that goes quiet soon stops counting. An
/// estimate that reaches `max_ns` drops to 0: the loop keeps blocking longer than it would ever poll,
/// so polling for that handler would only burn CPU.
///
/// The context polls for one window, adjusted after each iteration that dispatched a polled handler,
/// toward the largest estimate among those handlers: a larger estimate grows it (multiplied by `grow`,
/// 2 when `grow` is 0, or straight to the estimate if that is larger), capped at `max_ns`; an estimate
/// that dropped to 0 shrinks it (divided by `shrink`, or reset to 0 when `shrink` is 0); an estimate
/// below the window divided by `shrink` (2 when 0) divides it. `max_ns == 0` turns polling off
/// entirely.
///
/// Whether a window is spun at all depends on how often polling has paid lately: a polling phase
/// *hits* when a poll function or the fd monitor's completions show work (or a due timer ends it)
/// before its window elapses, and *misses* when the window runs out. With `min_hit_percent` set, the
/// context keeps a moving average of hits (weighted like the block times), one for phases that wait
/// for its own I/O (user SQEs in flight) and one for the others; while the average of a kind is below
/// that percentage, the loop polls only one chance of that kind in 8 and otherwise goes to its wait
/// without a polling phase, as with polling off (it still spins through the measured wake-up latency
/// before a timer's deadline), and each of those samples that misses doubles the interval, up to 256.
/// A miss costs its whole window of CPU, and with io_uring a submission of its own; on a machine with
/// more busy threads than cores that CPU is taken from the thread that would have produced the event.
/// [`AioContext::set_poll_params`](crate::AioContext::set_poll_params) starts the averages afresh.
///
/// ```
/// let ctx = aioctx::AioContext::new()?;
/// // What an IOThread uses (weight 0 is the default, 3): poll up to 64 us, double on growth, reset
/// // when blocks keep being long, average block times with the newest one counting 1/8, and poll
/// // at every chance only while at least 75% of recent polling phases found work.
/// ctx.set_poll_params(aioctx::PollParams {
///     max_ns: 65_536,
///     grow: 0,
///     shrink: 0,
///     weight: 3,
///     min_hit_percent: 75,
/// })?;
/// assert_eq!(ctx.poll_params().weight, 3);
/// // A heavier newest sample (1/2) follows changes in the load faster.
/// ctx.set_poll_params(aioctx::PollParams { weight: 1, ..ctx.poll_params() })?;
/// assert_eq!(ctx.poll_params().weight, 1);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollParams {
    /// The largest window in ns; 0 disables polling (the default for a bare context, as in QEMU).
    pub max_ns: u64,
    /// Growth factor; 0 means 2.
    pub grow: u64,
    /// Shrink divisor; 0 means reset the window to 0 when block times keep exceeding `max_ns` (and
    /// halve it when they are merely below half the window).
    pub shrink: u64,
    /// QEMU's `poll-weight`: the newest block time counts `1/2^weight` in a handler's moving average;
    /// 0 means [`PollParams::DEFAULT_WEIGHT`] (3, i.e. 1/8). Larger values adapt more slowly. At most 62.
    pub weight: u64,
    /// The share of recent polling phases, in percent, that must have found work for the loop to
    /// poll at every chance; below it, it polls one chance in 8 to 256 (to notice when polling pays
    /// again) and skips the polling phase otherwise. 0 means no minimum: poll at every chance, as QEMU
    /// does. At most 100.
    pub min_hit_percent: u64,
}

impl PollParams {
    /// The weight used when [`weight`](Self::weight) is 0: the newest block time counts 1/2^3 = 1/8
    /// (QEMU's `POLL_WEIGHT_SHIFT`).
    pub const DEFAULT_WEIGHT: u64 = 3;

    /// An IOThread's defaults: QEMU's grow x2, shrink to 0 and weight 0 (the default, 3: the newest
    /// block time counts 1/8), with aioctx's own `max_ns` 65536 (QEMU's is 32768) and
    /// `min_hit_percent` 75 (QEMU has no such rule).
    ///
    /// Why 64 us: QEMU's 32 us suits a host where a sleeping thread wakes in a few microseconds. In a
    /// virtual machine, where IOThreads often run (cloud instances, nested guests), each wake-up of a
    /// sleeping thread costs 20-25 us, so a request cycle at depth 1 (the guest's wake-up and next
    /// request, then a buffered write that io_uring hands to a kernel worker) takes 40-50 us. A 32 us
    /// cap cannot cover it: windows run out or the gate stops polling, the loop falls asleep in the
    /// middle of the cycle and pays the wake-up it polled to avoid, and on a 2-vCPU VM about one write
    /// in six at depth 1 took 32 us longer than with polling off (randrw's p99 1.1-1.5x off's). With
    /// 64 us the loop polls through the cycle. The hit-rate gate bounds what the longer window can
    /// waste when polling does not pay.
    /// QEMU's exact rule is `PollParams { max_ns: 32_768, min_hit_percent: 0, ..PollParams::IOTHREAD }`.
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("defaults")?;
    /// assert_eq!(io.poll_params()?, aioctx::PollParams::IOTHREAD);
    /// assert_eq!(io.poll_params()?.max_ns, 65_536);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub const IOTHREAD: PollParams = PollParams {
        max_ns: 65_536,
        grow: 0,
        shrink: 0,
        weight: 0,
        min_hit_percent: 75,
    };

    pub(crate) fn validate(self) -> io::Result<Self> {
        if self.max_ns > i64::MAX as u64
            || self.grow > i64::MAX as u64
            || self.weight > MAX_POLL_WEIGHT
            || self.min_hit_percent > 100
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "poll parameters out of range (max_ns and grow must fit in i64, weight be at most \
                     {MAX_POLL_WEIGHT}, min_hit_percent at most 100): {self:?}"
                ),
            ));
        }
        Ok(self)
    }

    pub(crate) fn max_ns_i64(self) -> i64 {
        self.max_ns.min(i64::MAX as u64) as i64
    }

    /// The weight as a shift, 0 meaning the default.
    pub(super) fn shift(self) -> u32 {
        match self.weight {
            0 => Self::DEFAULT_WEIGHT as u32,
            w => w.min(MAX_POLL_WEIGHT) as u32,
        }
    }

    /// A handler's new block-time estimate after an iteration that blocked `block_ns`: the weighted
    /// average if the iteration dispatched it (`event`), else the estimate plus the block time (a
    /// quiet handler's estimate only grows, and 0 stays 0 until its next event). Reaching `max_ns`
    /// resets it to 0.
    pub(crate) fn next_estimate(self, estimate: i64, block_ns: i64, event: bool) -> i64 {
        let block_ns = block_ns.max(0);
        let next = if event {
            if estimate == 0 {
                block_ns
            } else {
                let shift = self.shift();
                estimate - (estimate >> shift) + (block_ns >> shift)
            }
        } else if estimate == 0 {
            0
        } else {
            estimate.saturating_add(block_ns)
        };
        if next >= self.max_ns_i64() {
            0
        } else {
            next
        }
    }

    /// The context's new window from `adj`, the largest estimate among the handlers an iteration
    /// dispatched (QEMU's `grow_polling_time`/`shrink_polling_time`).
    pub(crate) fn next_window(self, window: i64, adj: i64) -> i64 {
        let max = self.max_ns_i64();
        if adj > window {
            let grow = if self.grow == 0 {
                2
            } else {
                self.grow.min(i64::MAX as u64) as i64
            };
            adj.max(window.saturating_mul(grow)).min(max)
        } else {
            let shrink = if self.shrink == 0 {
                2
            } else {
                self.shrink.min(i64::MAX as u64) as i64
            };
            if adj == 0 {
                // Blocks keep exceeding max_ns.
                if self.shrink == 0 {
                    0
                } else {
                    window / shrink
                }
            } else if adj < window / shrink {
                window / shrink
            } else {
                window
            }
        }
    }
}

/// A polled handler's share of the adaptation: its block-time estimate and whether the current
/// iteration dispatched it (QEMU's `AioPolledEvent`).
#[derive(Debug, Default)]
pub(crate) struct BlockEstimate {
    ns: Cell<i64>,
    event: Cell<bool>,
}

impl BlockEstimate {
    /// The iteration dispatched the handler.
    pub(crate) fn mark_event(&self) {
        self.event.set(true);
    }

    /// Forgets the history (new parameters).
    pub(crate) fn reset(&self) {
        self.ns.set(0);
        self.event.set(false);
    }
}

/// After an iteration that blocked `block_ns`: updates every polled handler's estimate and returns the
/// context's new window (QEMU's `adjust_block_ns`). Iterations that dispatched no polled handler leave
/// the window as it is.
pub(crate) fn adjust_after_iteration<'a>(
    params: PollParams,
    window: i64,
    block_ns: i64,
    handlers: impl IntoIterator<Item = &'a BlockEstimate>,
) -> i64 {
    let mut adj = None;
    for h in handlers {
        let event = h.event.replace(false);
        let ns = params.next_estimate(h.ns.get(), block_ns, event);
        h.ns.set(ns);
        if event {
            adj = Some(adj.map_or(ns, |a: i64| a.max(ns)));
        }
    }
    adj.map_or(window, |adj| params.next_window(window, adj))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// QEMU's IOThread parameters: the window rule is QEMU's, so its cases use QEMU's 32 us cap.
    const P: PollParams = PollParams {
        max_ns: 32_768,
        ..PollParams::IOTHREAD
    };

    /// A scripted loop: each step is one iteration's block time and the handlers it dispatched.
    struct Script {
        params: PollParams,
        window: i64,
        handlers: Vec<BlockEstimate>,
    }

    impl Script {
        fn new(params: PollParams, handlers: usize) -> Self {
            Script {
                params,
                window: 0,
                handlers: (0..handlers).map(|_| BlockEstimate::default()).collect(),
            }
        }

        fn step(&mut self, block_ns: i64, events: &[usize]) -> i64 {
            for &i in events {
                self.handlers[i].mark_event();
            }
            self.window =
                adjust_after_iteration(self.params, self.window, block_ns, &self.handlers);
            self.window
        }

        fn steps(&mut self, n: usize, block_ns: i64, events: &[usize]) -> i64 {
            for _ in 0..n {
                self.step(block_ns, events);
            }
            self.window
        }

        fn estimate(&self, i: usize) -> i64 {
            self.handlers[i].ns.get()
        }
    }

    #[test]
    fn first_event_takes_the_block_time_then_the_average_weighs_it_by_weight() {
        assert_eq!(P.next_estimate(0, 8_000, true), 8_000);
        // Weight 3 (the default): 8000 - 8000/8 + 16000/8.
        assert_eq!(P.next_estimate(8_000, 16_000, true), 9_000);
        let halves = PollParams { weight: 1, ..P };
        assert_eq!(halves.next_estimate(8_000, 16_000, true), 12_000);
        // A negative block time (a clock step) counts as 0.
        assert_eq!(P.next_estimate(8_000, -5, true), 7_000);
    }

    #[test]
    fn an_estimate_reaching_max_ns_drops_to_zero() {
        assert_eq!(P.next_estimate(30_000, 40_000, true), 31_250);
        assert_eq!(P.next_estimate(31_250, 1_000_000, true), 0);
        assert_eq!(
            P.next_estimate(0, 32_768, true),
            0,
            "a first block at max_ns"
        );
    }

    #[test]
    fn a_quiet_handler_accumulates_block_time_until_it_drops_out() {
        assert_eq!(P.next_estimate(10_000, 10_000, false), 20_000);
        assert_eq!(P.next_estimate(20_000, 10_000, false), 30_000);
        assert_eq!(P.next_estimate(30_000, 10_000, false), 0);
        assert_eq!(P.next_estimate(0, 10_000, false), 0, "0 waits for an event");
    }

    #[test]
    fn the_window_grows_to_the_estimate_or_by_the_grow_factor_up_to_max() {
        assert_eq!(P.next_window(0, 5_000), 5_000);
        assert_eq!(P.next_window(5_000, 6_000), 10_000);
        assert_eq!(P.next_window(10_000, 30_000), 30_000);
        assert_eq!(P.next_window(30_000, 31_000), 32_768);
        let by4 = PollParams { grow: 4, ..P };
        assert_eq!(by4.next_window(4_000, 5_000), 16_000);
    }

    #[test]
    fn the_window_halves_when_blocks_get_much_shorter() {
        assert_eq!(P.next_window(32_000, 10_000), 16_000);
        assert_eq!(P.next_window(32_000, 20_000), 32_000, "within 2x: kept");
        assert_eq!(P.next_window(16_000, 16_000), 16_000);
        let by4 = PollParams { shrink: 4, ..P };
        assert_eq!(by4.next_window(32_000, 4_000), 8_000);
    }

    #[test]
    fn long_blocks_reset_the_window_or_divide_it_by_shrink() {
        assert_eq!(P.next_window(16_000, 0), 0);
        assert_eq!(PollParams { shrink: 2, ..P }.next_window(16_000, 0), 8_000);
        assert_eq!(PollParams { shrink: 4, ..P }.next_window(16_000, 0), 4_000);
    }

    /// Cross-thread wakes and qd1 requests: the loop blocks about as long each time; the window opens
    /// at once and covers that block time, so the next one is caught by polling.
    #[test]
    fn steady_short_blocks_open_a_window_that_covers_them() {
        let mut s = Script::new(P, 2);
        assert_eq!(s.step(6_000, &[0]), 6_000, "open after one dispatch");
        for _ in 0..50 {
            let w = s.step(6_000, &[0, 1]);
            assert!((6_000..=12_000).contains(&w), "window {w}");
        }
    }

    /// The loss the weight fixes: a loop that keeps blocking longer than it may poll stops polling after
    /// one such block, and stays stopped.
    #[test]
    fn a_loop_that_keeps_blocking_long_stops_polling() {
        let mut s = Script::new(P, 1);
        assert!(s.steps(20, 6_000, &[0]) > 0);
        assert_eq!(s.step(1_000_000, &[0]), 0);
        for _ in 0..100 {
            assert_eq!(
                s.step(1_000_000, &[0]),
                0,
                "no polling while blocks stay long"
            );
        }
        let mut halving = Script::new(PollParams { shrink: 2, ..P }, 1);
        let open = halving.steps(20, 20_000, &[0]);
        let steps = (1..100)
            .find(|_| halving.step(1_000_000, &[0]) == 0)
            .expect("the window reaches 0");
        assert!(steps <= 16, "{steps} halvings of {open}");
        assert_eq!(halving.step(1_000_000, &[0]), 0, "and stays 0");
    }

    /// One outlier among short blocks moves the average by 1/8 of itself: the window survives, where
    /// the rule before `poll-weight` reset it on any block over `max_ns`.
    #[test]
    fn one_long_block_among_short_ones_keeps_the_window() {
        let mut s = Script::new(P, 1);
        let open = s.steps(20, 5_000, &[0]);
        assert!(s.step(100_000, &[0]) >= open);
        assert!(s.estimate(0) > 5_000 && s.estimate(0) < 32_768);
        let w = s.steps(50, 5_000, &[0]);
        assert!(
            (5_000..=10_000).contains(&w),
            "covers the short blocks again: {w}"
        );
        // Two outliers in a row are a pattern: 5 us + 100/8 us, then + 200/8 us passes max_ns.
        s.step(100_000, &[0]);
        assert_eq!(s.step(200_000, &[0]), 0);
    }

    /// A handler that went quiet neither holds the window open (it is adjusted by the handlers that have
    /// events) nor stays in the average (its estimate grows by every block and drops out).
    #[test]
    fn a_quiet_handler_does_not_hold_the_window_open() {
        let mut s = Script::new(P, 2);
        assert_eq!(s.steps(5, 30_000, &[0]), 30_000);
        let w = s.steps(10, 2_000, &[1]);
        assert!(w <= 4_000, "window {w}");
        assert_eq!(s.estimate(0), 0, "the quiet handler dropped out");
        assert_eq!(s.estimate(1), 2_000);
    }

    #[test]
    fn iterations_that_dispatch_no_polled_handler_keep_the_window() {
        let mut s = Script::new(P, 1);
        let open = s.steps(3, 8_000, &[0]);
        assert_eq!(s.steps(3, 10_000, &[]), open);
        assert_eq!(
            s.estimate(0),
            0,
            "30 us of quiet blocks on top of 8 us pass max_ns"
        );
    }

    /// The knob: a lighter newest sample (higher weight) takes more blocks to follow a change.
    #[test]
    fn a_higher_weight_adapts_more_slowly() {
        let steps_to_follow = |weight| {
            let mut s = Script::new(PollParams { weight, ..P }, 1);
            s.steps(30, 4_000, &[0]);
            (1..1_000)
                .find(|_| {
                    s.step(20_000, &[0]);
                    s.estimate(0) >= 16_000
                })
                .expect("the estimate follows")
        };
        let (w1, w3, w5) = (steps_to_follow(1), steps_to_follow(3), steps_to_follow(5));
        assert!(w1 < w3 && w3 < w5, "{w1} {w3} {w5}");
        assert_eq!(steps_to_follow(0), w3, "0 means the default, 3");
    }

    #[test]
    fn out_of_range_params_are_an_error() {
        for bad in [
            PollParams {
                max_ns: u64::MAX,
                ..P
            },
            PollParams { weight: 63, ..P },
            PollParams {
                min_hit_percent: 101,
                ..P
            },
        ] {
            assert_eq!(
                bad.validate().unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
        assert!(PollParams { weight: 62, ..P }.validate().is_ok());
        assert!(PollParams {
            min_hit_percent: 100,
            ..P
        }
        .validate()
        .is_ok());
    }
}
