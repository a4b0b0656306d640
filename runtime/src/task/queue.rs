//! The run queues of a context's tasks: a home-thread queue and a lock-free remote queue.
//!
//! A wake on the home thread pushes to the local queue: no atomics, and no notification unless the loop is
//! busy-polling (then it must stop spinning and run the task). A wake from any other thread pushes to the
//! remote queue (`concurrent_queue`, lock-free) and notifies the context; with the notify_me protocol that
//! costs no syscall while the loop runs or polls, so a cross-thread wake of a polling IOThread is a few
//! atomic operations. The loop moves remote entries to the local queue at the start of its task step.
//!
//! The queue is generic so the loom model can drive it with plain integers.

use std::collections::VecDeque;

use concurrent_queue::{ConcurrentQueue, PushError};

use crate::thread_id::HomeCell;

/// A home-thread queue and a lock-free remote queue.
pub(crate) struct RunQueues<T> {
    local: HomeCell<VecDeque<T>>,
    remote: ConcurrentQueue<T>,
}

impl<T> RunQueues<T> {
    pub(crate) fn new(home: u64) -> Self {
        Self {
            local: HomeCell::new(home, VecDeque::new()),
            remote: ConcurrentQueue::unbounded(),
        }
    }

    /// Queues `item`. `on_home` says whether the caller runs on the home thread. Returns whether the loop
    /// must be notified (a remote push), or gives the item back if the queues are closed.
    pub(crate) fn push(&self, item: T, on_home: bool) -> Result<bool, T> {
        if on_home {
            self.local.borrow_mut().push_back(item);
            Ok(false)
        } else {
            match self.remote.push(item) {
                Ok(()) => Ok(true),
                Err(PushError::Closed(item) | PushError::Full(item)) => Err(item),
            }
        }
    }

    /// Moves remote entries to the local queue and returns how many are ready: the slice this task step
    /// runs. Home thread only.
    pub(crate) fn begin_step(&self) -> usize {
        let mut local = self.local.borrow_mut();
        while let Ok(item) = self.remote.pop() {
            local.push_back(item);
        }
        local.len()
    }

    /// The next local entry. Home thread only.
    pub(crate) fn pop(&self) -> Option<T> {
        self.local.borrow_mut().pop_front()
    }

    /// Whether anything is queued. Home thread only.
    pub(crate) fn has_ready(&self) -> bool {
        !self.local.borrow_mut().is_empty() || !self.remote.is_empty()
    }

    /// Takes one entry from either queue (teardown). Home thread only.
    pub(crate) fn pop_any(&self) -> Option<T> {
        self.pop().or_else(|| self.remote.pop().ok())
    }

    /// Refuses further remote pushes (teardown).
    pub(crate) fn close(&self) {
        self.remote.close();
    }
}
