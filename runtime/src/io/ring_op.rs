//! One operation on the context's ring, as a future that owns its resources: block I/O here, and the
//! sockets' receives (`net::recv`), which also cancel it early with [`Op::cancel_on`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, squeue};

use crate::context::{current, HomeState};
use crate::thread_id::{thread_token, HomeCell};

struct OpCell<T> {
    result: Option<i32>,
    waker: Option<Waker>,
    resources: Option<T>,
    /// The future was dropped before the result arrived: the callback hands it to `orphan`.
    abandoned: bool,
}

/// The cell an operation shares with its completion callback.
type SharedCell<T> = Arc<HomeCell<OpCell<T>>>;

/// An operation in flight. Its resources (buffers, iovecs) live in a cell shared with the completion
/// callback, so they stay alive until the CQE arrives even if this future is dropped first.
pub(crate) struct Op<T: Send + 'static> {
    state: Result<SharedCell<T>, Option<(io::Error, T)>>,
    home: u64,
    orphan: fn(i32),
    /// The `user_data` the context gave the SQE (what `ASYNC_CANCEL` names); 0 if it was not queued.
    user_data: u64,
}

impl<T: Send + 'static> Op<T> {
    /// Builds an SQE that may point into `resources` (into heap memory they own, which does not move
    /// when they do) and queues it on the current context's ring. If the future is dropped before it
    /// consumed the result, `orphan` gets the result to release what it owns (an open's fd).
    ///
    /// # Safety
    ///
    /// Every pointer in the SQE must point into memory owned by `resources` (or kept alive by the
    /// caller until the operation completes).
    pub(crate) unsafe fn submit_owning_result(
        resources: T,
        make_sqe: impl FnOnce(&T) -> squeue::Entry,
        orphan: fn(i32),
    ) -> Op<T> {
        let mut unqueued = Some((resources, make_sqe));
        let op = current::with_current(|home| {
            let (resources, make_sqe) = unqueued.take().expect("taken once");
            // SAFETY: forwarded; the caller upholds this function's contract.
            unsafe { Self::queue_on(home, resources, make_sqe, orphan) }
        });
        op.unwrap_or_else(|| {
            let (resources, _) = unqueued.take().expect("not taken without a context");
            let err = crate::sys::outside_context("aioctx::fs");
            Op {
                state: Err(Some((err, resources))),
                home: thread_token(),
                orphan,
                user_data: 0,
            }
        })
    }

    /// Submits the operation until it has a result worth reporting, and returns that result (a raw
    /// CQE value: bytes, an fd, or a negative errno) with the resources.
    ///
    /// It submits again after `EINTR` and `EAGAIN`, and after an `ECANCELED` nobody asked for: no
    /// block I/O op is cancelled while its future lives, but the kernel cancels an op punted to
    /// io-wq when it cannot create a worker thread (signals arriving meanwhile). That retry is
    /// bounded, so a kernel that keeps cancelling reports `ECANCELED` in the end.
    ///
    /// # Safety
    ///
    /// As for [`submit_owning_result`](Self::submit_owning_result), for every SQE `make_sqe` builds.
    pub(crate) async unsafe fn submit_until_done(
        mut resources: T,
        make_sqe: impl Fn(&T) -> squeue::Entry,
        orphan: fn(i32),
    ) -> (io::Result<i32>, T) {
        let mut kernel_cancels = 0;
        loop {
            // SAFETY: forwarded; the caller upholds `submit_owning_result`'s contract.
            let op = unsafe { Self::submit_owning_result(resources, &make_sqe, orphan) };
            let (res, back) = op.await;
            resources = back;
            match res {
                Ok(r) if r == -libc::EINTR || r == -libc::EAGAIN => {}
                Ok(r) if r == -libc::ECANCELED && kernel_cancels < KERNEL_CANCEL_RETRIES => {
                    kernel_cancels += 1;
                }
                other => return (other, resources),
            }
        }
    }

    /// [`submit_owning_result`](Self::submit_owning_result) on a given context's ring (which must run on this thread).
    ///
    /// # Safety
    ///
    /// As for [`submit_owning_result`](Self::submit_owning_result).
    pub(crate) unsafe fn submit_on(
        home: &Rc<HomeState>,
        resources: T,
        make_sqe: impl FnOnce(&T) -> squeue::Entry,
    ) -> Op<T> {
        // SAFETY: forwarded; the caller upholds `submit_owning_result`'s contract.
        unsafe { Self::queue_on(home, resources, make_sqe, |_| {}) }
    }

    /// # Safety
    ///
    /// As for [`submit_owning_result`](Self::submit_owning_result).
    unsafe fn queue_on(
        ctx: &Rc<HomeState>,
        resources: T,
        make_sqe: impl FnOnce(&T) -> squeue::Entry,
        orphan: fn(i32),
    ) -> Op<T> {
        let sqe = make_sqe(&resources);
        let home = thread_token();
        let cell = Arc::new(HomeCell::new(
            home,
            OpCell {
                result: None,
                waker: None,
                resources: Some(resources),
                abandoned: false,
            },
        ));
        let for_callback = Arc::clone(&cell);
        let queued = ctx.add_sqe(
            sqe,
            Box::new(move |c| {
                let mut cell = for_callback.borrow_mut();
                if cell.abandoned {
                    drop(cell);
                    orphan(c.result);
                    return;
                }
                cell.result = Some(c.result);
                let waker = cell.waker.take();
                drop(cell);
                if let Some(waker) = waker {
                    waker.wake();
                }
            }),
        );
        match queued {
            Ok(user_data) => Op {
                state: Ok(cell),
                home,
                orphan,
                user_data,
            },
            Err(err) => {
                // The SQE never reached the kernel: the resources are ours again.
                let resources = cell.borrow_mut().resources.take().expect("still here");
                Op {
                    state: Err(Some((err, resources))),
                    home,
                    orphan,
                    user_data: 0,
                }
            }
        }
    }

    /// Asks the kernel to stop the operation early (`IORING_OP_ASYNC_CANCEL` naming its `user_data`,
    /// queued on `home`, the context it was submitted to). The operation still completes through
    /// its own CQE (`-ECANCELED`, or its result if it finished first), and its resources stay in the
    /// cell until then; a cancel that finds nothing to cancel is harmless.
    pub(crate) fn cancel_on(&self, home: &Rc<HomeState>) {
        let Ok(cell) = &self.state else {
            return;
        };
        // The completion callback holds the other reference until it has run: with it gone, the
        // `user_data` may already name someone else's operation.
        if thread_token() != self.home || Arc::strong_count(cell) < 2 {
            return;
        }
        if cell.borrow_mut().result.is_some() {
            return;
        }
        let cancel = opcode::AsyncCancel::new(self.user_data).build();
        // Nothing to release when the cancel completes. If it cannot be queued, the operation
        // still ends on its own or at the context's teardown.
        let _ = home.add_sqe(cancel, Box::new(|_| {}));
    }
}

// The resources are never pinned (they live behind an Arc or in an Option), so Op may move freely.
impl<T: Send + 'static> Unpin for Op<T> {}

impl<T: Send + 'static> Future for Op<T> {
    /// The CQE result (or the submission error) and the resources.
    type Output = (io::Result<i32>, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            Err(failed) => {
                let (err, res) = failed.take().expect("Op polled after completion");
                Poll::Ready((Err(err), res))
            }
            Ok(cell) => {
                let mut cell = cell.borrow_mut();
                match cell.result.take() {
                    Some(result) => {
                        let res = cell.resources.take().expect("Op polled after completion");
                        Poll::Ready((Ok(result), res))
                    }
                    None => {
                        match &mut cell.waker {
                            Some(w) if w.will_wake(cx.waker()) => {}
                            slot => *slot = Some(cx.waker().clone()),
                        }
                        Poll::Pending
                    }
                }
            }
        }
    }
}

impl<T: Send + 'static> Drop for Op<T> {
    fn drop(&mut self) {
        // A dropped op keeps running: its resources stay in the cell the completion callback holds and
        // are freed when the CQE arrives (or when the context cancels it at teardown). Only forget the
        // waker, on the home thread where the cell may be touched.
        // An owned result that arrived but was never consumed is released here; one still to come is
        // released by the completion callback.
        if let Ok(cell) = &self.state {
            if thread_token() == self.home {
                let mut cell = cell.borrow_mut();
                cell.waker = None;
                if cell.resources.is_some() {
                    cell.abandoned = true;
                    if let Some(result) = cell.result.take() {
                        drop(cell);
                        (self.orphan)(result);
                    }
                }
            }
        }
    }
}

/// How often [`Op::submit_until_done`] submits an operation the kernel cancelled on its own before
/// the `ECANCELED` reaches the caller.
const KERNEL_CANCEL_RETRIES: u32 = 16;

/// Turns a CQE result into bytes or an OS error.
pub(crate) fn cqe_result(res: i32) -> io::Result<usize> {
    if res >= 0 {
        Ok(res as usize)
    } else {
        Err(io::Error::from_raw_os_error(-res))
    }
}
