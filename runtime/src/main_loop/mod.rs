//! [`MainLoop`]: QEMU's main loop (util/main-loop.c), glib's `GMainContext` and two contexts in one
//! wait with a nanosecond timeout.
//!
//! The main loop owns a glib `GMainContext` (the default one unless the builder names another), the
//! main [`AioContext`] (QEMU's `qemu_aio_context`, current on the thread) and the iohandler context
//! (QEMU's `iohandler_ctx`, for handlers that must not run during a nested wait). One
//! [`wait`](MainLoop::wait) is QEMU's `main_loop_wait` (`wait.rs`): glib prepares and lists its fds,
//! both contexts prepare (`context/external.rs`), one `ppoll` sleeps over all of it with the nearest
//! deadline in ns, then glib checks and dispatches, then both contexts dispatch.
//!
//! SIGINT and SIGTERM are handled on the iohandler context, as QEMU's signalfd handler is: they make
//! [`run`](MainLoop::run) return.

mod wait;

use std::cell::RefCell;
use std::convert::Infallible;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use glib::ffi;
use glib::translate::ToGlibPtr;

use crate::context::current;
use crate::signal::signal;
use crate::{AioContext, Backend, Remote};

/// Configures a [`MainLoop`].
///
/// ```
/// use aioctx::{glib, Backend, MainLoop};
/// let ml = MainLoop::builder()
///     .context(glib::MainContext::new())
///     .backend(Backend::Epoll)
///     .handle_signals(false)
///     .build()?;
/// assert_eq!(ml.aio_context().backend(), Backend::Epoll);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "a MainLoop builder does nothing until .build() is called"]
pub struct MainLoopBuilder {
    context: Option<glib::MainContext>,
    backend: Backend,
    handle_signals: bool,
}

impl MainLoopBuilder {
    /// The glib context to own (default: glib's global default context, as QEMU's main loop uses).
    /// It becomes the thread's default context while the main loop lives, where gio's async
    /// operations and `MainContext::ref_thread_default()` find it. glib's `timeout_add*` and
    /// `idle_add*` functions attach to the global default context whatever the thread's default is:
    /// on another context, attach sources with `source.attach(Some(ml.glib_context()))`.
    ///
    /// ```
    /// use aioctx::{glib, MainLoop};
    /// let gctx = glib::MainContext::new();
    /// let ml = MainLoop::builder().context(gctx.clone()).handle_signals(false).build()?;
    /// assert_eq!(ml.glib_context(), &gctx);
    /// assert_eq!(glib::MainContext::ref_thread_default(), gctx);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn context(mut self, context: glib::MainContext) -> Self {
        self.context = Some(context);
        self
    }

    /// The fd monitor of both contexts (default: `Backend::Auto`).
    ///
    /// ```
    /// use aioctx::{glib, Backend, MainLoop};
    /// let ml = MainLoop::builder()
    ///     .context(glib::MainContext::new())
    ///     .backend(Backend::Poll)
    ///     .handle_signals(false)
    ///     .build()?;
    /// assert_eq!(ml.iohandler_context().backend(), Backend::Poll);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Whether SIGINT and SIGTERM make [`run`](MainLoop::run) return (default: true). Handling them
    /// installs aioctx's handler for both signals for the rest of the process (see
    /// [`signal`](crate::signal)).
    ///
    /// ```
    /// use aioctx::{glib, MainLoop};
    /// let ml = MainLoop::builder()
    ///     .context(glib::MainContext::new())
    ///     .handle_signals(false) // leave SIGINT and SIGTERM alone
    ///     .build()?;
    /// assert!(!ml.wait(true));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.handle_signals = handle;
        self
    }

    /// Creates the main loop on the calling thread, which becomes the home thread of both contexts
    /// and the owner of the glib context.
    ///
    /// Errors: another thread owns the glib context (`ResourceBusy`), or a context cannot be
    /// created (see [`Builder::build`](crate::Builder::build)).
    ///
    /// ```
    /// use aioctx::{glib, MainLoop};
    /// let gctx = glib::MainContext::new();
    /// let owner = std::thread::spawn({
    ///     let gctx = gctx.clone();
    ///     move || {
    ///         let _ml = MainLoop::builder().context(gctx.clone()).handle_signals(false).build()?;
    ///         // While this main loop lives, no other thread can own its glib context.
    ///         let other = std::thread::spawn(move || {
    ///             MainLoop::builder().context(gctx).handle_signals(false).build().map(drop)
    ///         });
    ///         Ok::<_, std::io::Error>(other.join().unwrap().unwrap_err().kind())
    ///     }
    /// });
    /// assert_eq!(owner.join().unwrap()?, std::io::ErrorKind::ResourceBusy);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn build(self) -> io::Result<MainLoop> {
        let gcontext = self.context.unwrap_or_else(glib::MainContext::default);
        let owner = GlibOwner::acquire(gcontext.clone())?;
        let aio = crate::Builder::new().backend(self.backend).build()?;
        let iohandler = crate::Builder::new().backend(self.backend).build()?;
        let shared = Arc::new(Shared {
            stop: AtomicI32::new(RUNNING),
            aio: aio.remote(),
        });
        if self.handle_signals {
            watch_signals(&iohandler, &shared)?;
        }
        Ok(MainLoop {
            _current: current::enter(aio.home()),
            aio,
            iohandler,
            gcontext,
            _owner: owner,
            shared,
            buffers: RefCell::new(wait::Buffers::default()),
        })
    }
}

/// The stop word: running, quit, or the number of the signal that stopped the loop.
const RUNNING: i32 = 0;
const QUIT: i32 = -1;

/// What [`MainLoopHandle`]s share with their main loop.
#[derive(Debug)]
struct Shared {
    stop: AtomicI32,
    aio: Remote,
}

impl Shared {
    /// Asks `run` to return with `why`, unless a reason is already pending.
    fn request_stop(&self, why: i32) {
        // AcqRel: the caller's work before the request happens before `run` returns (its swap).
        let _ = self
            .stop
            .compare_exchange(RUNNING, why, Ordering::AcqRel, Ordering::Acquire);
        self.aio.notify();
    }
}

/// Why [`MainLoop::run`] returned, or [`MainLoop::run_until`] gave up on its future.
///
/// ```
/// use aioctx::{glib, MainLoop, Stopped};
/// let ml = MainLoop::builder().context(glib::MainContext::new()).handle_signals(false).build()?;
/// ml.handle().quit();
/// assert_eq!(ml.run(), Stopped::Quit);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// [`MainLoopHandle::quit`] was called.
    Quit,
    /// This signal (SIGINT or SIGTERM) arrived.
    Signal(i32),
}

/// QEMU's main loop: glib's `GMainContext`, the main [`AioContext`] and the iohandler context,
/// combined in one wait with a nanosecond timeout (feature `glib`).
///
/// - [`aio_context`](Self::aio_context) is QEMU's `qemu_aio_context`: the thread's current context
///   (so [`spawn_local`](crate::spawn_local), the [`time`](crate::time) futures and
///   [`with_current`](crate::with_current) find it). A nested [`AioContext::poll`] of it (QEMU's
///   `AIO_WAIT_WHILE`, e.g. a [`block_on`](AioContext::block_on) inside a callback) runs only it:
///   never glib's sources nor the iohandler context's handlers.
/// - [`iohandler_context`](Self::iohandler_context) is QEMU's `iohandler_ctx`: for handlers (a
///   monitor's socket, say) that must not run inside such a nested wait.
/// - glib's sources (`glib::timeout_add_local` and `idle_add_local` on the global default context,
///   sources attached to the main loop's context, `MainContext::spawn_local`, gio's async
///   operations) run in the same loop, on the same thread.
///
/// Timers of both contexts keep their nanosecond precision: the wait's timeout is the nearest of
/// glib's (in ms) and the contexts' deadlines (in ns). The main loop never busy-polls (QEMU's does
/// not either). SIGINT and SIGTERM make [`run`](Self::run) return, unless the builder said otherwise.
///
/// ```
/// use std::{cell::Cell, rc::Rc, time::Duration};
/// use aioctx::{glib, MainLoop};
///
/// // glib's global default context, as QEMU's main loop: glib::timeout_add_local attaches there.
/// let ml = MainLoop::builder().handle_signals(false).build()?;
/// let order = Rc::new(std::cell::RefCell::new(Vec::new()));
/// glib::timeout_add_local_once(Duration::from_millis(20), {
///     let order = order.clone();
///     move || order.borrow_mut().push("glib 20 ms")
/// });
/// let handle = ml.handle();
/// ml.aio_context().spawn_local({
///     let order = order.clone();
///     async move {
///         aioctx::time::sleep(Duration::from_micros(300)).await;
///         order.borrow_mut().push("aioctx 300 us");
///         aioctx::time::sleep(Duration::from_millis(30)).await;
///         handle.quit();
///     }
/// });
/// ml.run();
/// assert_eq!(*order.borrow(), ["aioctx 300 us", "glib 20 ms"]);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct MainLoop {
    // Fields drop in this order: the aio context stops being current, both contexts are torn down
    // (destroying any GSource of theirs), then glib is released.
    _current: current::EnterGuard,
    aio: AioContext,
    iohandler: AioContext,
    gcontext: glib::MainContext,
    _owner: GlibOwner,
    shared: Arc<Shared>,
    buffers: RefCell<wait::Buffers>,
}

impl fmt::Debug for MainLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MainLoop")
            .field("aio_context", &self.aio)
            .field("iohandler_context", &self.iohandler)
            .finish_non_exhaustive()
    }
}

impl MainLoop {
    /// A main loop on glib's global default context, with `Backend::Auto` and SIGINT/SIGTERM
    /// handled. Fails with `ResourceBusy` if another thread owns glib's default context (another
    /// main loop, or a `glib::MainLoop` running elsewhere).
    ///
    /// ```
    /// let ml = aioctx::MainLoop::new()?;
    /// assert_eq!(ml.glib_context(), &aioctx::glib::MainContext::default());
    /// ml.handle().quit(); // else run() goes on until SIGINT or SIGTERM
    /// assert_eq!(ml.run(), aioctx::Stopped::Quit);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> io::Result<MainLoop> {
        Self::builder().build()
    }

    /// A builder with the defaults of [`new`](Self::new).
    ///
    /// ```
    /// let ml = aioctx::MainLoop::builder()
    ///     .context(aioctx::glib::MainContext::new())
    ///     .handle_signals(false)
    ///     .build()?;
    /// assert!(!ml.wait(true));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn builder() -> MainLoopBuilder {
        MainLoopBuilder {
            context: None,
            backend: Backend::Auto,
            handle_signals: true,
        }
    }

    /// The main context (QEMU's `qemu_aio_context`), current on this thread while the main loop
    /// lives.
    ///
    /// ```
    /// let ml = aioctx::MainLoop::builder()
    ///     .context(aioctx::glib::MainContext::new())
    ///     .handle_signals(false)
    ///     .build()?;
    /// let h = aioctx::spawn_local(async { 6 * 7 }); // lands on the aio context
    /// assert_eq!(ml.block_on(h).unwrap(), 42);
    /// assert!(aioctx::with_current(|ctx| ctx.remote().is_home_thread()));
    /// # let _ = ml.aio_context();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn aio_context(&self) -> &AioContext {
        &self.aio
    }

    /// The iohandler context (QEMU's `iohandler_ctx`): dispatched by [`wait`](Self::wait), never by
    /// a nested poll of the aio context.
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc};
    /// let ml = aioctx::MainLoop::builder()
    ///     .context(aioctx::glib::MainContext::new())
    ///     .handle_signals(false)
    ///     .build()?;
    /// let ran = Rc::new(Cell::new(false));
    /// ml.iohandler_context().bh_oneshot({ let r = ran.clone(); move || r.set(true) });
    /// ml.aio_context().poll(false); // a nested wait: the iohandler context does not run
    /// assert!(!ran.get());
    /// ml.wait(true);
    /// assert!(ran.get());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn iohandler_context(&self) -> &AioContext {
        &self.iohandler
    }

    /// The glib context this main loop owns.
    ///
    /// ```
    /// let gctx = aioctx::glib::MainContext::new();
    /// let ml = aioctx::MainLoop::builder().context(gctx.clone()).handle_signals(false).build()?;
    /// assert!(ml.glib_context().is_owner()); // owned by this thread
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn glib_context(&self) -> &glib::MainContext {
        &self.gcontext
    }

    /// A `Send + Sync` handle to wake this main loop or make [`run`](Self::run) return from any
    /// thread.
    ///
    /// ```
    /// let ml = aioctx::MainLoop::builder()
    ///     .context(aioctx::glib::MainContext::new())
    ///     .handle_signals(false)
    ///     .build()?;
    /// let handle = ml.handle();
    /// std::thread::spawn(move || handle.quit());
    /// assert_eq!(ml.run(), aioctx::Stopped::Quit);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn handle(&self) -> MainLoopHandle {
        MainLoopHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs [`wait`](Self::wait) until [`MainLoopHandle::quit`] is called or (if handled) SIGINT or
    /// SIGTERM arrives, and says which. A stop requested before the call returns at once; each stop
    /// ends one `run`.
    ///
    /// ```
    /// use aioctx::{glib, MainLoop, Stopped};
    /// let ml = MainLoop::builder().context(glib::MainContext::new()).build()?;
    /// // SAFETY: raise signals this thread; the main loop handles SIGTERM.
    /// unsafe { libc::raise(libc::SIGTERM) };
    /// assert_eq!(ml.run(), Stopped::Signal(libc::SIGTERM));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn run(&self) -> Stopped {
        loop {
            if let Some(stopped) = self.take_stop() {
                return stopped;
            }
            self.wait(false);
        }
    }

    /// Takes the pending stop request, if any: it ends one `run` (or `run_until`).
    fn take_stop(&self) -> Option<Stopped> {
        // Acquire pairs with `request_stop`'s AcqRel exchange.
        match self.shared.stop.swap(RUNNING, Ordering::AcqRel) {
            RUNNING => None,
            QUIT => Some(Stopped::Quit),
            signum => Some(Stopped::Signal(signum)),
        }
    }

    /// Runs `future` on this thread as [`block_on`](Self::block_on) does, until it completes or the
    /// loop is asked to stop as [`run`](Self::run) is ([`MainLoopHandle::quit`], or SIGINT or SIGTERM
    /// when the loop handles signals), whichever comes first; on a stop the future is dropped
    /// unfinished and the error says why. A future that is ready when the stop arrives still gives its
    /// output. This is the way to serve until Ctrl-C: `block_on` does not look at stop requests, so
    /// with signals handled by the loop it would keep running through SIGINT.
    ///
    /// ```
    /// use aioctx::{glib, MainLoop, Stopped};
    /// let ml = MainLoop::builder().context(glib::MainContext::new()).handle_signals(false).build()?;
    /// assert_eq!(ml.run_until(async { 42 }), Ok(42));
    /// let served = ml.run_until(async {
    ///     ml.handle().quit(); // e.g. a QMP `quit` handled by a task of the loop
    ///     std::future::pending::<()>().await // a server that never finishes by itself
    /// });
    /// assert_eq!(served, Err(Stopped::Quit));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn run_until<F: Future>(&self, future: F) -> Result<F::Output, Stopped> {
        self.drive(future, || self.take_stop())
    }

    /// Runs `future` to completion on this thread, running the main loop (glib, both contexts)
    /// while it waits. The future need not be `Send` or `'static`. Stop requests
    /// ([`MainLoopHandle::quit`], and SIGINT or SIGTERM when the loop handles signals) do not end
    /// it: they stay pending for the next [`run`](Self::run); [`run_until`](Self::run_until) is the
    /// same with stops honoured.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::{glib, MainLoop};
    /// let ml = MainLoop::builder().context(glib::MainContext::new()).handle_signals(false).build()?;
    /// let out = ml.block_on(async {
    ///     glib::timeout_future(Duration::from_millis(1)).await; // a glib future
    ///     aioctx::time::sleep(Duration::from_micros(100)).await; // and an aioctx one
    ///     "both"
    /// });
    /// assert_eq!(out, "both");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let Ok(out) = self.drive(future, || None::<Infallible>);
        out
    }

    /// Polls `future` whenever it was woken and waits in the main loop between polls, until it is
    /// ready or `stop` (asked after each poll that left it pending) says to give up.
    fn drive<F: Future, E>(
        &self,
        future: F,
        mut stop: impl FnMut() -> Option<E>,
    ) -> Result<F::Output, E> {
        let _hidden = crate::task::hide_running_task();
        let flag =
            crate::task::block_on::BlockOnWaker::new(Arc::clone(self.aio.home().shared().wakeup()));
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if flag.take() {
                if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                    return Ok(out);
                }
            }
            if let Some(why) = stop() {
                return Err(why);
            }
            self.wait(false);
        }
    }

    /// Wakes the main loop from its current or next wait (QEMU's `qemu_notify_event`); see
    /// [`MainLoopHandle::notify`] for other threads.
    ///
    /// ```
    /// let ml = aioctx::MainLoop::builder()
    ///     .context(aioctx::glib::MainContext::new())
    ///     .handle_signals(false)
    ///     .build()?;
    /// ml.notify();
    /// assert!(!ml.wait(false)); // returns at once; a wake-up alone is not progress
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn notify(&self) {
        self.aio.notify();
    }
}

/// A `Send + Sync` handle to a [`MainLoop`] (see [`MainLoop::handle`]). Once the main loop is
/// gone its calls do nothing.
///
/// ```
/// let ml = aioctx::MainLoop::builder()
///     .context(aioctx::glib::MainContext::new())
///     .handle_signals(false)
///     .build()?;
/// let handle = ml.handle();
/// drop(ml);
/// handle.notify(); // a no-op now
/// handle.quit();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct MainLoopHandle {
    shared: Arc<Shared>,
}

impl MainLoopHandle {
    /// Wakes the main loop from its current or next wait, from any thread (QEMU's
    /// `qemu_notify_event`): it costs an eventfd write only if the loop sleeps.
    ///
    /// ```
    /// let ml = aioctx::MainLoop::builder()
    ///     .context(aioctx::glib::MainContext::new())
    ///     .handle_signals(false)
    ///     .build()?;
    /// let handle = ml.handle();
    /// std::thread::spawn(move || handle.notify()).join().unwrap();
    /// ml.wait(false); // returns: the notification woke it
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn notify(&self) {
        self.shared.aio.notify();
    }

    /// Makes the main loop's [`run`](MainLoop::run) return [`Stopped::Quit`] (unless a signal
    /// stopped it first), from any thread.
    ///
    /// ```
    /// let ml = aioctx::MainLoop::builder()
    ///     .context(aioctx::glib::MainContext::new())
    ///     .handle_signals(false)
    ///     .build()?;
    /// ml.handle().quit();
    /// assert_eq!(ml.run(), aioctx::Stopped::Quit);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn quit(&self) {
        self.shared.request_stop(QUIT);
    }
}

/// Listens for SIGINT and SIGTERM on the iohandler context (QEMU's signalfd handler is an iohandler
/// too): each asks `run` to return.
fn watch_signals(iohandler: &AioContext, shared: &Arc<Shared>) -> io::Result<()> {
    let (mut int, mut term) = {
        let _current = iohandler.enter();
        (signal(libc::SIGINT)?, signal(libc::SIGTERM)?)
    };
    let shared = Arc::clone(shared);
    // The task ends with the iohandler context.
    drop(iohandler.spawn_local(poll_fn(move |cx| loop {
        let mut delivered = false;
        for (listener, signum) in [(&mut int, libc::SIGINT), (&mut term, libc::SIGTERM)] {
            if listener.poll_recv(cx).is_ready() {
                shared.request_stop(signum);
                delivered = true;
            }
        }
        if !delivered {
            return Poll::<()>::Pending;
        }
    })));
    Ok(())
}

/// Ownership of the glib context for the main loop's life (`g_main_context_acquire`), and the
/// thread-default push of a context other than glib's global default.
struct GlibOwner {
    context: glib::MainContext,
}

impl GlibOwner {
    fn acquire(context: glib::MainContext) -> io::Result<GlibOwner> {
        let raw: *mut ffi::GMainContext = context.to_glib_none().0;
        // SAFETY: `raw` is a live GMainContext (`context` holds a reference).
        if unsafe { ffi::g_main_context_acquire(raw) } == ffi::GFALSE {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "another thread owns this glib main context (a MainLoop or glib loop runs there)",
            ));
        }
        // SAFETY: as above; glib keeps the pushed context referenced until the pop in `drop`
        // (pushing the global default pushes "no thread default", which is what it means).
        unsafe { ffi::g_main_context_push_thread_default(raw) };
        Ok(GlibOwner { context })
    }
}

impl Drop for GlibOwner {
    fn drop(&mut self) {
        let raw: *mut ffi::GMainContext = self.context.to_glib_none().0;
        // SAFETY: this thread pushed and acquired `raw` in `acquire` (a MainLoop is not Send, so
        // this runs on that thread), and it is still alive.
        unsafe {
            ffi::g_main_context_pop_thread_default(raw);
            ffi::g_main_context_release(raw);
        }
    }
}
