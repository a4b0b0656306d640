//! [`File`] and [`OpenOptions`].

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use super::open::{resolve_engine, OpenOptions};
use super::req::{run_blocking, IoVecs, Req};
use super::{IoBuf, IoBufMut};
use crate::io::ring_op::{cqe_result, Op};

mod raw;

/// The `O_DIRECT` alignment checked before submission.
const DIRECT_ALIGN: u64 = 512;
/// The largest single transfer (the SQE length is 32 bits); longer requests are done in pieces.
const MAX_RW: usize = 1 << 30;

/// The direction of a contiguous transfer (see `File::transfer`).
#[derive(Clone, Copy)]
enum Transfer {
    Read,
    Write { fua: bool },
}

/// Which machinery runs a [`File`]'s operations.
///
/// ```
/// use aioctx::fs::{File, IoEngine};
/// # let path = std::env::temp_dir().join(format!("aioctx-doc-engine-{}", std::process::id()));
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     // Auto is resolved when the file is opened.
///     assert_ne!(File::create(&path).await?.engine(), IoEngine::Auto);
///     let pooled = File::options().read(true).engine(IoEngine::ThreadPool).open(&path).await?;
///     assert_eq!(pooled.engine(), IoEngine::ThreadPool);
///     Ok::<_, std::io::Error>(())
/// })?;
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoEngine {
    /// io_uring if the kernel allows it (the context's own ring, or its user-SQE ring on epoll/poll), else
    /// the thread pool. Resolved when the file is opened.
    #[default]
    Auto,
    /// SQEs on the context's ring.
    IoUring,
    /// `pread`/`pwrite` on the context's blocking thread pool.
    ThreadPool,
}

/// A file for block I/O on the current context's ring. See the [module docs](super) for the engines and
/// the buffer-lifetime rules. `Send + Sync`: a block driver may share it between tasks and IOThreads;
/// each operation runs on the context of the task that awaits it.
///
/// ```
/// use std::sync::Arc;
/// use aioctx::fs::File;
/// # let path = std::env::temp_dir().join(format!("aioctx-doc-file-{}", std::process::id()));
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let file = Arc::new(File::create(&path).await?);
///     let shared = Arc::clone(&file);
///     let tail = aioctx::spawn(async move { shared.write_all_at(b"world".to_vec(), 6).await.0 });
///     file.write_all_at(b"hello ".to_vec(), 0).await.0?;
///     tail.await.expect("the writer task ran")?;
///     let (res, buf) = file.read_at(Vec::with_capacity(16), 0).await;
///     assert_eq!(res?, 11);
///     assert_eq!(buf, b"hello world");
///     Ok::<_, std::io::Error>(())
/// })?;
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct File {
    pub(super) fd: Arc<OwnedFd>,
    pub(super) direct: bool,
    pub(super) engine: IoEngine,
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("fd", &self.fd.as_raw_fd())
            .field("direct", &self.direct)
            .field("engine", &self.engine())
            .finish()
    }
}

impl File {
    /// Options to open a file with.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-options-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::options().write(true).create(true).open(&path).await?;
    ///     assert!(f.is_empty()?);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn options() -> OpenOptions {
        OpenOptions::new()
    }

    /// Opens an existing file read-only.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-open-{}", std::process::id()));
    /// # std::fs::write(&path, b"boot sector")?;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::open(&path).await?;
    ///     let (res, buf) = f.read_at(Vec::with_capacity(4), 0).await;
    ///     assert_eq!(res?, 4);
    ///     assert_eq!(buf, b"boot");
    ///     let (res, _buf) = f.write_at(b"x".to_vec(), 0).await;
    ///     assert!(res.is_err(), "opened read-only");
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn open(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new().read(true).open(path).await
    }

    /// Creates (or truncates) a file for reading and writing.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-create-{}", std::process::id()));
    /// # std::fs::write(&path, b"old contents")?;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     assert_eq!(f.len()?, 0);
    ///     f.write_all_at(b"new".to_vec(), 0).await.0?;
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// assert_eq!(std::fs::read(&path)?, b"new");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn create(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .await
    }

    /// Wraps an open `std::fs::File` (for the `Auto` engine, resolved on the current context).
    ///
    /// ```
    /// use aioctx::fs::File;
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-from-std-{}", std::process::id()));
    /// let std_file = std::fs::File::create(&path)?;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = File::from_std(std_file)?;
    ///     let (res, _buf) = f.write_at(b"adopted".to_vec(), 0).await;
    ///     assert_eq!(res?, 7);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// // The engine is resolved on a context, so there must be one.
    /// let err = File::from_std(std::fs::File::open(&path)?).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_std(file: std::fs::File) -> io::Result<File> {
        // SAFETY: F_GETFL only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        let engine = resolve_engine(IoEngine::Auto)?;
        Ok(File {
            fd: Arc::new(OwnedFd::from(file)),
            direct: flags >= 0 && flags & libc::O_DIRECT != 0,
            engine,
        })
    }

    /// The engine running this file's operations (never `Auto` once opened).
    ///
    /// ```
    /// use aioctx::fs::{File, IoEngine};
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-file-engine-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = File::options()
    ///         .write(true)
    ///         .create(true)
    ///         .engine(IoEngine::ThreadPool)
    ///         .open(&path)
    ///         .await?;
    ///     assert_eq!(f.engine(), IoEngine::ThreadPool);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn engine(&self) -> IoEngine {
        self.engine
    }

    /// The file size in bytes.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-len-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     f.write_all_at(vec![1; 4096], 512).await.0?;
    ///     assert_eq!(f.len()?, 512 + 4096);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn len(&self) -> io::Result<u64> {
        // SAFETY: `stat` is plain old data, for which all-zero bytes are a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into a live, zeroed stat struct.
        let ret = unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) };
        crate::sys::check(ret, || "fstat".into())?;
        Ok(st.st_size as u64)
    }

    /// Whether the file is empty.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-is-empty-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     assert!(f.is_empty()?);
    ///     f.set_len(512).await?;
    ///     assert!(!f.is_empty()?);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Truncates or extends the file to `size` bytes.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-set-len-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     f.set_len(1 << 20).await?;
    ///     assert_eq!(f.len()?, 1 << 20);
    ///     // Extending leaves a hole that reads as zeroes.
    ///     let (res, buf) = f.read_exact_at(vec![0xff; 4096], 4096).await;
    ///     res?;
    ///     assert!(buf.iter().all(|&b| b == 0));
    ///     f.set_len(10).await?;
    ///     assert_eq!(f.len()?, 10);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn set_len(&self, size: u64) -> io::Result<()> {
        let size = i64::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size beyond i64::MAX"))?;
        // SAFETY: ftruncate takes no pointers.
        let ret = unsafe { libc::ftruncate(self.fd.as_raw_fd(), size) };
        crate::sys::check(ret, || format!("ftruncate to {size}")).map(drop)
    }

    fn check_direct(&self, addr: usize, len: usize, off: u64) -> io::Result<()> {
        if self.direct
            && (addr as u64 % DIRECT_ALIGN != 0
                || len as u64 % DIRECT_ALIGN != 0
                || off % DIRECT_ALIGN != 0)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "O_DIRECT needs the buffer address, length and offset aligned to {DIRECT_ALIGN} \
                     bytes (address {addr:#x}, length {len}, offset {off}); use fs::AlignedBuf"
                ),
            ));
        }
        Ok(())
    }

    /// Runs one operation on the file's engine (on the ring, resubmitted as
    /// [`Op::submit_until_done`] says). `keep` holds whatever
    /// memory the operation points to; it comes back with the result.
    pub(in crate::fs) async fn run<K: Send + 'static>(
        &self,
        req: Req,
        keep: K,
    ) -> (io::Result<usize>, K) {
        let keep = (Arc::clone(&self.fd), keep);
        let (res, (_, keep)) = match self.engine() {
            IoEngine::ThreadPool => run_blocking(req, keep).await,
            _ => {
                let fd = keep.0.as_raw_fd();
                // SAFETY: every address in `req` points into `keep` (its heap buffers) or into memory
                // the caller of a `_raw` method promised to keep alive; the fd is kept open by the
                // Arc inside `keep`.
                let (res, keep) =
                    unsafe { Op::submit_until_done(keep, move |_| req.sqe(fd), |_| {}) }.await;
                (res.and_then(cqe_result), keep)
            }
        };
        (res, keep)
    }

    /// Reads into `buf` (up to its capacity) from `offset`. Returns how many bytes were read (fewer at end
    /// of file, 0 at or past it) and the buffer, whose initialised length is set accordingly.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-read-at-{}", std::process::id()));
    /// # std::fs::write(&path, b"0123456789")?;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::open(&path).await?;
    ///     let (res, buf) = f.read_at(Vec::with_capacity(4), 3).await;
    ///     assert_eq!(res?, 4);
    ///     assert_eq!(buf, b"3456");
    ///     let (res, buf) = f.read_at(Vec::with_capacity(4), 8).await;
    ///     assert_eq!(res?, 2);
    ///     assert_eq!(buf, b"89");
    ///     let (res, _buf) = f.read_at(Vec::with_capacity(4), 10).await;
    ///     assert_eq!(res?, 0);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn read_at<B: IoBufMut>(&self, mut buf: B, offset: u64) -> (io::Result<usize>, B) {
        let at = (buf.stable_mut_ptr() as usize, buf.bytes_total(), offset);
        let (res, mut buf) = self.transfer(Transfer::Read, at, buf).await;
        if let Ok(n) = res {
            // SAFETY: the kernel wrote n bytes at the start of the buffer.
            unsafe { buf.set_init(n) };
        }
        (res, buf)
    }

    /// Repeats `req_at(addr, len, off)` over `total` bytes from `base` until all are transferred,
    /// continuing short transfers. Returns how many bytes were done, with the error that stopped it (a
    /// transfer of 0 bytes is reported as `on_zero`).
    async fn transfer_all<K: Send + 'static>(
        &self,
        (base, total, offset): (usize, usize, u64),
        req_at: impl Fn(usize, usize, u64) -> Req,
        on_zero: fn() -> io::Error,
        mut keep: K,
    ) -> (usize, io::Result<()>, K) {
        let mut done = 0;
        while done < total {
            let len = (total - done).min(MAX_RW);
            let (res, back) = self
                .run(req_at(base + done, len, offset + done as u64), keep)
                .await;
            keep = back;
            match res {
                Ok(0) => return (done, Err(on_zero()), keep),
                Ok(n) => done += n,
                Err(e) => return (done, Err(e), keep),
            }
        }
        (done, Ok(()), keep)
    }

    /// Reads exactly `buf.bytes_total()` bytes from `offset`, continuing short reads. At end of file it
    /// fails with `UnexpectedEof` (the buffer holds what was read).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-read-exact-at-{}", std::process::id()));
    /// # std::fs::write(&path, b"0123456789")?;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::open(&path).await?;
    ///     let (res, buf) = f.read_exact_at(Vec::with_capacity(4), 6).await;
    ///     res?;
    ///     assert_eq!(buf, b"6789");
    ///     let (res, buf) = f.read_exact_at(Vec::with_capacity(8), 6).await;
    ///     assert_eq!(res.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    ///     assert_eq!(buf, b"6789");
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn read_exact_at<B: IoBufMut>(&self, mut buf: B, offset: u64) -> (io::Result<()>, B) {
        let base = buf.stable_mut_ptr() as usize;
        let total = buf.bytes_total();
        if let Err(e) = self.check_direct(base, total, offset) {
            return (Err(e), buf);
        }
        let eof = || {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of file before the buffer was full",
            )
        };
        let (done, res, mut buf) = self
            .transfer_all(
                (base, total, offset),
                |addr, len, off| Req::Read { addr, len, off },
                eof,
                buf,
            )
            .await;
        // SAFETY: the first `done` bytes were written by the reads.
        unsafe { buf.set_init(done) };
        (res, buf)
    }

    async fn write_impl<B: IoBuf>(&self, buf: B, offset: u64, fua: bool) -> (io::Result<usize>, B) {
        let at = (buf.stable_ptr() as usize, buf.bytes_init(), offset);
        self.transfer(Transfer::Write { fua }, at, buf).await
    }

    /// One read or write of up to `MAX_RW` bytes at `addr`, after the `O_DIRECT` alignment check;
    /// `keep` holds what `addr` points into until the operation completes.
    async fn transfer<K: Send + 'static>(
        &self,
        kind: Transfer,
        (addr, len, off): (usize, usize, u64),
        keep: K,
    ) -> (io::Result<usize>, K) {
        let len = len.min(MAX_RW);
        if let Err(e) = self.check_direct(addr, len, off) {
            return (Err(e), keep);
        }
        let req = match kind {
            Transfer::Read => Req::Read { addr, len, off },
            Transfer::Write { fua } => Req::Write {
                addr,
                len,
                off,
                fua,
            },
        };
        self.run(req, keep).await
    }

    /// Writes `buf`'s initialised bytes at `offset`; returns how many were written (possibly fewer).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-write-at-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     let (res, buf) = f.write_at(b"hello".to_vec(), 0).await;
    ///     assert_eq!(res?, 5);
    ///     // The buffer comes back for the next request.
    ///     assert_eq!(buf, b"hello");
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// assert_eq!(std::fs::read(&path)?, b"hello");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn write_at<B: IoBuf>(&self, buf: B, offset: u64) -> (io::Result<usize>, B) {
        self.write_impl(buf, offset, false).await
    }

    /// A FUA write (`RWF_DSYNC`): done only once the data is on stable storage.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-write-at-fua-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     // Durable when it returns: no sync_data needed for this block.
    ///     let (res, _buf) = f.write_at_fua(b"commit".to_vec(), 0).await;
    ///     assert_eq!(res?, 6);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// assert_eq!(std::fs::read(&path)?, b"commit");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn write_at_fua<B: IoBuf>(&self, buf: B, offset: u64) -> (io::Result<usize>, B) {
        self.write_impl(buf, offset, true).await
    }

    /// Writes all of `buf` at `offset`, continuing short writes; a write that makes no progress fails
    /// with `ENOSPC` (QEMU's rule).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-write-all-at-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     let (res, buf) = f.write_all_at(vec![7; 64 * 1024], 4096).await;
    ///     res?;
    ///     assert_eq!(f.len()?, 4096 + buf.len() as u64);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn write_all_at<B: IoBuf>(&self, buf: B, offset: u64) -> (io::Result<()>, B) {
        let base = buf.stable_ptr() as usize;
        let total = buf.bytes_init();
        if let Err(e) = self.check_direct(base, total, offset) {
            return (Err(e), buf);
        }
        let no_space = || io::Error::from_raw_os_error(libc::ENOSPC);
        let write = |addr, len, off| Req::Write {
            addr,
            len,
            off,
            fua: false,
        };
        let (_, res, buf) = self
            .transfer_all((base, total, offset), write, no_space, buf)
            .await;
        (res, buf)
    }

    /// Reads into several buffers (up to each one's capacity) from `offset` with one `preadv`.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-readv-at-{}", std::process::id()));
    /// # std::fs::write(&path, b"headerpayload")?;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::open(&path).await?;
    ///     let bufs = vec![Vec::with_capacity(6), Vec::with_capacity(16)];
    ///     let (res, bufs) = f.readv_at(bufs, 0).await;
    ///     assert_eq!(res?, 13);
    ///     assert_eq!(bufs[0], b"header");
    ///     assert_eq!(bufs[1], b"payload");
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn readv_at<B: IoBufMut>(
        &self,
        mut bufs: Vec<B>,
        offset: u64,
    ) -> (io::Result<usize>, Vec<B>) {
        // Built straight into `IoVecs` (Send + Sync), so that the future is Send + Sync as well.
        let iovs = IoVecs(
            bufs.iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.stable_mut_ptr().cast(),
                    iov_len: b.bytes_total(),
                })
                .collect(),
        );
        for iov in &iovs.0 {
            if let Err(e) = self.check_direct(iov.iov_base as usize, iov.iov_len, offset) {
                return (Err(e), bufs);
            }
        }
        let req = Req::Readv {
            iov: iovs.0.as_ptr() as usize,
            count: iovs.0.len(),
            off: offset,
        };
        let (res, (mut bufs, _iovs)) = self.run(req, (bufs, iovs)).await;
        if let Ok(mut left) = res {
            for b in &mut bufs {
                let n = left.min(b.bytes_total());
                // SAFETY: the kernel filled the iovecs in order; this buffer got its first n bytes.
                unsafe { b.set_init(n) };
                left -= n;
            }
        }
        (res, bufs)
    }

    /// Writes several buffers' initialised bytes at `offset` with one `pwritev`.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-writev-at-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     let bufs = vec![b"header".to_vec(), b"payload".to_vec()];
    ///     let (res, _bufs) = f.writev_at(bufs, 0).await;
    ///     assert_eq!(res?, 13);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// assert_eq!(std::fs::read(&path)?, b"headerpayload");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn writev_at<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        offset: u64,
    ) -> (io::Result<usize>, Vec<B>) {
        // Built straight into `IoVecs` (Send + Sync), so that the future is Send + Sync as well.
        let iovs = IoVecs(
            bufs.iter()
                .map(|b| libc::iovec {
                    iov_base: b.stable_ptr() as *mut _,
                    iov_len: b.bytes_init(),
                })
                .collect(),
        );
        for iov in &iovs.0 {
            if let Err(e) = self.check_direct(iov.iov_base as usize, iov.iov_len, offset) {
                return (Err(e), bufs);
            }
        }
        let req = Req::Writev {
            iov: iovs.0.as_ptr() as usize,
            count: iovs.0.len(),
            off: offset,
        };
        let (res, (bufs, _iovs)) = self.run(req, (bufs, iovs)).await;
        (res, bufs)
    }

    /// Flushes data and metadata to stable storage (`fsync`).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-sync-all-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     f.set_len(4096).await?;
    ///     // Unlike sync_data, this also makes metadata such as timestamps durable.
    ///     f.sync_all().await?;
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn sync_all(&self) -> io::Result<()> {
        self.run(Req::Fsync { data_only: false }, ())
            .await
            .0
            .map(drop)
    }

    /// Flushes data (and the metadata needed to read it) to stable storage (`fdatasync`, QEMU's flush).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-sync-data-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     f.write_all_at(b"journal entry".to_vec(), 0).await.0?;
    ///     // A guest's flush request completes only after this.
    ///     f.sync_data().await?;
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn sync_data(&self) -> io::Result<()> {
        self.run(Req::Fsync { data_only: true }, ())
            .await
            .0
            .map(drop)
    }

    /// Makes `len` bytes at `offset` read as zeroes, extending the file if needed
    /// (`FALLOC_FL_ZERO_RANGE`).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-write-zeroes-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     f.write_all_at(vec![0xaa; 8192], 0).await.0?;
    ///     f.write_zeroes(4096, 8192).await?;
    ///     assert_eq!(f.len()?, 4096 + 8192);
    ///     let (res, buf) = f.read_exact_at(Vec::with_capacity(12288), 0).await;
    ///     res?;
    ///     assert!(buf[..4096].iter().all(|&b| b == 0xaa));
    ///     assert!(buf[4096..].iter().all(|&b| b == 0));
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.run(
            Req::Fallocate {
                mode: libc::FALLOC_FL_ZERO_RANGE,
                off: offset,
                len,
            },
            (),
        )
        .await
        .0
        .map(drop)
    }

    /// Deallocates `len` bytes at `offset` (they read as zeroes afterwards) without changing the size
    /// (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-discard-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     f.write_all_at(vec![0xaa; 8192], 0).await.0?;
    ///     f.discard(0, 4096).await?;
    ///     assert_eq!(f.len()?, 8192);
    ///     let (res, buf) = f.read_exact_at(Vec::with_capacity(8192), 0).await;
    ///     res?;
    ///     assert!(buf[..4096].iter().all(|&b| b == 0));
    ///     assert!(buf[4096..].iter().all(|&b| b == 0xaa));
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        self.run(
            Req::Fallocate {
                mode,
                off: offset,
                len,
            },
            (),
        )
        .await
        .0
        .map(drop)
    }
}
