//! Waiting for an [`EventNotifier`] in a task.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::context::current;
use crate::{EventNotifier, FdHandlers, FdRegistration};

#[derive(Default)]
struct WaitState {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl WaitState {
    fn fire(&self) {
        self.fired.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// The callbacks a polling waiter runs when the loop enters and leaves busy-polling.
struct PollHooks {
    begin: Box<dyn Fn()>,
    end: Box<dyn Fn()>,
}

/// A persistent registration of an [`EventNotifier`] with the current context, for tasks that wait for it
/// repeatedly (a device's ioeventfd). Created by [`EventNotifier::waiter`] or, with a userspace poll
/// function the loop's polling phase calls, [`EventNotifier::waiter_polling`].
///
/// ```
/// let ctx = aioctx::AioContext::new()?;
/// let kick = aioctx::EventNotifier::new()?;
/// ctx.block_on(async {
///     let waiter = kick.waiter()?;
///     let k = kick.clone();
///     std::thread::spawn(move || k.set().unwrap());
///     waiter.wait().await; // returns once set; the notifier is cleared
///     Ok::<_, std::io::Error>(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct NotifierWaiter {
    state: Rc<WaitState>,
    _registration: FdRegistration,
}

impl fmt::Debug for NotifierWaiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifierWaiter")
            .field("fired", &self.state.fired.get())
            .finish()
    }
}

impl NotifierWaiter {
    fn register(
        notifier: &EventNotifier,
        poll: Option<Box<dyn Fn() -> bool>>,
        hooks: Option<PollHooks>,
    ) -> io::Result<Self> {
        let state = Rc::new(WaitState::default());
        let poll: Option<Rc<dyn Fn() -> bool>> = poll.map(Rc::from);
        let mut handlers = FdHandlers::new().read({
            let (state, n) = (Rc::downgrade(&state), notifier.clone());
            let poll = poll.clone();
            move || {
                // Clearing here keeps the level-triggered fd from firing again. If the counter was
                // already clear, another waiter on the same eventfd (a front end may hand one kick
                // fd to several queues) took the set that made it readable: a polling waiter then
                // asks its poll function, so work meant for it is not left until the next set.
                let set = n.test_and_clear().unwrap_or(false);
                if set || poll.as_ref().is_some_and(|poll| poll()) {
                    if let Some(s) = state.upgrade() {
                        s.fire();
                    }
                }
            }
        });
        if let Some(poll) = poll {
            let state = Rc::downgrade(&state);
            handlers.poll = Some(Box::new(move || poll()));
            handlers.poll_ready = Some(Box::new(move || {
                if let Some(s) = state.upgrade() {
                    s.fire();
                }
            }));
            if let Some(hooks) = hooks {
                handlers.poll_begin = Some(hooks.begin);
                handlers.poll_end = Some(hooks.end);
            }
        }
        let fd = notifier.as_raw_fd();
        let registration = current::with_current(|home| {
            let token = home.add_handler(fd, handlers, false)?;
            Ok::<_, io::Error>(FdRegistration::new(home, token, fd, Some(notifier.clone())))
        })
        .unwrap_or_else(|| Err(crate::sys::outside_context("EventNotifier::waiter")))?;
        Ok(Self {
            state,
            _registration: registration,
        })
    }

    /// Waits until the notifier was set (it is cleared for you) or, for a polling waiter, until the poll
    /// function found work. Several sets before a wait count as one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use aioctx::time::timeout;
    /// // Paused time: the timeout below fires on the virtual clock, without waiting.
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// let kick = aioctx::EventNotifier::new()?;
    /// ctx.block_on(async {
    ///     let waiter = kick.waiter()?;
    ///     kick.set()?;
    ///     kick.set()?;
    ///     waiter.wait().await;
    ///     // Both sets were used up by that one wait.
    ///     assert!(timeout(Duration::from_millis(10), waiter.wait()).await.is_err());
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.state.fired.replace(false) {
                return Poll::Ready(());
            }
            match &mut *self.state.waker.borrow_mut() {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

impl EventNotifier {
    /// Registers this notifier with the current context for repeated [`NotifierWaiter::wait`]s.
    ///
    /// Like any handler without a poll function, it keeps the context from busy-polling while it
    /// exists (the loop could not see the eventfd otherwise); use [`waiter_polling`](Self::waiter_polling)
    /// where the work can be detected in memory.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let kick = aioctx::EventNotifier::new()?;
    /// ctx.block_on(async {
    ///     let waiter = kick.waiter()?; // registered once, for every round
    ///     for _ in 0..3 {
    ///         kick.set()?;
    ///         waiter.wait().await;
    ///         assert!(!kick.test_and_clear()?, "the wait cleared it");
    ///     }
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn waiter(&self) -> io::Result<NotifierWaiter> {
        NotifierWaiter::register(self, None, None)
    }

    /// Registers this notifier with a userspace poll function (QEMU's `io_poll`): while the loop
    /// busy-polls it calls `poll`, and a wait ends as soon as `poll` returns true, with no syscall; when the
    /// loop sleeps, setting the notifier wakes it. `poll` should be cheap and side-effect free (peek a
    /// ring index in shared memory).
    ///
    /// ```
    /// use std::sync::{atomic::{AtomicBool, Ordering}, Arc};
    /// let ctx = aioctx::AioContext::builder().poll_max_ns(32_768).build()?;
    /// let kick = aioctx::EventNotifier::new()?;
    /// let work = Arc::new(AtomicBool::new(false));
    /// ctx.block_on(async {
    ///     let w = work.clone();
    ///     let waiter = kick.waiter_polling(move || w.load(Ordering::Acquire))?;
    ///     work.store(true, Ordering::Release);
    ///     kick.set()?; // a guest sets both; a polling loop may see the memory first
    ///     waiter.wait().await;
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn waiter_polling(&self, poll: impl Fn() -> bool + 'static) -> io::Result<NotifierWaiter> {
        NotifierWaiter::register(self, Some(Box::new(poll)), None)
    }

    /// Like [`waiter_polling`](Self::waiter_polling), plus QEMU's `io_poll_begin`/`io_poll_end` hooks:
    /// `poll_begin` runs when the loop starts busy-polling and `poll_end` when it stops, right before it
    /// sleeps; after `poll_end` the loop calls `poll` once more, so work that raced with `poll_end` still
    /// ends the wait. A device uses them to suppress guest notifications while it polls its ring and to
    /// re-enable them before the loop sleeps (virtqueue notification suppression).
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc};
    /// use std::sync::{atomic::{AtomicBool, Ordering}, Arc};
    /// let ctx = aioctx::AioContext::builder().poll_max_ns(1_000_000).build()?;
    /// let kick = aioctx::EventNotifier::new()?;
    /// let work = Arc::new(AtomicBool::new(false));
    /// let kicks_wanted = Rc::new(Cell::new(true));
    /// ctx.block_on(async {
    ///     let w = work.clone();
    ///     let (off, on) = (kicks_wanted.clone(), kicks_wanted.clone());
    ///     let waiter = kick.waiter_polling_with(
    ///         move || w.swap(false, Ordering::AcqRel),
    ///         move || off.set(false), // polling: the guest need not kick
    ///         move || on.set(true),   // about to sleep: kicks wanted again
    ///     )?;
    ///     work.store(true, Ordering::Release);
    ///     kick.set()?;
    ///     waiter.wait().await;
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn waiter_polling_with(
        &self,
        poll: impl Fn() -> bool + 'static,
        poll_begin: impl Fn() + 'static,
        poll_end: impl Fn() + 'static,
    ) -> io::Result<NotifierWaiter> {
        let hooks = PollHooks {
            begin: Box::new(poll_begin),
            end: Box::new(poll_end),
        };
        NotifierWaiter::register(self, Some(Box::new(poll)), Some(hooks))
    }

    /// Waits once until the notifier is set, then clears it. Returns at once if it is set already. For
    /// repeated waits keep a [`waiter`](Self::waiter): this registers and unregisters each time.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let kick = aioctx::EventNotifier::new()?;
    /// ctx.block_on(async {
    ///     kick.set()?;
    ///     kick.wait().await?; // set already: returns at once
    ///     assert!(!kick.test_and_clear()?, "the wait cleared it");
    ///     let vcpu = kick.clone();
    ///     let setter = std::thread::spawn(move || vcpu.set());
    ///     kick.wait().await?;
    ///     setter.join().expect("the setter thread ran")?;
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn wait(&self) -> io::Result<()> {
        if self.test_and_clear()? {
            return Ok(());
        }
        self.waiter()?.wait().await;
        Ok(())
    }

    /// Waits once until the notifier is set or `poll` finds work (see
    /// [`waiter_polling`](Self::waiter_polling)).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// let ctx = aioctx::AioContext::new()?;
    /// let kick = aioctx::EventNotifier::new()?;
    /// let work = Arc::new(AtomicBool::new(true));
    /// ctx.block_on(async {
    ///     // Work already visible in memory ends the wait without reading the eventfd.
    ///     let w = Arc::clone(&work);
    ///     kick.wait_polling(move || w.load(Ordering::Acquire)).await?;
    ///     // So does the notifier being set, whatever `poll` says.
    ///     kick.set()?;
    ///     kick.wait_polling(|| false).await?;
    ///     assert!(!kick.test_and_clear()?);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn wait_polling(&self, poll: impl Fn() -> bool + 'static) -> io::Result<()> {
        if poll() || self.test_and_clear()? {
            return Ok(());
        }
        self.waiter_polling(poll)?.wait().await;
        Ok(())
    }
}
