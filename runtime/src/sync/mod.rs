//! Synchronisation between tasks, across contexts and IOThreads.
//!
//! - [`Mutex`]: QEMU's CoMutex semantics: an async mutex with fair (FIFO) handoff, usable from tasks on
//!   any context.
//! - For everything else, use `futures`: [`futures::channel::oneshot`] to wait for one result from another
//!   context or thread, [`futures::channel::mpsc`] for streams of work, `futures::lock` where fairness does
//!   not matter. aioctx adds no channels of its own: those are well-kept, and a task awaiting one is woken
//!   through aioctx's cross-thread wake path (no syscall while the target loop is polling). A separate wait
//!   queue (QEMU's CoQueue) is not provided: a `Mutex` plus a channel, or `futures::channel::mpsc`,
//!   covers its uses.

mod mutex;

pub use mutex::{Lock, Mutex, MutexGuard};
