//! [`Remote`]: the `Send + Sync` handle other threads use to reach a context. Spawning tasks through
//! it (`spawn`, `spawn_local_with`) is the executor's, in `task/`.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::bh::BhPayload;
use super::bh_list::{BhNode, ONESHOT, SCHEDULED};
use super::SharedState;
use crate::thread_id::thread_token;
use crate::Stats;

/// A cheap, cloneable handle to a context that any thread may use: notify it, schedule one-shot work
/// in it, read its statistics.
///
/// A `Remote` keeps only the context's shared part alive (its eventfd and bottom-half list), never the
/// loop itself, so using it after the context was dropped is safe and does nothing.
///
/// ```
/// use std::sync::{atomic::{AtomicBool, Ordering}, Arc};
///
/// let ctx = aioctx::AioContext::new()?;
/// let remote = ctx.remote();
/// let ran = Arc::new(AtomicBool::new(false));
/// let flag = ran.clone();
/// std::thread::spawn(move || remote.schedule_oneshot(move || flag.store(true, Ordering::SeqCst)))
///     .join()
///     .unwrap();
/// while !ran.load(Ordering::SeqCst) {
///     ctx.poll(true); // the closure runs here, on the context's home thread
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Remote {
    shared: Arc<SharedState>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Remote {
    pub(crate) fn new(shared: Arc<SharedState>) -> Remote {
        Remote { shared }
    }

    /// The context's shared state, for the layers above the loop.
    pub(crate) fn shared(&self) -> &Arc<SharedState> {
        &self.shared
    }

    /// Wakes the context (QEMU's `aio_notify`): its current or next wait returns at once. Costs an eventfd
    /// write only if the loop is asleep or about to sleep; while it runs or busy-polls, a flag suffices.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let remote = ctx.remote();
    /// std::thread::spawn(move || remote.notify()).join().unwrap();
    /// // The wake-up ends this wait at once; it is not progress, so poll returns false.
    /// assert!(!ctx.poll(true));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn notify(&self) {
        self.shared.notify();
    }

    /// Runs `f` once on the context's home thread, at its next iteration (QEMU's
    /// `aio_bh_schedule_oneshot`). If the context is gone, `f` is dropped without running.
    ///
    /// ```
    /// use std::sync::{atomic::{AtomicBool, Ordering}, Arc};
    /// let ctx = aioctx::AioContext::new()?;
    /// let remote = ctx.remote();
    /// let ran = Arc::new(AtomicBool::new(false));
    /// drop(ctx);
    /// remote.schedule_oneshot({ let ran = ran.clone(); move || ran.store(true, Ordering::SeqCst) });
    /// assert!(!ran.load(Ordering::SeqCst));
    /// assert_eq!(Arc::strong_count(&ran), 1); // the closure was dropped, not kept
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn schedule_oneshot(&self, f: impl FnOnce() + Send + 'static) {
        if self.is_closed() {
            return;
        }
        let node = BhNode::new(BhPayload::Remote(Mutex::new(Some(Box::new(f)))), ONESHOT);
        if self.shared.bhs.enqueue(&node, SCHEDULED) {
            self.shared.notify();
        }
        if self.is_closed() {
            // The context closed while we pushed: nobody will run the closure, and whoever waits for it
            // (`call`) must learn that now, not when the last Remote goes. With the home thread gone,
            // any thread may empty the list; the swap hands each node to exactly one taker.
            drop(self.shared.bhs.take_all());
        }
    }

    /// Runs `f` in the context and waits for its result (QEMU's `aio_wait_bh_oneshot`), from a thread that
    /// does not run this context. Called on the context's own home thread, it runs `f` at once instead of
    /// waiting for itself. If `f` panics, the panic resumes here, in the caller; the context goes on.
    ///
    /// Fails with `NotConnected` if the context is gone (or goes away before running `f`).
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("call-demo")?;
    /// // SAFETY: gettid takes no arguments and cannot fail.
    /// let tid = io.remote().call(|| unsafe { libc::gettid() })?;
    /// assert_eq!(tid, io.thread_id());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::io::Result<R> {
        let gone = || {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the context was dropped before running the call",
            )
        };
        if self.is_home_thread() {
            if self.is_closed() {
                return Err(gone());
            }
            return Ok(f());
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.schedule_oneshot(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(out);
        });
        match rx.recv() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err(gone()),
        }
    }

    /// The context's statistics, readable from any thread.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let remote = ctx.remote();
    /// remote.schedule_oneshot(|| {});
    /// ctx.poll(false);
    /// let bhs_run = std::thread::spawn(move || remote.stats().bhs_run).join().unwrap();
    /// assert_eq!(bhs_run, 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Whether the context has been dropped.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let remote = ctx.remote();
    /// assert!(!remote.is_closed());
    /// drop(ctx);
    /// assert!(remote.is_closed());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Whether the calling thread is the context's home thread: the thread that runs it, where code
    /// must not block waiting for work the context itself has to do.
    ///
    /// ```
    /// let io = aioctx::IoThread::spawn("home")?;
    /// let remote = io.remote().clone();
    /// assert!(!remote.is_home_thread());
    /// assert!(io.remote().call(move || remote.is_home_thread())?);
    /// io.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_home_thread(&self) -> bool {
        thread_token() == self.shared.home
    }
}
