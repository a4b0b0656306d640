//! [`OpenOptions`]: opening a [`File`] on the ring (OPENAT) or on the thread pool.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use io_uring::{opcode, types};

use super::file::{File, IoEngine};
use crate::context::current;
use crate::io::ring_op::{cqe_result, Op};

/// How to open a [`File`] (like `std::fs::OpenOptions`, plus `direct` and `engine`).
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("aioctx-doc-open-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let f = aioctx::fs::File::options()
///         .read(true)
///         .write(true)
///         .create(true)
///         .open(dir.join("disk.img"))
///         .await?;
///     let (res, _buf) = f.write_at(b"hello".to_vec(), 0).await;
///     assert_eq!(res?, 5);
///     let (res, buf) = f.read_at(Vec::with_capacity(16), 0).await;
///     assert_eq!(res?, 5);
///     assert_eq!(buf, b"hello");
///     Ok::<_, std::io::Error>(())
/// })?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "OpenOptions does nothing until .open() is awaited"]
pub struct OpenOptions {
    read: bool,
    write: bool,
    create: bool,
    truncate: bool,
    direct: bool,
    engine: IoEngine,
}

impl OpenOptions {
    /// All options off.
    ///
    /// ```
    /// use aioctx::fs::OpenOptions;
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-options-new-{}", std::process::id()));
    /// # std::fs::write(&path, b"")?;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let err = OpenOptions::new().open(&path).await.unwrap_err();
    ///     assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "no access mode chosen");
    ///     OpenOptions::new().read(true).open(&path).await?;
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Open for reading.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-options-read-{}", std::process::id()));
    /// # std::fs::write(&path, b"0123456789")?;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::options().read(true).open(&path).await?;
    ///     let (res, buf) = f.read_at(Vec::with_capacity(3), 2).await;
    ///     assert_eq!(res?, 3);
    ///     assert_eq!(buf, b"234");
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn read(mut self, on: bool) -> Self {
        self.read = on;
        self
    }

    /// Open for writing.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-options-write-{}", std::process::id()));
    /// # std::fs::write(&path, b"hello")?;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     // Without truncate the rest of the file stays.
    ///     let f = aioctx::fs::File::options().write(true).open(&path).await?;
    ///     f.write_all_at(b"J".to_vec(), 0).await.0?;
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// assert_eq!(std::fs::read(&path)?, b"Jello");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn write(mut self, on: bool) -> Self {
        self.write = on;
        self
    }

    /// Create the file if it does not exist (needs `write`).
    ///
    /// ```
    /// use aioctx::fs::File;
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-options-create-{}", std::process::id()));
    /// # let _ = std::fs::remove_file(&path); // a leftover of a failed run with this pid
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let err = File::options().read(true).create(true).open(&path).await.unwrap_err();
    ///     assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "create needs write");
    ///     assert!(!path.exists());
    ///     File::options().write(true).create(true).open(&path).await?;
    ///     assert!(path.exists());
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn create(mut self, on: bool) -> Self {
        self.create = on;
        self
    }

    /// Truncate the file to 0 bytes (needs `write`).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-options-truncate-{}", std::process::id()));
    /// # std::fs::write(&path, b"old contents")?;
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::options().write(true).truncate(true).open(&path).await?;
    ///     assert!(f.is_empty()?);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn truncate(mut self, on: bool) -> Self {
        self.truncate = on;
        self
    }

    /// Bypass the page cache (`O_DIRECT`). Buffers, lengths and offsets must then be 512-byte aligned
    /// (use [`AlignedBuf`](super::AlignedBuf)); file systems that refuse `O_DIRECT` fail the open with
    /// `EINVAL`.
    ///
    /// ```
    /// use aioctx::fs::{AlignedBuf, File};
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-options-direct-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = File::options().read(true).write(true).create(true).direct(true).open(&path).await?;
    ///     let mut block = AlignedBuf::new(4096, 4096);
    ///     block[..5].copy_from_slice(b"hello");
    ///     f.write_all_at(block, 0).await.0?;
    ///     // An unaligned buffer is refused before anything reaches the kernel.
    ///     let (res, _buf) = f.read_at(Vec::with_capacity(100), 0).await;
    ///     assert_eq!(res.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// assert_eq!(&std::fs::read(&path)?[..5], b"hello");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn direct(mut self, on: bool) -> Self {
        self.direct = on;
        self
    }

    /// Chooses the engine (default `Auto`).
    ///
    /// ```
    /// use aioctx::fs::{File, IoEngine};
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-options-engine-{}", std::process::id()));
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = File::options()
    ///         .write(true)
    ///         .create(true)
    ///         .engine(IoEngine::ThreadPool)
    ///         .open(&path)
    ///         .await?;
    ///     assert_eq!(f.engine(), IoEngine::ThreadPool);
    ///     f.write_all_at(b"via the pool".to_vec(), 0).await.0?;
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// assert_eq!(std::fs::read(&path)?, b"via the pool");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn engine(mut self, engine: IoEngine) -> Self {
        self.engine = engine;
        self
    }

    /// Opens `path` and resolves the engine. With the io_uring engine the open itself is an `OPENAT`
    /// on the context's ring; with the thread-pool engine it runs on the pool (opening can block).
    ///
    /// Errors: what the OS says (`NotFound`, `PermissionDenied`, `EINVAL` for `O_DIRECT` on a file system
    /// that refuses it, `EMFILE`), `InvalidInput` for an access mode that cannot be opened (neither read
    /// nor write; create or truncate without write) or a path with a NUL byte, `Unsupported` if
    /// `IoEngine::IoUring` was forced where io_uring is unavailable, `NotConnected` outside an aioctx
    /// context.
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use aioctx::fs::OpenOptions;
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-options-open-{}", std::process::id()));
    /// # let _ = std::fs::remove_file(&path); // a leftover of a failed run with this pid
    /// let opts = OpenOptions::new().read(true).write(true);
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     assert_eq!(opts.open(&path).await.unwrap_err().kind(), ErrorKind::NotFound);
    ///     let f = opts.clone().create(true).open(&path).await?;
    ///     assert!(f.is_empty()?);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// // Opening needs a context to run on.
    /// let outside = futures::executor::block_on(opts.open(&path));
    /// assert_eq!(outside.unwrap_err().kind(), ErrorKind::NotConnected);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async fn open(&self, path: impl AsRef<Path>) -> io::Result<File> {
        let engine = resolve_engine(self.engine)?;
        let path = path.as_ref();
        let opened = match engine {
            IoEngine::IoUring => self.open_on_ring(path).await,
            _ => self.open_on_pool(path).await,
        };
        let fd = opened
            .map_err(|e| crate::sys::with_context(e, format!("opening {}", path.display())))?;
        Ok(File {
            fd: Arc::new(fd),
            direct: self.direct,
            engine,
        })
    }

    /// The `open(2)` flags, checked the way `std::fs::OpenOptions` checks them.
    fn flags(&self) -> io::Result<libc::c_int> {
        let access = match (self.read, self.write) {
            (true, false) => libc::O_RDONLY,
            (false, true) => libc::O_WRONLY,
            (true, true) => libc::O_RDWR,
            (false, false) => return Err(invalid_options("neither read nor write access")),
        };
        if (self.create || self.truncate) && !self.write {
            return Err(invalid_options("create or truncate without write access"));
        }
        let mut flags = access | libc::O_CLOEXEC;
        for (on, flag) in [
            (self.create, libc::O_CREAT),
            (self.truncate, libc::O_TRUNC),
            (self.direct, libc::O_DIRECT),
        ] {
            if on {
                flags |= flag;
            }
        }
        Ok(flags)
    }

    async fn open_on_ring(&self, path: &Path) -> io::Result<OwnedFd> {
        let flags = self.flags()?;
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
        // SAFETY: the SQE points at the path's heap bytes, owned by the operation's resources until
        // the CQE. An fd the kernel opens after the future was dropped is closed by the orphan hook.
        let (res, _path) = unsafe {
            Op::submit_until_done(
                path,
                |path| {
                    opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
                        .flags(flags)
                        .mode(0o666)
                        .build()
                },
                close_orphan,
            )
        }
        .await;
        let fd = cqe_result(res?)? as RawFd;
        // SAFETY: the kernel just opened `fd` for us; nobody else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    async fn open_on_pool(&self, path: &Path) -> io::Result<OwnedFd> {
        let opts = self.clone();
        let path = path.to_owned();
        crate::task::blocking::spawn_blocking_io(move || {
            let mut o = std::fs::OpenOptions::new();
            o.read(opts.read)
                .write(opts.write)
                .create(opts.create)
                .truncate(opts.truncate);
            if opts.direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(&path).map(OwnedFd::from)
        })
        .await
    }
}

fn invalid_options(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("cannot open a file with {what}"),
    )
}

/// Closes an fd an `OPENAT` returned after its future was dropped.
fn close_orphan(res: i32) {
    if res >= 0 {
        // SAFETY: the kernel opened `res` for the dropped open; nobody else has seen it.
        drop(unsafe { OwnedFd::from_raw_fd(res) });
    }
}

pub(super) fn resolve_engine(wanted: IoEngine) -> io::Result<IoEngine> {
    if wanted == IoEngine::ThreadPool {
        return Ok(wanted);
    }
    let ring = current::with_current(|home| home.ring_available())
        .ok_or_else(|| crate::sys::outside_context("aioctx::fs"))?;
    match (wanted, ring) {
        (_, Ok(())) => Ok(IoEngine::IoUring),
        (IoEngine::Auto, Err(_)) => Ok(IoEngine::ThreadPool),
        (_, Err(e)) => Err(io::Error::new(io::ErrorKind::Unsupported, e)),
    }
}
