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
//!
//! ## Coming from tokio
//!
//! | tokio | aioctx, or the crate that has it |
//! |---|---|
//! | `#[tokio::main]`, `#[tokio::test]` | [`#[aioctx::main]`](macro@main), [`#[aioctx::test]`](macro@test) (`backend = "all"` runs a test on each backend) |
//! | current-thread `Runtime::block_on` | [`AioContext::new`]`()?.`[`block_on`](AioContext::block_on)`(fut)` |
//! | multi-thread runtime | one [`IoThread`] per core; [`Remote::spawn`] onto one, [`reschedule`] to move |
//! | `Handle::current()` | [`with_current`]`(\|ctx\| ..)`, then [`AioContext::remote`] for other threads |
//! | `tokio::spawn`, `task::spawn_local`, `LocalSet` | [`spawn`] (`Send`), [`spawn_local`]: every context runs `!Send` tasks |
//! | `task::JoinSet` | [`task::JoinSet`] |
//! | `task::spawn_blocking`, `task::yield_now` | [`spawn_blocking`], [`yield_now`] |
//! | `time::{sleep, timeout, interval, Instant}`, `time::pause` | [`time`]: the same, with nanosecond timers; [`time::pause`], [`Builder::start_paused`] |
//! | `net::{TcpListener, TcpStream, UnixListener, UnixStream}` | [`net`]: the same; streams implement `futures::io::AsyncRead`/`AsyncWrite` |
//! | `net::UdpSocket` | [`net::UdpSocket`]: the same methods through `&self` (`send_to`/`recv_from`, `connect`, `send`/`recv`, `peek_from`, the socket options); receives are RECVMSGs on the ring on io_uring |
//! | `net::UnixDatagram` | [`net::UnixDatagram`]: `bind`/`pair`/`unbound`, `send_to`/`recv_from` with paths, `connect`, `send`/`recv`, `shutdown` |
//! | `io::AsyncReadExt`, `AsyncWriteExt`, `io::copy` | [`futures::io`]'s: `AsyncReadExt`, `AsyncWriteExt`, `copy` |
//! | `TcpStream::split`, `into_split`, `io::split` | `&TcpStream` is `AsyncRead + AsyncWrite`: share the stream (an `Rc`) between a reader and a writer task |
//! | `io::unix::AsyncFd` | [`io::Async`] |
//! | `signal::unix::signal` | [`signal::signal`] |
//! | `fs::File` | [`fs::File`]: positional I/O on io_uring with owned buffers ([`fs::IoBuf`]) or [`fs::IoMemory`] |
//! | `sync::mpsc`, `sync::oneshot` | [`futures::channel::mpsc`], [`futures::channel::oneshot`] |
//! | `select!`, `join!`, `try_join!` | [`futures::select!`], [`futures::join!`], [`futures::try_join!`] |
//! | `sync::Mutex` | [`sync::Mutex`] (fair, hands the lock over in order) |
//! | `sync::{RwLock, Semaphore, Barrier}` | [`async-lock`](https://docs.rs/async-lock)'s `RwLock`, `Semaphore`, `Barrier` |
//! | `sync::Notify` | [`event-listener`](https://docs.rs/event-listener)'s `Event` |
//! | `sync::broadcast`, `sync::watch` | [`async-broadcast`](https://docs.rs/async-broadcast); for a watched value, a `futures` channel of capacity 1 or `event-listener` plus a cell |
//!
//! Channels and `select!` come from `futures` and work across contexts and threads:
//!
//! ```
//! use futures::{channel::mpsc, SinkExt, StreamExt};
//! let io = aioctx::IoThread::spawn("producer")?;
//! let (mut tx, mut rx) = mpsc::channel::<u32>(8);
//! io.remote().spawn(async move {
//!     for i in 0..3 {
//!         tx.send(i).await.unwrap();
//!     }
//! });
//! let ctx = aioctx::AioContext::new()?;
//! let got: Vec<u32> = ctx.block_on(async {
//!     let mut got = Vec::new();
//!     while let Some(i) = rx.next().await {
//!         got.push(i);
//!     }
//!     got
//! });
//! assert_eq!(got, [0, 1, 2]);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! A `select!` between a message and a deadline, and a semaphore from `async-lock` bounding how many
//! tasks work at once:
//!
//! ```
//! use std::{cell::Cell, rc::Rc, time::Duration};
//! use futures::{channel::oneshot, FutureExt};
//! let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
//! ctx.block_on(async {
//!     let (_keep, never) = oneshot::channel::<()>();
//!     let outcome = futures::select! {
//!         _ = never.fuse() => "message",
//!         _ = aioctx::time::sleep(Duration::from_secs(5)).fuse() => "deadline",
//!     };
//!     assert_eq!(outcome, "deadline");
//!
//!     let permits = Rc::new(async_lock::Semaphore::new(2));
//!     let (running, peak) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
//!     let mut set = aioctx::task::JoinSet::new();
//!     for _ in 0..6 {
//!         let (permits, running, peak) = (permits.clone(), running.clone(), peak.clone());
//!         set.spawn_local(async move {
//!             let _permit = permits.acquire().await;
//!             running.set(running.get() + 1);
//!             peak.set(peak.get().max(running.get()));
//!             aioctx::time::sleep(Duration::from_millis(1)).await;
//!             running.set(running.get() - 1);
//!         });
//!     }
//!     while set.join_next().await.is_some() {}
//!     assert_eq!(peak.get(), 2);
//! });
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! `Notify` is `event-listener`'s `Event`:
//!
//! ```
//! use std::rc::Rc;
//! let ctx = aioctx::AioContext::new()?;
//! ctx.block_on(async {
//!     let event = Rc::new(event_listener::Event::new());
//!     let waiter = aioctx::spawn_local({
//!         let event = event.clone();
//!         async move {
//!             let listener = event.listen();
//!             listener.await;
//!             "notified"
//!         }
//!     });
//!     aioctx::yield_now().await; // the waiter listens
//!     event.notify(1);
//!     assert_eq!(waiter.await.unwrap(), "notified");
//! });
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
pub mod task;
// Futures on the loop:
pub mod fs;
pub mod io;
pub mod net;
pub mod signal;
pub mod sync;
pub mod time;
// Threads:
#[cfg(feature = "glib")]
mod gsource;
mod iothread;
#[cfg(feature = "glib")]
mod main_loop;

#[cfg(all(test, loom))]
mod loom_models;

pub use context::{
    try_with_current, with_current, AioContext, Bh, Builder, EnterGuard, FdHandlers,
    FdRegistration, PollParams, Remote, RemoteBh, SqeCompletion, Stats,
};
pub use fdmon::Backend;
/// The `glib` crate aioctx builds its glib face on (feature `glib`), re-exported so that a
/// [`glib::MainContext`] or [`glib::Source`] handed to or taken from aioctx comes from the same
/// version.
///
/// ```
/// use aioctx::glib;
/// let gctx = glib::MainContext::new();
/// let ctx = aioctx::AioContext::new()?;
/// ctx.g_source().attach(Some(&gctx)); // the same glib as aioctx's
/// # Ok::<(), std::io::Error>(())
/// ```
#[cfg(feature = "glib")]
pub use glib;
/// The `io-uring` crate aioctx builds on, re-exported so that SQEs for
/// [`AioContext::add_sqe`] come from the same version.
pub use io_uring;
pub use iothread::{IoThread, IoThreadBuilder};
#[cfg(feature = "glib")]
pub use main_loop::{MainLoop, MainLoopBuilder, MainLoopHandle, Stopped};
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
