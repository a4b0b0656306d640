//! The context as a GSource (QEMU's `aio_get_g_source`): [`AioContext::g_source`], and the loop of an
//! IoThread in glib mode ([`run_gcontext`]).
//!
//! The source's prepare, check and dispatch are the context's outside-driven iteration
//! (`context/external.rs`). glib-rs has no safe way to write a source with its own functions, so the
//! source is built with `g_source_new` and a static `GSourceFuncs` table. It keeps only the context's
//! identity and home thread (plain integers, so it is as `Send` as glib-rs declares every `Source`);
//! the home thread finds the context's state in a thread-local registry. Called on any other thread
//! the functions do nothing (dispatch removes the source), and once the context is gone the registry
//! has no entry: the context's teardown destroys its source first.
//!
//! A panic in a callback dispatched through the source cannot unwind through glib's C frames: it
//! aborts the process, as a panic in any glib-rs callback does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::size_of;
use std::os::raw::c_int;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};

use glib::ffi;
use glib::translate::from_glib_full;

use crate::context::HomeState;
use crate::thread_id::thread_token;
use crate::AioContext;

/// glib's view of a context: the `GSource` glib initialises, then what the functions need to find
/// the context.
#[repr(C)]
struct AioSource {
    base: ffi::GSource,
    context_id: u64,
    home: u64,
}

/// The functions of every context's source. glib only reads the table.
static FUNCS: ffi::GSourceFuncs = ffi::GSourceFuncs {
    prepare: Some(prepare),
    check: Some(check),
    dispatch: Some(dispatch),
    finalize: None,
    closure_callback: None,
    closure_marshal: None,
};

/// An fd the source has handed to glib (`g_source_add_unix_fd`).
struct WatchedFd {
    fd: c_int,
    events: u32,
    tag: ffi::gpointer,
}

/// A context with a source, as its home thread's registry holds it.
struct Driven {
    home: Weak<HomeState>,
    /// The one source of this context (`g_source` returns it again), destroyed at teardown.
    source: glib::Source,
    fds: RefCell<Vec<WatchedFd>>,
}

thread_local! {
    /// The contexts of this thread that have a source, by context id.
    static DRIVEN: RefCell<HashMap<u64, Rc<Driven>>> = RefCell::new(HashMap::new());
}

impl AioContext {
    /// This context as a glib `GSource` (QEMU's `aio_get_g_source`), to attach to a
    /// [`glib::MainContext`] that its home thread iterates: glib's loop then runs the context's
    /// bottom halves, fd handlers, timers, user-SQE completions and tasks. Every call returns the same
    /// source; dropping the context destroys it (detaching it from its `MainContext`).
    ///
    /// This is the compatibility path, and it costs what QEMU's costs:
    /// - **millisecond timeouts**: glib's poll takes a timeout in ms, so the source rounds the nearest
    ///   timer up to the next millisecond (a 200 us timer fires after 1 ms or more). The
    ///   [`MainLoop`](crate::MainLoop) keeps nanoseconds.
    /// - **no busy-polling**: glib sleeps in the kernel at once, so poll functions are not spun and
    ///   every cross-thread wake while glib sleeps is an eventfd write.
    /// - **one fd**: glib watches one fd for the whole context (the epoll fd, or the io_uring ring fd,
    ///   with queued SQEs submitted in prepare and completions reaped in dispatch, as QEMU 10.2 does);
    ///   the poll backend hands glib every fd it watches. An iteration that finds the fd ready then
    ///   pays one more syscall to collect the events. A context whose io_uring ring defers task
    ///   running swaps it for a plain ring at the first prepare, once no user SQE is in flight; until
    ///   then glib's waits are bounded to 1 ms.
    ///
    /// The source does work only on the context's home thread: attached to a `MainContext` iterated
    /// anywhere else it removes itself at its first dispatch. Drive a context from one place at a
    /// time (its own nested [`poll`](AioContext::poll) inside a callback is fine). A panic in a
    /// callback dispatched through glib aborts the process (it cannot unwind through C).
    ///
    /// ```
    /// use std::{cell::Cell, rc::Rc, time::Duration};
    /// use aioctx::glib;
    ///
    /// let ctx = aioctx::AioContext::new()?;
    /// let gctx = glib::MainContext::new();
    /// ctx.g_source().attach(Some(&gctx));
    ///
    /// let done = Rc::new(Cell::new(false));
    /// ctx.spawn_local({
    ///     let done = done.clone();
    ///     async move {
    ///         aioctx::time::sleep(Duration::from_micros(200)).await;
    ///         done.set(true);
    ///     }
    /// });
    /// while !done.get() {
    ///     gctx.iteration(true); // glib's loop runs the task and its timer
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn g_source(&self) -> glib::Source {
        let home = self.home();
        let id = home.id();
        if let Some(driven) = DRIVEN.with(|d| d.borrow().get(&id).cloned()) {
            return driven.source.clone();
        }
        let size = size_of::<AioSource>() as u32;
        // SAFETY: FUNCS lives forever and glib never writes through the pointer; `size` covers
        // AioSource, whose first field is the GSource that g_source_new initialises.
        let raw = unsafe { ffi::g_source_new(std::ptr::addr_of!(FUNCS).cast_mut(), size) };
        let source_fields = raw.cast::<AioSource>();
        // SAFETY: `raw` is a fresh, exclusively owned allocation of `size` bytes; the two fields
        // after the GSource are plain integers written before glib or anyone else reads them.
        unsafe {
            std::ptr::addr_of_mut!((*source_fields).context_id).write(id);
            std::ptr::addr_of_mut!((*source_fields).home).write(thread_token());
            // QEMU's context source may recurse: a callback may iterate glib nested.
            ffi::g_source_set_can_recurse(raw, ffi::GTRUE);
            ffi::g_source_set_name(raw, c"aio-context".as_ptr());
        }
        // SAFETY: g_source_new returned a new reference, which the Source takes over.
        let source: glib::Source = unsafe { from_glib_full(raw) };
        let driven = Rc::new(Driven {
            home: Rc::downgrade(home),
            source: source.clone(),
            fds: RefCell::new(Vec::new()),
        });
        DRIVEN.with(|d| d.borrow_mut().insert(id, driven));
        home.on_teardown(Box::new(move || {
            let driven = DRIVEN
                .try_with(|d| d.borrow_mut().remove(&id))
                .ok()
                .flatten();
            if let Some(driven) = driven {
                // Detaches from the MainContext (and its fds) before the monitor's fd closes.
                driven.source.destroy();
            }
        }));
        source
    }
}

/// Runs `f` with the registry entry and live state of the context behind `raw`, on its home thread
/// only.
///
/// # Safety
///
/// `raw` must be a source created by [`AioContext::g_source`] (glib passes our functions only those).
unsafe fn with_driven<R>(
    raw: *mut ffi::GSource,
    f: impl FnOnce(&Driven, &Rc<HomeState>) -> R,
) -> Option<R> {
    let fields = raw.cast::<AioSource>();
    // SAFETY: by the contract, `raw` is an AioSource; its two integers are never written after
    // creation, so reading them from any thread is fine.
    let (id, home_thread) = unsafe { ((*fields).context_id, (*fields).home) };
    if thread_token() != home_thread {
        return None;
    }
    let driven = DRIVEN
        .try_with(|d| d.borrow().get(&id).cloned())
        .ok()
        .flatten()?;
    let home = driven.home.upgrade()?;
    if home.shared().is_closed() {
        return None;
    }
    Some(f(&driven, &home))
}

/// The context's timeout in ns as glib's, in ms rounded up (-1: none).
fn ns_to_ms_rounded_up(ns: i64) -> c_int {
    if ns < 0 {
        -1
    } else {
        let ms = ns.saturating_add(999_999) / 1_000_000;
        c_int::try_from(ms).unwrap_or(c_int::MAX)
    }
}

/// Hands glib the fds the context's monitor wants watched now, adding, changing and removing unix
/// fds of the source to match (one fd for epoll and io_uring, every fd for poll).
fn sync_fds(raw: *mut ffi::GSource, driven: &Driven, home: &HomeState) {
    let mut wanted = Vec::new();
    home.external_fds(&mut wanted);
    let mut fds = driven.fds.borrow_mut();
    let unchanged = fds.len() == wanted.len()
        && fds
            .iter()
            .zip(&wanted)
            .all(|(have, want)| have.fd == want.fd && have.events == want.events as u16 as u32);
    if unchanged {
        return;
    }
    let mut want: HashMap<c_int, u32> = wanted
        .iter()
        .map(|p| (p.fd, p.events as u16 as u32))
        .collect();
    fds.retain_mut(|have| match want.remove(&have.fd) {
        Some(events) => {
            if events != have.events {
                // SAFETY: `raw` is our live source and `tag` came from g_source_add_unix_fd on it.
                // The poll(2) bits of POLLIN/POLLOUT/POLLERR/POLLHUP are glib's GIOCondition bits.
                unsafe { ffi::g_source_modify_unix_fd(raw, have.tag, events) };
                have.events = events;
            }
            true
        }
        None => {
            // SAFETY: as above; the tag is dropped from our list with the call.
            unsafe { ffi::g_source_remove_unix_fd(raw, have.tag) };
            false
        }
    });
    for p in &wanted {
        let Some(events) = want.remove(&p.fd) else {
            continue;
        };
        // SAFETY: `raw` is our live source; glib only polls the fd, which stays open until the next
        // prepare removes it (the monitor closes fds only in a dispatch or at teardown, which
        // destroys the source first).
        let tag = unsafe { ffi::g_source_add_unix_fd(raw, p.fd, events) };
        fds.push(WatchedFd {
            fd: p.fd,
            events,
            tag,
        });
    }
}

/// Whether any of the source's fds polled ready. Only from check or dispatch (glib's rule).
fn fds_fired(raw: *mut ffi::GSource, driven: &Driven) -> bool {
    driven.fds.borrow().iter().any(|w| {
        // SAFETY: `raw` is our live source and the tag belongs to it.
        unsafe { ffi::g_source_query_unix_fd(raw, w.tag) != 0 }
    })
}

unsafe extern "C" fn prepare(raw: *mut ffi::GSource, timeout: *mut c_int) -> ffi::gboolean {
    // SAFETY: glib calls our functions only with sources made from FUNCS.
    let ns = unsafe {
        with_driven(raw, |driven, home| {
            let ns = home.external_prepare();
            sync_fds(raw, driven, home);
            if ns != 0 {
                home.external_will_block();
            }
            ns
        })
    }
    .unwrap_or(-1);
    // SAFETY: glib passes a valid pointer for the timeout.
    unsafe { *timeout = ns_to_ms_rounded_up(ns) };
    ffi::gboolean::from(ns == 0)
}

unsafe extern "C" fn check(raw: *mut ffi::GSource) -> ffi::gboolean {
    // SAFETY: as in `prepare`.
    let ready = unsafe {
        with_driven(raw, |driven, home| {
            home.external_check(fds_fired(raw, driven))
        })
    };
    ffi::gboolean::from(ready.unwrap_or(false))
}

unsafe extern "C" fn dispatch(
    raw: *mut ffi::GSource,
    _callback: ffi::GSourceFunc,
    _user_data: ffi::gpointer,
) -> ffi::gboolean {
    // SAFETY: as in `prepare`.
    let alive = unsafe {
        with_driven(raw, |driven, home| {
            home.external_dispatch(fds_fired(raw, driven));
        })
    };
    // Elsewhere than on the home thread, or with the context gone: remove the source.
    if alive.is_some() {
        ffi::G_SOURCE_CONTINUE
    } else {
        ffi::G_SOURCE_REMOVE
    }
}

/// QEMU's `run_gcontext` half of `iothread_run`: attaches `ctx`'s source to `gcontext`, makes it the
/// thread's default context and iterates it until `running` is cleared, with `ctx` current all along
/// (so glib's callbacks find it, as they find the main loop's aio context). Returns false (having
/// run nothing) if another thread owns `gcontext`.
pub(crate) fn run_gcontext(
    ctx: &AioContext,
    gcontext: &glib::MainContext,
    running: &AtomicBool,
) -> bool {
    let source = ctx.g_source();
    let attached = source.context();
    if attached.is_none() {
        source.attach(Some(gcontext));
    }
    let _current = ctx.enter();
    gcontext
        .with_thread_default(|| {
            // Acquire pairs with the Release store of the IoThread's stop.
            while running.load(Ordering::Acquire) {
                gcontext.iteration(true);
            }
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::ns_to_ms_rounded_up;

    #[test]
    fn timeouts_round_up_to_milliseconds() {
        assert_eq!(ns_to_ms_rounded_up(-1), -1);
        assert_eq!(ns_to_ms_rounded_up(0), 0);
        assert_eq!(ns_to_ms_rounded_up(1), 1);
        assert_eq!(ns_to_ms_rounded_up(200_000), 1);
        assert_eq!(ns_to_ms_rounded_up(1_000_000), 1);
        assert_eq!(ns_to_ms_rounded_up(1_000_001), 2);
        assert_eq!(ns_to_ms_rounded_up(i64::MAX), c_int::MAX);
    }

    use std::os::raw::c_int;
}
