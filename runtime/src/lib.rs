//! # aioctx: QEMU's AioContext as a Rust runtime
//!
//! aioctx is an event loop for virtual machine device models and block layers, built the way QEMU builds
//! its `AioContext`: one loop per thread, woken by fd readiness, event notifiers (eventfd), nanosecond
//! timers and bottom halves that any thread can schedule, with adaptive busy-polling before it sleeps so
//! that a cross-thread wakeup or a guest kick costs no syscall while the loop is busy.
//!
//! This layer is the callback loop; the async executor is built on top of it.
//!
//! ```
//! use std::{cell::Cell, rc::Rc, time::Duration};
//! use aioctx::{AioContext, Backend, EventNotifier, time::Clock};
//!
//! let ctx = AioContext::builder().backend(Backend::Epoll).build()?;
//!
//! // A bottom half another thread can schedule.
//! let runs = Rc::new(Cell::new(0));
//! let bh = ctx.bh({ let r = runs.clone(); move || r.set(r.get() + 1) });
//! let remote_bh = bh.remote();
//! std::thread::spawn(move || remote_bh.schedule()).join().unwrap();
//!
//! // An event notifier (say, a guest's ioeventfd).
//! let kick = EventNotifier::new()?;
//! let kicks = Rc::new(Cell::new(0));
//! let _reg = ctx.set_event_notifier(&kick, {
//!     let (kick, kicks) = (kick.clone(), kicks.clone());
//!     move || if kick.test_and_clear().unwrap() { kicks.set(kicks.get() + 1) }
//! }, None)?;
//! kick.set()?;
//!
//! // A 100 us timer.
//! let fired = Rc::new(Cell::new(false));
//! let timer = ctx.timer(Clock::Realtime, { let f = fired.clone(); move || f.set(true) });
//! timer.arm_after(Duration::from_micros(100));
//!
//! while !(runs.get() == 1 && kicks.get() == 1 && fired.get()) {
//!     ctx.poll(true);
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

#![warn(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

// The layers, bottom up (ARCHITECTURE.md draws the graph; a module only uses modules below it).
// Leaves:
mod atomics;
mod counter;
mod fdmon;
mod notifier;
mod pool;
mod sys;
mod thread_id;
mod timers;
// The loop:
mod context;
// The executor:
mod task;
// Futures on the loop:
pub mod fs;
pub mod io;
pub mod net;
pub mod sync;
pub mod time;
// Threads:
mod iothread;

#[cfg(all(test, loom))]
mod loom_models;

pub use context::{
    AioContext, Bh, Builder, EnterGuard, FdHandlers, FdRegistration, PollParams, Remote, RemoteBh,
    SqeCompletion, Stats,
};
pub use fdmon::Backend;
/// The `io-uring` crate aioctx builds on, re-exported so that SQEs for
/// [`AioContext::add_sqe`] come from the same version.
pub use io_uring;
pub use iothread::{IoThread, IoThreadBuilder};
pub use notifier::EventNotifier;
pub use task::{
    reschedule, spawn, spawn_blocking, spawn_local, yield_now, JoinError, JoinHandle, PanicPayload,
    YieldNow,
};

/// Runs `async fn main` on an [`AioContext`] created on the main thread, with
/// [`AioContext::block_on`]. Options: `backend = "auto" | "io_uring" | "epoll" | "poll"`,
/// `poll_max_ns = <integer>`, `start_paused = true | false`.
///
/// ```no_run
/// #[aioctx::main(backend = "epoll")]
/// async fn main() -> Result<(), aioctx::JoinError> {
///     let answer = aioctx::spawn_local(async { 42 }).await?;
///     aioctx::time::sleep(std::time::Duration::from_millis(1)).await;
///     assert_eq!(answer, 42);
///     Ok(())
/// }
/// ```
pub use aioctx_macros::main;
/// Turns an `async fn` into a `#[test]` that runs it on a fresh [`AioContext`]. Options as for
/// [`main`](macro@main), plus `backend = "all"`: one test per backend, `name::io_uring`, `name::epoll`
/// and `name::poll`.
///
/// ```ignore
/// #[aioctx::test(start_paused = true)]
/// async fn an_hour_passes_instantly() {
///     let start = aioctx::time::Instant::now();
///     aioctx::time::sleep(std::time::Duration::from_secs(3600)).await;
///     assert_eq!(start.elapsed(), std::time::Duration::from_secs(3600));
/// }
/// ```
pub use aioctx_macros::test;

/// The README's code runs as a doctest, so the tour cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
