//! One iteration of the main loop, QEMU's `main_loop_wait` and `os_host_main_loop_wait`:
//!
//! 1. glib: `g_main_context_prepare`, then `g_main_context_query` for its fds and its timeout (ms),
//!    growing the fd array until it fits.
//! 2. Both contexts prepare (`context/external.rs`): their notify windows open, their timeouts come
//!    in ns, and their monitors name the fds to watch (one each for epoll and io_uring).
//! 3. One `ppoll` over glib's fds and the contexts' fds, with the nearest of the three timeouts in ns
//!    (0 if glib or a context has work ready, or the caller asked not to block).
//! 4. Both contexts check (closing their windows), glib checks with the `revents` of its fds and
//!    dispatches what is ready, then each context with work dispatches.
//!
//! A glib callback may run the main loop nested (a `wait` or `block_on` inside it): the fd arrays are
//! taken out of the main loop for the iteration, so a nested one starts with its own.

use std::ptr;

use glib::ffi;
use glib::translate::ToGlibPtr;

use super::MainLoop;
use crate::sys;
use crate::timers::soonest;

/// The fd arrays an iteration reuses.
#[derive(Default)]
pub(super) struct Buffers {
    /// glib's fds, as `g_main_context_query` fills them and `g_main_context_check` reads them.
    glib: Vec<ffi::GPollFD>,
    /// Everything `ppoll` watches: glib's fds, then the aio context's, then the iohandler's.
    pollfds: Vec<libc::pollfd>,
}

const NO_FD: ffi::GPollFD = ffi::GPollFD {
    fd: -1,
    events: 0,
    revents: 0,
};

impl MainLoop {
    /// One iteration (QEMU's `main_loop_wait`): sleeps until a glib source, an fd or timer of either
    /// context, or a notification needs the loop (not at all if `nonblocking`), then runs glib's
    /// ready sources and both contexts' ready work. Returns whether anything made progress (a glib
    /// source dispatched, or either context's work; a bare wake-up is not progress).
    ///
    /// ```
    /// use std::sync::{atomic::{AtomicBool, Ordering}, Arc};
    /// use aioctx::{glib, MainLoop};
    /// let gctx = glib::MainContext::new();
    /// let ml = MainLoop::builder().context(gctx.clone()).handle_signals(false).build()?;
    /// let fired = Arc::new(AtomicBool::new(false));
    /// let idle = glib::idle_source_new(None, glib::Priority::DEFAULT_IDLE, {
    ///     let fired = fired.clone();
    ///     move || {
    ///         fired.store(true, Ordering::Relaxed);
    ///         glib::ControlFlow::Break
    ///     }
    /// });
    /// idle.attach(Some(&gctx));
    /// assert!(ml.wait(true)); // nonblocking: the idle source is ready
    /// assert!(fired.load(Ordering::Relaxed));
    /// assert!(!ml.wait(true)); // nothing left to do
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait(&self, nonblocking: bool) -> bool {
        let gcontext: *mut ffi::GMainContext = self.gcontext.to_glib_none().0;
        let mut buffers = std::mem::take(&mut *self.buffers.borrow_mut());
        let mut max_priority = 0;
        // SAFETY: this thread owns `gcontext` (acquired for the main loop's life), as glib requires
        // for prepare, query, check and dispatch; `max_priority` is a live out-parameter.
        let glib_ready = unsafe { ffi::g_main_context_prepare(gcontext, &mut max_priority) };
        let glib_timeout_ms = query(gcontext, max_priority, &mut buffers.glib);

        let aio = self.aio.home();
        let iohandler = self.iohandler.home();
        let aio_ns = aio.external_prepare();
        let iohandler_ns = iohandler.external_prepare();
        let pollfds = &mut buffers.pollfds;
        pollfds.clear();
        pollfds.extend(buffers.glib.iter().map(|g| libc::pollfd {
            fd: g.fd,
            events: g.events as libc::c_short,
            revents: 0,
        }));
        let aio_first = pollfds.len();
        aio.external_fds(pollfds);
        let iohandler_first = pollfds.len();
        iohandler.external_fds(pollfds);

        let timeout_ns = if nonblocking || glib_ready != ffi::GFALSE {
            0
        } else {
            let glib_ns = match glib_timeout_ms {
                ms if ms < 0 => -1,
                ms => i64::from(ms) * 1_000_000,
            };
            soonest(glib_ns, soonest(aio_ns, iohandler_ns))
        };
        if timeout_ns != 0 {
            aio.external_will_block();
            iohandler.external_will_block();
        }
        ppoll(pollfds, timeout_ns);

        for (g, p) in buffers.glib.iter_mut().zip(pollfds.iter()) {
            g.revents = p.revents as u16;
        }
        let fired = |range: &[libc::pollfd]| range.iter().any(|p| p.revents != 0);
        let aio_fired = fired(&pollfds[aio_first..iohandler_first]);
        let iohandler_fired = fired(&pollfds[iohandler_first..]);
        let aio_pending = aio.external_check(aio_fired);
        let iohandler_pending = iohandler.external_check(iohandler_fired);
        let n_glib = buffers.glib.len() as libc::c_int;
        // SAFETY: as for prepare; the array is the one query filled, with the revents of the poll.
        let glib_dispatch = unsafe {
            ffi::g_main_context_check(gcontext, max_priority, buffers.glib.as_mut_ptr(), n_glib)
        } != ffi::GFALSE;
        // Before any callback runs: a nested iteration finds the buffers here and reuses them.
        *self.buffers.borrow_mut() = buffers;

        if glib_dispatch {
            // SAFETY: as for prepare.
            unsafe { ffi::g_main_context_dispatch(gcontext) };
        }
        let mut progress = glib_dispatch;
        if aio_pending {
            progress |= aio.external_dispatch(aio_fired);
        }
        if iohandler_pending {
            progress |= iohandler.external_dispatch(iohandler_fired);
        }
        progress
    }
}

/// `g_main_context_query` into `fds`, grown until glib's fds fit. Returns glib's timeout in ms.
fn query(gcontext: *mut ffi::GMainContext, max_priority: i32, fds: &mut Vec<ffi::GPollFD>) -> i32 {
    let mut timeout_ms = -1;
    if fds.len() < 8 {
        fds.resize(8, NO_FD);
    }
    loop {
        let room = fds.len();
        // SAFETY: the caller owns `gcontext`; `fds` has `room` writable entries.
        let needed = unsafe {
            ffi::g_main_context_query(
                gcontext,
                max_priority,
                &mut timeout_ms,
                fds.as_mut_ptr(),
                room as libc::c_int,
            )
        };
        let needed = usize::try_from(needed).unwrap_or(0);
        if needed <= room {
            fds.truncate(needed);
            return timeout_ms;
        }
        fds.resize(needed, NO_FD);
    }
}

/// `ppoll` with a ns timeout (-1: none). A signal or an error leaves every `revents` at 0: the
/// iteration then dispatches only what the contexts and glib find ready without fds.
fn ppoll(fds: &mut [libc::pollfd], timeout_ns: i64) {
    let ts = sys::timespec_from_ns(timeout_ns.max(0));
    let ts_ptr = if timeout_ns < 0 {
        ptr::null()
    } else {
        &ts as *const libc::timespec
    };
    // SAFETY: `fds` is a live array of pollfd that ppoll may write revents into; the timespec (if
    // any) lives on our stack for the call; no signal mask is passed.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            ts_ptr,
            ptr::null(),
        )
    };
    if n < 0 {
        for p in fds.iter_mut() {
            p.revents = 0;
        }
    }
}
