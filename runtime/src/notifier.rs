//! [`EventNotifier`]: an eventfd, QEMU's `EventNotifier`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::sys;

/// A level-triggered wakeup flag backed by a non-blocking, close-on-exec eventfd.
///
/// Any thread may [`set`](EventNotifier::set) it; the context that watches it (see
/// [`AioContext::set_event_notifier`](crate::AioContext::set_event_notifier)) clears it with
/// [`test_and_clear`](EventNotifier::test_and_clear). Clones share the same eventfd, so a notifier can be
/// handed to a vCPU thread (an ioeventfd) or to an interrupt path (an irqfd) while the context keeps its own
/// clone; the fd closes when the last clone is dropped.
///
/// ```
/// let n = aioctx::EventNotifier::new()?;
/// assert!(!n.test_and_clear()?);
/// n.set()?;
/// n.set()?; // setting twice is the same as once
/// assert!(n.test_and_clear()?);
/// assert!(!n.test_and_clear()?);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct EventNotifier {
    fd: Arc<OwnedFd>,
}

impl EventNotifier {
    /// Creates a cleared notifier.
    ///
    /// Fails when the process or system is out of file descriptors (`EMFILE`, `ENFILE`).
    ///
    /// ```
    /// let n = aioctx::EventNotifier::new()?;
    /// assert!(!n.test_and_clear()?, "created cleared");
    /// let clone = n.clone();
    /// clone.set()?;
    /// assert!(n.test_and_clear()?, "clones share one eventfd");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; it returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        let fd = sys::check(fd, || "creating an eventfd for an EventNotifier".into())?;
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd: Arc::new(fd) })
    }

    /// Sets the notifier, waking whoever watches it. Setting an already-set notifier changes nothing
    /// a watcher can tell: the eventfd counter grows, but [`test_and_clear`](Self::test_and_clear)
    /// reads it whole, so any number of sets before it count as one.
    ///
    /// ```
    /// let n = aioctx::EventNotifier::new()?;
    /// let vcpu = n.clone();
    /// std::thread::spawn(move || vcpu.set()).join().expect("the setter thread ran")?;
    /// assert!(n.test_and_clear()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        let ret = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if ret == 8 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            // The counter is saturated: the notifier is set already.
            io::ErrorKind::WouldBlock => Ok(()),
            _ => Err(sys::with_context(err, "setting an EventNotifier")),
        }
    }

    /// Clears the notifier and tells whether it was set.
    ///
    /// ```
    /// let n = aioctx::EventNotifier::new()?;
    /// assert!(!n.test_and_clear()?);
    /// n.set()?;
    /// assert!(n.test_and_clear()?);
    /// assert!(!n.test_and_clear()?, "the first call cleared it");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn test_and_clear(&self) -> io::Result<bool> {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from our own eventfd.
        let ret = unsafe { libc::read(self.fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
        if ret == 8 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => Ok(false),
            _ => Err(sys::with_context(err, "clearing an EventNotifier")),
        }
    }
}

impl AsRawFd for EventNotifier {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for EventNotifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
