//! Readiness I/O: [`Async`] wraps a non-blocking fd and turns the context's fd handlers into futures;
//! [`NotifierWaiter`] waits for an [`EventNotifier`](crate::EventNotifier), optionally with a userspace
//! poll function the loop's polling phase calls.
//!
//! Readiness comes from the loop's level-triggered fd handlers. To avoid both a syscall per wait and a
//! loop that spins on an fd nobody serves, interest is kept armed while tasks use the fd and disarmed
//! lazily: only when the fd turns ready while no task waits for it. An echo loop that always has a read
//! pending therefore never changes its registration.
//!
//! `Async` is `!Send`: an fd registration belongs to one context. To run socket code on an IOThread,
//! spawn it there with [`Remote::spawn_local_with`](crate::Remote::spawn_local_with), which builds the future on
//! the IOThread.

mod notifier_wait;
pub(crate) mod ring_op;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

pub use notifier_wait::NotifierWaiter;

use crate::context::current;
use crate::{FdHandlers, FdRegistration};

#[derive(Default)]
struct Direction {
    waker: RefCell<Option<Waker>>,
    /// Ready since a task last found it not ready.
    ready: Cell<bool>,
    armed: Cell<bool>,
    /// The last syscall in this direction would have blocked, and the handler has not reported
    /// readiness since: polling the I/O again (a wake by something else, a `select!` sibling) waits
    /// without repeating the doomed syscall.
    blocked: Cell<bool>,
}

#[derive(Default)]
struct Source {
    read: Direction,
    write: Direction,
    registration: RefCell<Option<FdRegistration>>,
}

impl Source {
    fn direction(&self, read: bool) -> &Direction {
        if read {
            &self.read
        } else {
            &self.write
        }
    }

    /// The fd handler callback for one direction.
    fn on_ready(self: &Rc<Self>, read: bool) {
        let dir = self.direction(read);
        dir.ready.set(true);
        match dir.waker.take() {
            Some(waker) => waker.wake(),
            // Nobody waits: stop watching this direction until someone does.
            None => {
                dir.armed.set(false);
                self.apply_interest();
            }
        }
    }

    fn apply_interest(&self) {
        if let Some(reg) = self.registration.borrow().as_ref() {
            let _ = reg.set_interest(self.read.armed.get(), self.write.armed.get());
        }
    }

    fn poll_ready(&self, cx: &mut Context<'_>, read: bool) -> Poll<io::Result<()>> {
        let dir = self.direction(read);
        if dir.ready.replace(false) {
            return Poll::Ready(Ok(()));
        }
        match &mut *dir.waker.borrow_mut() {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        if !dir.armed.replace(true) {
            if let Some(reg) = self.registration.borrow().as_ref() {
                if let Err(e) = reg.set_interest(self.read.armed.get(), self.write.armed.get()) {
                    dir.armed.set(false);
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Pending
    }
}

/// A non-blocking I/O object registered with the current context: `readable().await`,
/// `writable().await`, `read_with`/`write_with`, and `futures::io::AsyncRead`/`AsyncWrite` where `T`
/// implements `Read`/`Write`.
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use futures::{AsyncReadExt, AsyncWriteExt};
/// use aioctx::io::Async;
///
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let (a, b) = UnixStream::pair()?;
///     let (mut a, mut b) = (Async::new(a)?, Async::new(b)?);
///     a.write_all(b"ping").await?;
///     let mut buf = [0; 4];
///     b.read_exact(&mut buf).await?;
///     assert_eq!(&buf, b"ping");
///     Ok::<_, std::io::Error>(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Async<T: AsRawFd> {
    source: Rc<Source>,
    io: Option<T>,
}

impl<T: AsRawFd + fmt::Debug> fmt::Debug for Async<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Async").field("io", &self.io).finish()
    }
}

impl<T: AsRawFd> Async<T> {
    /// Makes `io` non-blocking and registers it with the current context.
    ///
    /// Errors: no current context (`NotConnected`), a closed fd (`EBADF`), an fd already registered in
    /// this context (`AlreadyExists`), or one the forced epoll backend cannot watch (`EPERM`).
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use aioctx::io::Async;
    /// let (a, b) = UnixStream::pair()?;
    /// // The registration belongs to a context, so there must be one.
    /// assert_eq!(Async::new(a).unwrap_err().kind(), std::io::ErrorKind::NotConnected);
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let b = Async::new(b)?;
    ///     b.writable().await?;
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(io: T) -> io::Result<Async<T>> {
        let fd = io.as_raw_fd();
        set_nonblocking(fd)?;
        let source = Rc::new(Source::default());
        let handlers = FdHandlers::new()
            .read({
                let s = Rc::downgrade(&source);
                move || {
                    if let Some(s) = s.upgrade() {
                        s.on_ready(true)
                    }
                }
            })
            .write({
                let s = Rc::downgrade(&source);
                move || {
                    if let Some(s) = s.upgrade() {
                        s.on_ready(false)
                    }
                }
            });
        let registration = current::with_current(|home| {
            let token = home.add_handler(fd, handlers, false)?;
            let reg = FdRegistration::new(home, token, fd, None);
            // Nothing is watched until a task waits.
            reg.set_interest(false, false)?;
            Ok::<_, io::Error>(reg)
        })
        .unwrap_or_else(|| Err(crate::sys::outside_context("aioctx::io::Async::new")))?;
        *source.registration.borrow_mut() = Some(registration);
        Ok(Async {
            source,
            io: Some(io),
        })
    }

    /// The inner object.
    ///
    /// ```
    /// use std::io::Read;
    /// use std::os::unix::net::UnixStream;
    /// use aioctx::io::Async;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let (a, _b) = UnixStream::pair()?;
    ///     let a = Async::new(a)?;
    ///     // `new` made the socket non-blocking: a read with nothing to read fails instead of hanging.
    ///     let err = a.get_ref().read(&mut [0; 8]).unwrap_err();
    ///     assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn get_ref(&self) -> &T {
        self.io.as_ref().expect("present until into_inner")
    }

    /// The inner object, mutably. Do not replace its fd.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    /// use aioctx::io::Async;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let (a, b) = UnixStream::pair()?;
    ///     let (mut a, b) = (Async::new(a)?, Async::new(b)?);
    ///     a.get_mut().write_all(b"hi")?; // room in an empty socket buffer: no wait needed
    ///     let mut buf = [0; 2];
    ///     assert_eq!(b.read_with(|mut s| s.read(&mut buf)).await?, 2);
    ///     assert_eq!(&buf, b"hi");
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        self.io.as_mut().expect("present until into_inner")
    }

    /// Unregisters and returns the inner object (still non-blocking).
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use aioctx::io::Async;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let (a, _b) = UnixStream::pair()?;
    ///     let a: UnixStream = Async::new(a)?.into_inner();
    ///     // Unregistered, so the fd may be registered again.
    ///     let a = Async::new(a)?;
    ///     a.writable().await?;
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn into_inner(mut self) -> T {
        self.source.registration.borrow_mut().take();
        self.io.take().expect("present until into_inner")
    }

    /// Waits until the fd is readable (or hung up, or in error).
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    /// use aioctx::io::Async;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let (a, b) = UnixStream::pair()?;
    ///     let (a, b) = (Async::new(a)?, Async::new(b)?);
    ///     a.get_ref().write_all(b"x")?;
    ///     b.readable().await?;
    ///     let mut buf = [0; 1];
    ///     assert_eq!(b.get_ref().read(&mut buf)?, 1);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn readable(&self) -> io::Result<()> {
        poll_fn(|cx| self.source.poll_ready(cx, true)).await
    }

    /// Waits until the fd is writable.
    ///
    /// ```
    /// use std::io::Write;
    /// use std::os::unix::net::UnixStream;
    /// use aioctx::io::Async;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let (a, _b) = UnixStream::pair()?;
    ///     let a = Async::new(a)?;
    ///     a.writable().await?;
    ///     assert_eq!(a.get_ref().write(b"x")?, 1);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn writable(&self) -> io::Result<()> {
        poll_fn(|cx| self.source.poll_ready(cx, false)).await
    }

    /// Polls for readability.
    ///
    /// ```
    /// use std::future::poll_fn;
    /// use std::io::Write;
    /// use std::os::unix::net::UnixStream;
    /// use std::task::Poll;
    /// use aioctx::io::Async;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let (a, b) = UnixStream::pair()?;
    ///     let (a, b) = (Async::new(a)?, Async::new(b)?);
    ///     // Nothing sent yet: pending, with this task's waker kept for the loop to wake.
    ///     let before = poll_fn(|cx| Poll::Ready(b.poll_readable(cx))).await;
    ///     assert!(before.is_pending());
    ///     a.get_ref().write_all(b"x")?;
    ///     poll_fn(|cx| b.poll_readable(cx)).await?;
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.source.poll_ready(cx, true)
    }

    /// Polls for writability.
    ///
    /// ```
    /// use std::future::poll_fn;
    /// use std::io::Write;
    /// use std::os::unix::net::UnixStream;
    /// use aioctx::io::Async;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let (a, _b) = UnixStream::pair()?;
    ///     let a = Async::new(a)?;
    ///     poll_fn(|cx| a.poll_writable(cx)).await?;
    ///     assert_eq!(a.get_ref().write(b"x")?, 1);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.source.poll_ready(cx, false)
    }

    /// Runs `op` until it does not fail with `WouldBlock`, waiting for readability in between.
    ///
    /// `op` may run several times, so it should make one non-blocking attempt (one `read`, one
    /// `recv_from`): a loop inside it such as `read_exact` loses the bytes it already read when a later
    /// read in the same call fails with `WouldBlock`.
    ///
    /// ```
    /// use std::net::UdpSocket;
    /// use aioctx::io::Async;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let rx = Async::new(UdpSocket::bind("127.0.0.1:0")?)?;
    ///     let tx = UdpSocket::bind("127.0.0.1:0")?;
    ///     tx.send_to(b"ping", rx.get_ref().local_addr()?)?;
    ///     let mut buf = [0; 16];
    ///     let (n, from) = rx.read_with(|s| s.recv_from(&mut buf)).await?;
    ///     assert_eq!(&buf[..n], b"ping");
    ///     assert_eq!(from, tx.local_addr()?);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn read_with<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        loop {
            match op(self.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable().await?,
                other => return other,
            }
        }
    }

    /// Like [`read_with`](Self::read_with) with mutable access.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    /// use aioctx::io::Async;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let (a, b) = UnixStream::pair()?;
    ///     let mut b = Async::new(b)?;
    ///     let writer = std::thread::spawn(move || (&a).write_all(b"late"));
    ///     let mut buf = [0; 4];
    ///     let n = b.read_with_mut(|s| s.read(&mut buf)).await?;
    ///     assert_eq!(&buf[..n], b"late");
    ///     writer.join().expect("the writer thread ran")?;
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn read_with_mut<R>(
        &mut self,
        mut op: impl FnMut(&mut T) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            match op(self.get_mut()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable().await?,
                other => return other,
            }
        }
    }

    /// Runs `op` until it does not fail with `WouldBlock`, waiting for writability in between.
    ///
    /// ```
    /// use std::net::UdpSocket;
    /// use aioctx::io::Async;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let tx = Async::new(UdpSocket::bind("127.0.0.1:0")?)?;
    ///     let rx = Async::new(UdpSocket::bind("127.0.0.1:0")?)?;
    ///     let to = rx.get_ref().local_addr()?;
    ///     assert_eq!(tx.write_with(|s| s.send_to(b"pong", to)).await?, 4);
    ///     let mut buf = [0; 16];
    ///     let n = rx.read_with(|s| s.recv(&mut buf)).await?;
    ///     assert_eq!(&buf[..n], b"pong");
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn write_with<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        loop {
            match op(self.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                other => return other,
            }
        }
    }

    /// Like [`write_with`](Self::write_with) with mutable access.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    /// use aioctx::io::Async;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let (a, b) = UnixStream::pair()?;
    ///     let mut a = Async::new(a)?;
    ///     assert_eq!(a.write_with_mut(|s| s.write(b"hi")).await?, 2);
    ///     let mut buf = [0; 2];
    ///     (&b).read_exact(&mut buf)?;
    ///     assert_eq!(&buf, b"hi");
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn write_with_mut<R>(
        &mut self,
        mut op: impl FnMut(&mut T) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            match op(self.get_mut()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                other => return other,
            }
        }
    }

    /// Runs `op` on `self`'s I/O object in direction `read` (see [`poll_io`]).
    fn poll_io_mut<R>(
        &mut self,
        cx: &mut Context<'_>,
        read: bool,
        mut op: impl FnMut(&mut T) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        let Async { source, io } = self;
        poll_io(source, cx, read, || {
            op(io.as_mut().expect("present until into_inner"))
        })
    }
}

/// Runs a non-blocking I/O attempt `op` in direction `read`, waiting for readiness when it would block.
fn poll_io<R>(
    source: &Source,
    cx: &mut Context<'_>,
    read: bool,
    mut op: impl FnMut() -> io::Result<R>,
) -> Poll<io::Result<R>> {
    let dir = source.direction(read);
    loop {
        // Interest stays armed while blocked (a waker is registered), so the level-triggered
        // handler reports the fd as soon as it is ready: skipping the syscall loses nothing.
        if dir.blocked.get() {
            match source.poll_ready(cx, read) {
                Poll::Ready(Ok(())) => dir.blocked.set(false),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dir.blocked.set(true),
            other => {
                // This op consumed the readiness the handler reported: forget it, or the next
                // op's WouldBlock would take the stale flag for fresh readiness and retry the
                // syscall once more before waiting.
                if other.is_ok() {
                    dir.ready.set(false);
                }
                return Poll::Ready(other);
            }
        }
    }
}

impl<T: AsRawFd> Drop for Async<T> {
    fn drop(&mut self) {
        // Unregister before the fd closes (the io field drops after this).
        self.source.registration.borrow_mut().take();
    }
}

impl<T: AsRawFd> AsRawFd for Async<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.get_ref().as_raw_fd()
    }
}

impl<T: AsRawFd + AsFd> AsFd for Async<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.get_ref().as_fd()
    }
}

impl<T: AsRawFd + Read + Unpin> futures::io::AsyncRead for Async<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io_mut(cx, true, |io| io.read(buf))
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_io_mut(cx, true, |io| io.read_vectored(bufs))
    }
}

impl<T: AsRawFd + Write + Unpin> futures::io::AsyncWrite for Async<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io_mut(cx, false, |io| io.write(buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_io_mut(cx, false, |io| io.write_vectored(bufs))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_io_mut(cx, false, |io| io.flush())
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// Reads through a shared reference, as `std` allows for sockets (`&TcpStream: Read`): one task may
/// read while another writes the same `Async`, with no lock. (Two readers at once would take turns
/// waking each other: the read direction keeps one waker.)
///
/// ```
/// use futures::{AsyncReadExt, AsyncWriteExt};
/// use aioctx::io::Async;
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let (a, b) = std::os::unix::net::UnixStream::pair()?;
///     let (a, b) = (Async::new(a)?, Async::new(b)?);
///     let (mut reader, mut writer) = (&b, &b);
///     (&a).write_all(b"ping").await?;
///     let mut buf = [0; 4];
///     reader.read_exact(&mut buf).await?;
///     writer.write_all(b"pong").await?;
///     (&a).read_exact(&mut buf).await?;
///     assert_eq!(&buf, b"pong");
///     Ok::<_, std::io::Error>(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
impl<T: AsRawFd> futures::io::AsyncRead for &Async<T>
where
    for<'a> &'a T: Read,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this: &Async<T> = *self;
        poll_io(&this.source, cx, true, || this.get_ref().read(buf))
    }

    fn poll_read_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        let this: &Async<T> = *self;
        poll_io(&this.source, cx, true, || {
            this.get_ref().read_vectored(bufs)
        })
    }
}

/// Writes through a shared reference (see the `AsyncRead` impl for `&Async<T>`).
///
/// ```
/// use futures::{AsyncReadExt, AsyncWriteExt};
/// use aioctx::io::Async;
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let (a, b) = std::os::unix::net::UnixStream::pair()?;
///     let (a, b) = (Async::new(a)?, Async::new(b)?);
///     (&a).write_all(b"shared").await?;
///     (&a).flush().await?;
///     let mut buf = [0; 6];
///     (&b).read_exact(&mut buf).await?;
///     assert_eq!(&buf, b"shared");
///     Ok::<_, std::io::Error>(())
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
impl<T: AsRawFd> futures::io::AsyncWrite for &Async<T>
where
    for<'a> &'a T: Write,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this: &Async<T> = *self;
        poll_io(&this.source, cx, false, || this.get_ref().write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this: &Async<T> = *self;
        poll_io(&this.source, cx, false, || {
            this.get_ref().write_vectored(bufs)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this: &Async<T> = *self;
        poll_io(&this.source, cx, false, || this.get_ref().flush())
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL only read and write the descriptor's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    crate::sys::check(flags, || format!("fd {fd} is not an open file descriptor"))?;
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        let ret = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
        crate::sys::check(ret, || format!("making fd {fd} non-blocking"))?;
    }
    Ok(())
}
