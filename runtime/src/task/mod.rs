//! The executor: tasks that the context's loop polls as one step of every iteration. Its public items
//! are also at the crate root (`aioctx::spawn`, `aioctx::JoinHandle`, ...); [`JoinSet`] is here.
//!
//! This layer sits above the loop. Every context is built with an `Executor`,
//! which the loop knows only as its `TaskStep` hook. A task is an [`async_task`] cell whose schedule
//! function pushes its `Runnable` onto the executor's run queues (`queue.rs`). The task step runs
//! the tasks that were ready when it began (the slice rule, as for BHs), so a task that keeps waking
//! itself cannot starve fds and timers, and a chain of tasks waking each other grows no stack: every
//! wake is a queue push. The step runs after fd handlers and timers, so a task woken by a readiness
//! event or a timer runs in the same iteration.
//!
//! Every task future is wrapped so that a panic is caught (its [`JoinHandle`] yields
//! [`JoinError::Panic`]; the loop and other tasks go on), it can be aborted, and the context can find it
//! at teardown: dropping a context wakes every live task and drops each one's future on the home thread.
//!
//! Also here: `block_on`, `spawn_blocking` (the glue between the blocking pool and a task), and the
//! executor's methods on the loop's types (`context_api.rs`).

pub(crate) mod block_on;
pub(crate) mod blocking;
mod context_api;
mod executor;
mod join;
mod join_set;
pub(crate) mod queue;
mod spawn;
mod yield_now;

pub use blocking::spawn_blocking;
pub use join::{JoinError, JoinHandle, PanicPayload};
pub use join_set::JoinSet;
pub use spawn::{reschedule, spawn, spawn_local};
pub use yield_now::{yield_now, YieldNow};

#[cfg(feature = "glib")]
pub(crate) use spawn::hide_running_task;
pub(crate) use spawn::Task;
