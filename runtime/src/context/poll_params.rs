//! [`PollParams`]: the adaptive polling parameters, and the per-handler window rule (QEMU's
//! `adjust_polling_time`). The machinery that spins is `polling.rs`.

use std::io;

/// The window a handler starts polling with once it first qualifies (QEMU: 4 us).
const INITIAL_WINDOW_NS: i64 = 4_000;

/// How long the loop may busy-poll before it sleeps, and how each handler's window adapts.
///
/// Every handler with a poll function has its own window. After each dispatch of that handler the loop
/// compares how long it blocked (`block_ns`) with the window: a wait that the window would have covered
/// leaves it as is; a wait longer than `max_ns` shrinks it (divided by `shrink`, or reset to 0 when `shrink`
/// is 0); a wait between the two grows it (multiplied by `grow`, 2 when `grow` is 0, starting at 4 us),
/// capped at `max_ns`. `max_ns == 0` turns polling off entirely.
///
/// ```
/// let ctx = aioctx::AioContext::new()?;
/// // What an IOThread uses: poll up to 32 us, double on growth, reset on shrink.
/// ctx.set_poll_params(aioctx::PollParams { max_ns: 32_768, grow: 0, shrink: 0 })?;
/// assert_eq!(ctx.poll_params().max_ns, 32_768);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollParams {
    /// The largest window in ns; 0 disables polling (the default for a bare context, as in QEMU).
    pub max_ns: u64,
    /// Growth factor; 0 means 2.
    pub grow: u64,
    /// Shrink divisor; 0 means reset the window to 0.
    pub shrink: u64,
}

impl PollParams {
    /// QEMU's IOThread defaults: `max_ns` 32768, grow x2, shrink to 0.
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("defaults")?;
    /// assert_eq!(io.poll_params()?, aioctx::PollParams::IOTHREAD);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub const IOTHREAD: PollParams = PollParams {
        max_ns: 32_768,
        grow: 0,
        shrink: 0,
    };

    pub(crate) fn validate(self) -> io::Result<Self> {
        if self.max_ns > i64::MAX as u64 || self.grow > i64::MAX as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("poll parameters out of range (max_ns and grow must fit in i64): {self:?}"),
            ));
        }
        Ok(self)
    }

    pub(crate) fn max_ns_i64(self) -> i64 {
        self.max_ns as i64
    }

    /// The new window for a handler that blocked `block_ns` before being dispatched.
    pub(crate) fn adjust_window(self, window: i64, block_ns: i64) -> i64 {
        let max = self.max_ns_i64();
        if block_ns <= window {
            window
        } else if block_ns > max {
            match self.shrink {
                0 => 0,
                shrink => window / shrink.min(i64::MAX as u64) as i64,
            }
        } else if window < max && block_ns < max {
            let grow = if self.grow == 0 { 2 } else { self.grow as i64 };
            let grown = if window == 0 {
                INITIAL_WINDOW_NS
            } else {
                window.saturating_mul(grow)
            };
            grown.min(max)
        } else {
            window
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const P: PollParams = PollParams::IOTHREAD;

    #[test]
    fn window_grows_from_4us_doubling_up_to_max() {
        let mut w = 0;
        let mut seen = vec![];
        for _ in 0..6 {
            w = P.adjust_window(w, 32_500);
            seen.push(w);
        }
        assert_eq!(seen, [4_000, 8_000, 16_000, 32_000, 32_768, 32_768]);
    }

    #[test]
    fn covered_wait_keeps_window() {
        assert_eq!(P.adjust_window(16_000, 10_000), 16_000);
        assert_eq!(P.adjust_window(16_000, 16_000), 16_000);
    }

    #[test]
    fn long_wait_resets_or_divides() {
        assert_eq!(P.adjust_window(16_000, 1_000_000), 0);
        let halving = PollParams { shrink: 2, ..P };
        assert_eq!(halving.adjust_window(16_000, 1_000_000), 8_000);
    }

    #[test]
    fn custom_grow_factor() {
        let p = PollParams { grow: 4, ..P };
        assert_eq!(p.adjust_window(4_000, 20_000), 16_000);
    }

    #[test]
    fn out_of_range_params_are_an_error() {
        let bad = PollParams {
            max_ns: u64::MAX,
            ..P
        };
        assert_eq!(
            bad.validate().unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
