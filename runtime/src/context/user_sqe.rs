//! User SQEs on the context's ring (QEMU's `aio_add_sqe`): the [`UserSqes`] state (completion callbacks
//! in flight, reaped completions not yet dispatched, the ring for user SQEs on a readiness backend).
//!
//! Buffer lifetimes: a user SQE's memory is owned by its completion callback (the contract of
//! [`AioContext::add_sqe`]), and a callback is dropped only after its CQE was reaped, or at teardown
//! after the kernel confirmed the operation finished; operations it cannot confirm leak their callback
//! (see `fdmon/io_uring.rs`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;

use io_uring::squeue;
use slab::Slab;

use std::rc::{Rc, Weak};
use std::sync::Arc;

use super::bh::BhCall;
use super::{AioContext, Bh, FdHandlers, FdRegistration, HomeState};
use crate::fdmon::io_uring::{user_sqe_data, UringMonitor};
use crate::fdmon::{Backend, Completion, MonitorOps};

/// What a user SQE's completion callback receives: the CQE's `res` and `flags`.
///
/// ```
/// use std::{cell::Cell, rc::Rc};
/// use aioctx::{AioContext, SqeCompletion, io_uring::opcode};
/// let ctx = AioContext::new()?;
/// let done = Rc::new(Cell::new(None::<SqeCompletion>));
/// // SAFETY: a NOP points at no memory.
/// unsafe { ctx.add_sqe(opcode::Nop::new().build(), { let d = done.clone(); move |c| d.set(Some(c)) })? };
/// while done.get().is_none() {
///     ctx.poll(true);
/// }
/// assert_eq!(done.get().unwrap().into_result()?, 0);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqeCompletion {
    /// The operation's result: non-negative on success, `-errno` on failure.
    pub result: i32,
    /// The CQE flags (`IORING_CQE_F_*`).
    pub flags: u32,
}

impl SqeCompletion {
    /// The result as an `io::Result`: `Ok(res)` or the OS error `-res`.
    ///
    /// ```
    /// use aioctx::SqeCompletion;
    /// assert_eq!(SqeCompletion { result: 512, flags: 0 }.into_result()?, 512);
    /// let failed = SqeCompletion { result: -libc::EBADF, flags: 0 };
    /// assert_eq!(failed.into_result().unwrap_err().raw_os_error(), Some(libc::EBADF));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn into_result(self) -> io::Result<u32> {
        if self.result >= 0 {
            Ok(self.result as u32)
        } else {
            Err(io::Error::from_raw_os_error(-self.result))
        }
    }
}

struct SqeCallback(Box<dyn FnOnce(SqeCompletion)>);

/// A context's user SQEs.
pub(crate) struct UserSqes {
    /// Completion callbacks of user SQEs in flight, keyed by the slot in their `user_data`.
    callbacks: RefCell<Slab<SqeCallback>>,
    /// Reaped completions not dispatched yet (a callback that panicked leaves the rest here).
    completions: RefCell<VecDeque<Completion>>,
    /// The ring for user SQEs when the fd monitor is not io_uring, created on first use.
    ring: RefCell<Option<UserSqeRing>>,
    /// Fault injection (`test-util`): io_uring setup fails with this errno.
    simulate_uring_errno: Option<i32>,
}

impl UserSqes {
    pub(crate) fn new(simulate_uring_errno: Option<i32>) -> Self {
        Self {
            callbacks: RefCell::default(),
            completions: RefCell::default(),
            ring: RefCell::new(None),
            simulate_uring_errno,
        }
    }

    /// Whether reaped completions wait for dispatch (then the loop must not sleep).
    pub(crate) fn has_completions(&self) -> bool {
        !self.completions.borrow().is_empty()
    }

    /// Whether user SQEs are queued or in flight (their completions are yet to be reaped).
    pub(crate) fn in_flight(&self) -> bool {
        !self.callbacks.borrow().is_empty()
    }

    /// Queues reaped completions for the next dispatch.
    pub(crate) fn queue_completions(&self, reaped: impl Iterator<Item = Completion>) {
        self.completions.borrow_mut().extend(reaped);
    }
}

impl fmt::Debug for SqeCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SqeCallback")
    }
}

impl AioContext {
    /// Queues an SQE on this context's io_uring (QEMU's `aio_add_sqe`) and calls `on_complete` on the home
    /// thread, first thing in the dispatch of the iteration that reaps its CQE.
    ///
    /// The SQE goes to the kernel at the next wait (one `io_uring_enter` carries everything queued), or
    /// earlier when the submission queue is full or [`Builder::max_batch`](crate::Builder::max_batch) SQEs
    /// are queued. The SQE's `user_data` is replaced with the context's own. It may be queued from inside
    /// any callback, including another SQE's completion callback. Only single-shot operations are
    /// supported: the first CQE completes the operation (no multishot, no `CQE_SKIP_SUCCESS`).
    ///
    /// On the io_uring backend the SQE goes on the context's own ring. On epoll and poll it goes on a
    /// user-SQE ring the context creates at the first call: its fd is watched like any other, its
    /// completion queue is peeked while the loop busy-polls, and SQEs queued in one iteration go out
    /// together in the next.
    /// Fails only when the kernel refuses io_uring altogether.
    ///
    /// # Safety
    ///
    /// Every buffer, iovec, path or other memory the SQE points to must stay valid (and, for memory the
    /// kernel writes, unaliased) until `on_complete` is called or dropped; the simplest way is to move
    /// its owner into `on_complete`. The context never drops `on_complete` before the CQE has arrived: if
    /// the context is dropped first, it cancels the operation and waits for its CQE. The fds the SQE
    /// names must stay open until then as well. The SQE must produce exactly one CQE: no multishot
    /// operations (the first CQE would release memory the kernel keeps writing) and no
    /// `IOSQE_CQE_SKIP_SUCCESS` (the context would wait for a CQE that never comes).
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc};
    /// use aioctx::{AioContext, Backend, io_uring::opcode};
    ///
    /// let ctx = AioContext::builder().backend(Backend::IoUring).build()?;
    /// let result = Rc::new(Cell::new(None));
    /// let nop = opcode::Nop::new().build();
    /// // SAFETY: a NOP points at no memory.
    /// unsafe { ctx.add_sqe(nop, { let r = result.clone(); move |c| r.set(Some(c.result)) })? };
    /// while result.get().is_none() {
    ///     ctx.poll(true);
    /// }
    /// assert_eq!(result.get(), Some(0));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub unsafe fn add_sqe(
        &self,
        sqe: squeue::Entry,
        on_complete: impl FnOnce(SqeCompletion) + 'static,
    ) -> io::Result<()> {
        self.home().add_sqe(sqe, Box::new(on_complete)).map(|_| ())
    }
}

/// A ring for user SQEs on a context that sleeps in epoll or poll: its fd is watched by the context
/// (readable when completions wait), its completion queue is peeked by a poll function while the loop
/// busy-polls, and a BH submits what was queued during an iteration, in one `io_uring_enter`.
struct UserSqeRing {
    ring: UringMonitor,
    submit: Bh,
    _registration: FdRegistration,
}

impl HomeState {
    /// QEMU's `aio_context_set_aio_params`: the io_uring monitor submits user SQEs once this many
    /// are queued (0: at the next wait). Kept, but unused, on other backends (the user-SQE ring of
    /// an epoll or poll context submits once per iteration).
    pub(crate) fn set_max_batch(&self, max_batch: usize) {
        self.monitor.borrow_mut().set_max_batch(max_batch);
    }

    pub(crate) fn max_batch(&self) -> usize {
        self.monitor.borrow().max_batch()
    }

    /// Queues `sqe` (see [`AioContext::add_sqe`]); returns the `user_data` it was given.
    pub(crate) fn add_sqe(
        self: &Rc<Self>,
        sqe: squeue::Entry,
        on_complete: Box<dyn FnOnce(SqeCompletion)>,
    ) -> io::Result<u64> {
        let key = self
            .user_sqes
            .callbacks
            .borrow_mut()
            .insert(SqeCallback(on_complete));
        let user_data = user_sqe_data(key);
        let sqe = sqe.user_data(user_data);
        let on_main_ring = self.backend() == Backend::IoUring;
        let pushed = if on_main_ring {
            self.monitor.borrow_mut().push_sqe(sqe)
        } else {
            self.push_user_sqe_ring(sqe)
        };
        if let Err(err) = pushed {
            let callback = self.user_sqes.callbacks.borrow_mut().remove(key);
            // Ground rule 2.
            drop(callback);
            return Err(err);
        }
        Ok(user_data)
    }

    /// Whether user SQEs can run here: on the context's own ring, or on a user-SQE ring (created now if
    /// needed). The error says why not.
    pub(crate) fn ring_available(self: &Rc<Self>) -> io::Result<()> {
        if self.backend() == Backend::IoUring {
            return Ok(());
        }
        if self.user_sqes.ring.borrow().is_none() {
            let ring = self.create_user_sqe_ring()?;
            *self.user_sqes.ring.borrow_mut() = Some(ring);
        }
        Ok(())
    }

    fn push_user_sqe_ring(self: &Rc<Self>, sqe: squeue::Entry) -> io::Result<()> {
        self.ring_available()?;
        let mut guard = self.user_sqes.ring.borrow_mut();
        let ring = guard.as_mut().expect("created above");
        ring.ring.push_sqe(sqe)?;
        ring.submit.schedule();
        Ok(())
    }

    fn create_user_sqe_ring(self: &Rc<Self>) -> io::Result<UserSqeRing> {
        if let Some(errno) = self.user_sqes.simulate_uring_errno {
            return Err(crate::fdmon::io_uring::unavailable(
                io::Error::from_raw_os_error(errno),
            ));
        }
        let ring = UringMonitor::new_user_sqe_ring(
            crate::fdmon::io_uring::DEFAULT_ENTRIES,
            Arc::clone(&self.shared.stats.uring),
        )?;
        let fd = ring.ring_fd();
        let weak = Rc::downgrade(self);
        let handlers = FdHandlers::new()
            .read({
                let weak = weak.clone();
                move || reap_user_sqe_ring(&weak)
            })
            .poll(
                {
                    let weak = weak.clone();
                    move || {
                        weak.upgrade().is_some_and(|home| {
                            home.user_sqes
                                .ring
                                .borrow_mut()
                                .as_mut()
                                .is_some_and(|ring| ring.ring.completions_ready())
                        })
                    }
                },
                {
                    let weak = weak.clone();
                    move || reap_user_sqe_ring(&weak)
                },
            );
        let token = self.add_handler(fd, handlers, false)?;
        let registration = FdRegistration::new(self, token, fd, None);
        let submit = Bh::new(
            self,
            BhCall::Repeat(Rc::new(move || {
                if let Some(home) = weak.upgrade() {
                    if let Some(ring) = home.user_sqes.ring.borrow_mut().as_mut() {
                        ring.ring.submit_pending();
                    }
                }
            })),
        );
        Ok(UserSqeRing {
            ring,
            submit,
            _registration: registration,
        })
    }

    /// Teardown: cancels every user SQE in flight, on the context's ring and its user-SQE ring, and waits for
    /// their completions; then drops the completion callbacks (and the buffers they own). The callbacks of
    /// operations the kernel could not be made to finish are leaked instead: the kernel may still write
    /// into their memory.
    pub(crate) fn cancel_all_user_sqes(&self) {
        let (done, mut stuck) = self.monitor.borrow_mut().cancel_user_ops();
        drop(done);
        let ring = self.user_sqes.ring.borrow_mut().take();
        if let Some(mut ring) = ring {
            let (done, ring_stuck) = ring.ring.cancel_user_ops();
            drop(done);
            if ring_stuck.is_empty() {
                drop(ring.ring);
            } else {
                // The ring must outlive those operations too.
                std::mem::forget(ring.ring);
            }
            stuck.extend(ring_stuck);
            drop(ring.submit);
            drop(ring._registration);
        }
        let mut callbacks = std::mem::take(&mut *self.user_sqes.callbacks.borrow_mut());
        for key in stuck {
            if let Some(callback) = callbacks.try_remove(key) {
                std::mem::forget(callback);
            }
        }
        drop(callbacks);
    }

    /// Runs the completion callbacks of reaped user SQEs, one at a time from the context's queue (so a
    /// callback that panics leaves the others queued for the next iteration); returns whether any ran.
    pub(crate) fn dispatch_completions(&self) -> bool {
        let mut progress = false;
        loop {
            // Ground rule 1: one completion and its callback are taken out, then the callback runs.
            let next = self.user_sqes.completions.borrow_mut().pop_front();
            let Some(c) = next else {
                return progress;
            };
            let callback = self.user_sqes.callbacks.borrow_mut().try_remove(c.key);
            if let Some(SqeCallback(f)) = callback {
                f(SqeCompletion {
                    result: c.result,
                    flags: c.flags,
                });
                progress = true;
            }
        }
    }
}

/// Reaps the user-SQE ring's completions and runs their callbacks (from its fd handler or poll path).
fn reap_user_sqe_ring(weak: &Weak<HomeState>) {
    let Some(home) = weak.upgrade() else {
        return;
    };
    let mut completions = Vec::new();
    if let Some(ring) = home.user_sqes.ring.borrow_mut().as_mut() {
        let _ = ring.ring.wait(0, &mut Vec::new(), &mut completions);
    }
    home.user_sqes.queue_completions(completions.into_iter());
    home.dispatch_completions();
}
