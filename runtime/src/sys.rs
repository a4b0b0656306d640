//! Thin syscall helpers shared by the loop's modules.

use std::fmt;
use std::io;

/// An OS error with a sentence saying what aioctx was doing when it happened.
///
/// The [`io::ErrorKind`] of the original error is kept, and [`std::error::Error::source`] gives the raw
/// OS error, so callers can still match on `EMFILE`, `EBADF` and so on.
#[derive(Debug)]
struct Context {
    what: String,
    source: io::Error,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Wraps `source` with what aioctx was doing.
pub(crate) fn with_context(source: io::Error, what: impl Into<String>) -> io::Error {
    io::Error::new(
        source.kind(),
        Context {
            what: what.into(),
            source,
        },
    )
}

/// The last OS error, wrapped with what aioctx was doing.
/// The error of an API that needs the current context, used where there is none (`what` names it).
pub(crate) fn outside_context(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        format!("{what} used outside an aioctx context"),
    )
}

pub(crate) fn last_error(what: impl Into<String>) -> io::Error {
    with_context(io::Error::last_os_error(), what)
}

/// Turns a `-1` return into the last OS error.
pub(crate) fn check(ret: libc::c_int, what: impl FnOnce() -> String) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(last_error(what()))
    } else {
        Ok(ret)
    }
}

/// Reads a clock in nanoseconds as a signed 64-bit value, QEMU's unit for every deadline.
pub(crate) fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes to it. The clocks we pass
    // (MONOTONIC, REALTIME) always exist on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// The monotonic clock in ns (QEMU's QEMU_CLOCK_REALTIME).
pub(crate) fn monotonic_ns() -> i64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Converts a non-negative ns timeout to a timespec.
pub(crate) fn timespec_from_ns(ns: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: ns / 1_000_000_000,
        tv_nsec: ns % 1_000_000_000,
    }
}

/// Sets this thread's timer slack to 1 ns, as QEMU does, so the kernel does not delay our timeouts by the
/// default 50 us. Best effort: a failure only costs precision.
pub(crate) fn set_thread_timer_slack_1ns() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer argument and touches only the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// Fails with `EBADF` and a clear message when `fd` is not an open file descriptor.
pub(crate) fn check_fd_open(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: F_GETFD only reads the descriptor table entry for `fd`; any integer is acceptable.
    let ret = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    check(ret, || format!("fd {fd} is not an open file descriptor")).map(drop)
}
