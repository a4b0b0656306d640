//! [`TaskStep`]: the one hook through which the loop runs the executor layered on it.
//!
//! QEMU schedules coroutines through a bottom half of the context (`co_schedule_bh`); the loop knows
//! nothing of coroutines. aioctx's executor (`task/`) sits above the loop the same way: the loop calls
//! it once per iteration, after timers, and asks it whether it has work (so the loop does not sleep),
//! and at teardown to drop its tasks. The loop knows nothing of futures.

use std::any::Any;
use std::sync::Arc;

use super::notify::Wakeup;

/// What the loop needs from the executor. Implemented by `task::Executor`.
pub(crate) trait TaskStep: Send + Sync + 'static {
    /// Runs the tasks that were ready when the step began; returns how many ran. Home thread only.
    fn run_ready(&self) -> usize;
    /// Whether a task is ready to run (then the loop must not sleep). Home thread only.
    fn has_ready(&self) -> bool;
    /// Teardown, first step: drops every task's future on the home thread.
    fn cancel_all(&self);
    /// Teardown, after user SQEs are done: refuses new tasks and drops any that slipped in.
    fn close(&self);
    /// The executor itself, shared, for the layer that implements it.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// What an executor is built from: the context it belongs to.
pub(crate) struct TaskStepSeed {
    pub(crate) context_id: u64,
    pub(crate) home_thread: u64,
    /// Wakes the loop when a task becomes ready.
    pub(crate) wakeup: Arc<Wakeup>,
}
