//! Unix signals as futures on the loop: [`signal`] and [`Signal::recv`] (tokio's shape), with no
//! helper thread.
//!
//! A [`Signal`] owns an eventfd watched by the context that created it. The process-wide handler
//! (installed once per signal number through `signal-hook-registry`, which chains any handler that was
//! there before and keeps `errno` intact) bumps each listener's delivery counter and writes its
//! eventfd: both are async-signal-safe. The listener's loop wakes like for any fd, or, while it
//! busy-polls, sees the counter change in memory; so a `Signal` on an IOThread does not stop that
//! IOThread from polling.
//!
//! - **Every listener sees every delivery**: several `Signal`s for one number, on one context or on
//!   several, each wake up.
//! - **Deliveries coalesce**: any number of deliveries between two `recv`s make one `recv` return (as
//!   the kernel itself merges pending standard signals).
//! - **The disposition stays**: once a signal number has had a listener, the process keeps aioctx's
//!   handler for it, also after the last `Signal` is dropped (as tokio does). A `SIGTERM` or `SIGINT`
//!   with no listener left then no longer ends the process.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use signal_hook_registry::SigId;

use crate::io::NotifierWaiter;
use crate::EventNotifier;

/// What the signal handler and the listener share.
struct Deliveries {
    count: AtomicU64,
}

/// A listener for one signal number on the context that created it; see [`signal`].
///
/// ```
/// use aioctx::signal::signal;
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let mut usr1 = signal(libc::SIGUSR1)?;
///     // SAFETY: raise sends a signal to this thread; a handler for it is installed just above.
///     unsafe { libc::raise(libc::SIGUSR1) };
///     assert_eq!(usr1.recv().await, Some(()));
///     Ok::<_, std::io::Error>(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Signal {
    signum: i32,
    id: Option<SigId>,
    deliveries: Arc<Deliveries>,
    /// Deliveries this listener has returned from `recv` (the counter's value it last saw).
    consumed: u64,
    notifier: EventNotifier,
    waiter: NotifierWaiter,
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signal")
            .field("signum", &self.signum)
            .finish_non_exhaustive()
    }
}

/// Listens for signal `signum` (e.g. `libc::SIGTERM`) on the current context: from now on each
/// delivery to the process makes [`Signal::recv`] return, on this context's thread (an IOThread's
/// too). See the [module docs](self) for coalescing and what stays installed.
///
/// Errors: `signum` out of range, `SIGKILL` or `SIGSTOP` (which cannot be caught), or `SIGILL`,
/// `SIGFPE`, `SIGSEGV` (synchronous faults a handler cannot fix): `InvalidInput`. Outside a context:
/// `NotConnected`. Out of fds: `EMFILE`.
///
/// ```
/// use aioctx::signal::signal;
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     assert_eq!(signal(libc::SIGKILL).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
///     assert_eq!(signal(0).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
///     assert_eq!(signal(1000).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
/// });
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn signal(signum: i32) -> io::Result<Signal> {
    check_signum(signum)?;
    let notifier = EventNotifier::new()?;
    let deliveries = Arc::new(Deliveries {
        count: AtomicU64::new(0),
    });
    // The poll function fires once per change of the counter, so a delivery nobody has received yet
    // cannot keep a polling loop busy.
    let polled = Rc::new(std::cell::Cell::new(0));
    let waiter = notifier.waiter_polling({
        let deliveries = Arc::clone(&deliveries);
        move || {
            // Acquire pairs with the handler's Release increment.
            let now = deliveries.count.load(Ordering::Acquire);
            now != polled.replace(now)
        }
    })?;
    let id = {
        let deliveries = Arc::clone(&deliveries);
        let fd = notifier.clone();
        let action = move || {
            // Release pairs with the Acquire loads in the poll function and in `poll_recv`.
            deliveries.count.fetch_add(1, Ordering::Release);
            let one: u64 = 1;
            // SAFETY: write(2) is async-signal-safe; it copies 8 bytes from a live u64 into the
            // eventfd, which `fd` keeps open for as long as this action is registered. A full
            // counter (EAGAIN) means the eventfd is set already; nothing else can fail here.
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        };
        // SAFETY: the action is async-signal-safe: an atomic increment and write(2); it does not
        // allocate, lock or panic.
        unsafe { signal_hook_registry::register(signum, action) }.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("installing a handler for signal {signum}: {e}"),
            )
        })?
    };
    Ok(Signal {
        signum,
        id: Some(id),
        deliveries,
        consumed: 0,
        notifier,
        waiter,
    })
}

/// `InvalidInput` for a number that is no signal or one that cannot (or must not) be caught.
fn check_signum(signum: i32) -> io::Result<()> {
    if signum <= 0 || signum > libc::SIGRTMAX() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{signum} is not a signal number (1..={})", libc::SIGRTMAX()),
        ));
    }
    if signal_hook_registry::FORBIDDEN.contains(&signum) {
        let why = if signum == libc::SIGKILL || signum == libc::SIGSTOP {
            "cannot be caught"
        } else {
            "is a synchronous fault that a handler cannot fix"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("signal {signum} {why}"),
        ));
    }
    Ok(())
}

impl Signal {
    /// The signal number.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let _guard = ctx.enter();
    /// assert_eq!(aioctx::signal::signal(libc::SIGUSR2)?.signum(), libc::SIGUSR2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn signum(&self) -> i32 {
        self.signum
    }

    /// Waits for the next delivery of the signal (or returns at once if one arrived since the last
    /// `recv`; several deliveries in between count as one). Returns `Some(())`; the `Option` is
    /// tokio's shape, for a listener that can end (this one does not).
    ///
    /// ```
    /// use aioctx::signal::signal;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let mut usr2 = signal(libc::SIGUSR2)?;
    ///     for _ in 0..3 {
    ///         // SAFETY: raise signals this thread; the handler is installed.
    ///         unsafe { libc::raise(libc::SIGUSR2) };
    ///     }
    ///     usr2.recv().await; // the three deliveries coalesced
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn recv(&mut self) -> Option<()> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for a delivery (see [`recv`](Signal::recv)). `Pending` registers the task's waker.
    ///
    /// ```
    /// use std::task::Poll;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let mut usr1 = aioctx::signal::signal(libc::SIGUSR1)?;
    ///     let now = std::future::poll_fn(|cx| Poll::Ready(usr1.poll_recv(cx).is_ready())).await;
    ///     assert!(!now, "nothing delivered yet");
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<()>> {
        loop {
            // Acquire pairs with the handler's Release increment.
            let delivered = self.deliveries.count.load(Ordering::Acquire);
            if delivered != self.consumed {
                self.consumed = delivered;
                // The eventfd only wakes the loop; the counter is what counts. A delivery after the
                // load above bumps the counter again, so clearing here loses nothing.
                let _ = self.notifier.test_and_clear();
                return Poll::Ready(Some(()));
            }
            let wait = std::pin::pin!(self.waiter.wait());
            match std::future::Future::poll(wait, cx) {
                // Fired (by the eventfd or the poll function): look at the counter again.
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            // The registry makes sure no handler still runs the action when it drops it.
            signal_hook_registry::unregister(id);
        }
    }
}
