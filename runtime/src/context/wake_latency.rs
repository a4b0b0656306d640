//! Timer wake-up compensation: end a timed wait early by the kernel's measured wake-up latency and
//! spin the rest, so timers fire on time instead of one wake-up latency late.
//!
//! A blocking wait with a timeout returns some microseconds after the timeout expires: the timer
//! interrupt, the wake-up and the scheduler all take time (about 20 us on a virtual machine, a few us
//! on bare metal, whatever the timer slack). The loop measures that lateness on every wait that
//! timed out and keeps a moving average. When polling is on (the context already agreed to spend
//! CPU time for latency, as an IOThread does by default), a wait bounded by a deadline ends that
//! much earlier, capped by the polling window `max_ns`, and the loop spins non-blocking iterations
//! until the deadline passes. Timers never fire early: they still run only once expired.
//!
//! With polling off (a bare context's default, as in QEMU) nothing changes.

use std::cell::Cell;

/// Lateness beyond this is preemption or a stalled VM, not wake-up latency: it is clamped so one
/// outlier cannot make the loop spin for long.
const MAX_SAMPLE_NS: i64 = 100_000;

/// Weight of a new sample in the moving average: 1/8.
const SHIFT: u32 = 3;

/// The measured wake-up latency of timed waits on this context's thread.
#[derive(Debug, Default)]
pub(crate) struct WakeLatency {
    ns: Cell<i64>,
}

impl WakeLatency {
    /// Records a wait of `requested_ns` that ended, without any event, after `elapsed_ns`.
    pub(crate) fn observe_timed_out_wait(&self, requested_ns: i64, elapsed_ns: i64) {
        if requested_ns <= 0 || elapsed_ns < requested_ns {
            return;
        }
        let late = (elapsed_ns - requested_ns).min(MAX_SAMPLE_NS);
        let old = self.ns.get();
        self.ns.set(old + ((late - old) >> SHIFT));
    }

    /// The timeout to wait with, given the loop's `timeout` (-1 = infinite) and the polling window
    /// `max_ns` (0 = polling off): shorter by the lead, or 0 (spin) once the deadline is that close.
    pub(crate) fn shorten(&self, timeout: i64, max_ns: u64) -> i64 {
        let lead = self.ns.get().min(max_ns.min(i64::MAX as u64) as i64);
        if timeout <= 0 || lead <= 0 {
            timeout
        } else {
            (timeout - lead).max(0)
        }
    }

    #[cfg(all(test, not(loom)))]
    fn ns(&self) -> i64 {
        self.ns.get()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn converges_to_the_observed_lateness_and_ignores_waits_cut_short() {
        let lead = WakeLatency::default();
        for _ in 0..100 {
            lead.observe_timed_out_wait(50_000, 70_000);
        }
        assert!((19_000..=20_000).contains(&lead.ns()), "{}", lead.ns());
        // A wait that an event ended early, or an infinite one, says nothing about wake-up latency.
        lead.observe_timed_out_wait(50_000, 10_000);
        lead.observe_timed_out_wait(-1, 10_000_000);
        lead.observe_timed_out_wait(0, 5_000);
        assert!((19_000..=20_000).contains(&lead.ns()));
    }

    #[test]
    fn one_outlier_moves_the_lead_by_at_most_an_eighth_of_the_clamp() {
        let lead = WakeLatency::default();
        lead.observe_timed_out_wait(1_000, 1_000 + 10_000_000);
        assert_eq!(lead.ns(), MAX_SAMPLE_NS >> SHIFT);
    }

    #[test]
    fn shortens_finite_waits_only_with_polling_on_and_within_the_window() {
        let lead = WakeLatency::default();
        for _ in 0..200 {
            lead.observe_timed_out_wait(50_000, 70_000);
        }
        let l = lead.ns();
        assert_eq!(lead.shorten(50_000, 0), 50_000, "polling off: unchanged");
        assert_eq!(lead.shorten(-1, 32_768), -1, "infinite: unchanged");
        assert_eq!(lead.shorten(0, 32_768), 0);
        assert_eq!(lead.shorten(50_000, 32_768), 50_000 - l);
        assert_eq!(
            lead.shorten(l / 2, 32_768),
            0,
            "close to the deadline: spin"
        );
        assert_eq!(lead.shorten(50_000, 5_000), 45_000, "capped by the window");
        assert_eq!(lead.shorten(50_000, u64::MAX), 50_000 - l);
    }
}
