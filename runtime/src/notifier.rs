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

    /// Takes over an eventfd made elsewhere: one another process sent over a Unix socket, such as a
    /// vhost-user front end's kick and call fds, or an ioeventfd/irqfd a VMM registered with KVM. The
    /// descriptor is made non-blocking and close-on-exec (the file status flags are shared with every
    /// other holder of the same open file, which an eventfd used as a notifier expects).
    ///
    /// Fails with `InvalidInput` when `fd` is not an eventfd: a notifier over a pipe, a socket or a
    /// regular file would misread its data as counts, and a peer that sends one is buggy or hostile.
    ///
    /// ```
    /// use std::os::fd::OwnedFd;
    ///
    /// let n = aioctx::EventNotifier::new()?;
    /// let fd: OwnedFd = n.as_fd_owned()?; // another handle to the same eventfd, as a peer would send
    /// let adopted = aioctx::EventNotifier::from_eventfd(fd)?;
    /// adopted.set()?;
    /// assert!(n.test_and_clear()?, "both notifiers are the same eventfd");
    ///
    /// let not_an_eventfd: OwnedFd = std::fs::File::open("/dev/null")?.into();
    /// let err = aioctx::EventNotifier::from_eventfd(not_an_eventfd).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_eventfd(fd: OwnedFd) -> io::Result<Self> {
        // An eventfd is an anonymous inode; /proc names its kind, which nothing in fstat does.
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| sys::with_context(e, "checking the kind of an fd for an EventNotifier"))?;
        if link.as_os_str() != "anon_inode:[eventfd]" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an EventNotifier needs an eventfd, not {}", link.display()),
            ));
        }
        // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL/F_SETFD take and return ints.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        let flags = sys::check(flags, || "reading an eventfd's status flags".into())?;
        // SAFETY: as above.
        let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
        sys::check(ret, || "making an eventfd non-blocking".into())?;
        // SAFETY: as above.
        let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        sys::check(ret, || "making an eventfd close-on-exec".into())?;
        Ok(Self { fd: Arc::new(fd) })
    }

    /// A new descriptor for the same eventfd (`dup`), to hand to another process or to a VMM's
    /// ioeventfd/irqfd registration. It shares the counter with this notifier.
    ///
    /// ```
    /// let n = aioctx::EventNotifier::new()?;
    /// let fd = n.as_fd_owned()?;
    /// let one = 1u64.to_ne_bytes();
    /// std::io::Write::write_all(&mut std::fs::File::from(fd), &one)?;
    /// assert!(n.test_and_clear()?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn as_fd_owned(&self) -> io::Result<OwnedFd> {
        self.fd
            .try_clone()
            .map_err(|e| sys::with_context(e, "duplicating an EventNotifier's eventfd"))
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
