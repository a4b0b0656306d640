//! [`Counter`]: a statistics counter with one writer (a context's home thread) and any number of
//! readers.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter with a single writer, the home thread. Bumping it is a plain load and store (no locked
/// instruction); readers on other threads see some recent value.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Home thread only: the load and store are not one atomic step.
    pub(crate) fn add(&self, n: u64) {
        // Relaxed: the single writer needs no ordering with itself, and statistics publish nothing;
        // a reader may see a slightly stale count, which a snapshot allows.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn bump(&self) {
        self.add(1);
    }

    pub(crate) fn get(&self) -> u64 {
        // Relaxed: a statistic, not a synchronisation point (see `add`).
        self.0.load(Ordering::Relaxed)
    }
}
