//! User SQEs on the context's ring (QEMU's `aio_add_sqe`).

use std::fmt;
use std::io;

use io_uring::squeue;

use super::{AioContext, Inner};
use crate::fdmon::io_uring::user_sqe_data;
use crate::fdmon::Completion;

/// What a user SQE's completion callback receives: the CQE's `res` and `flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqeCompletion {
    /// The operation's result: non-negative on success, `-errno` on failure.
    pub result: i32,
    /// The CQE flags (`IORING_CQE_F_*`).
    pub flags: u32,
}

impl SqeCompletion {
    /// The result as an `io::Result`: `Ok(res)` or the OS error `-res`.
    pub fn into_result(self) -> io::Result<u32> {
        if self.result >= 0 {
            Ok(self.result as u32)
        } else {
            Err(io::Error::from_raw_os_error(-self.result))
        }
    }
}

pub(crate) struct SqeCallback(Box<dyn FnOnce(SqeCompletion)>);

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
    /// Fails with `Unsupported` unless the context runs the io_uring backend.
    ///
    /// # Safety
    ///
    /// Every buffer, iovec, path or other memory the SQE points to must stay valid (and, for memory the
    /// kernel writes, unaliased) until `on_complete` is called or dropped; the simplest way is to move
    /// its owner into `on_complete`. The context never drops `on_complete` before the CQE has arrived: if
    /// the context is dropped first, it cancels the operation and waits for its CQE. The fds the SQE
    /// names must stay open until then as well.
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
        self.inner.add_sqe(sqe, Box::new(on_complete))
    }
}

impl Inner {
    fn add_sqe(
        &self,
        sqe: squeue::Entry,
        on_complete: Box<dyn FnOnce(SqeCompletion)>,
    ) -> io::Result<()> {
        let key = self
            .sqe_callbacks
            .borrow_mut()
            .insert(SqeCallback(on_complete));
        let pushed = self
            .monitor
            .borrow_mut()
            .push_sqe(sqe.user_data(user_sqe_data(key)));
        if let Err(err) = pushed {
            let callback = self.sqe_callbacks.borrow_mut().remove(key);
            drop(callback);
            return Err(err);
        }
        Ok(())
    }

    /// Runs the completion callbacks of reaped user SQEs; returns whether any ran.
    pub(crate) fn dispatch_completions(&self, completions: &mut Vec<Completion>) -> bool {
        let mut progress = false;
        for c in completions.drain(..) {
            let callback = self.sqe_callbacks.borrow_mut().try_remove(c.key);
            if let Some(SqeCallback(f)) = callback {
                f(SqeCompletion {
                    result: c.result,
                    flags: c.flags,
                });
                progress = true;
            }
        }
        progress
    }
}
