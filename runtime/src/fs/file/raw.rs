//! The raw-pointer half of [`File`]'s API: transfers into and out of memory the caller keeps alive
//! (a device model's guest RAM), with no owned buffer in between.

use std::io;

use super::File;
use super::Transfer;
use crate::fs::req::{IoVecs, Req};

impl File {
    /// Reads into memory the caller keeps alive (e.g. guest RAM) from `offset`.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for writes of `len` bytes, and not be read or written by anything else, until
    /// the operation completes: until this future returns, or, if it is dropped first, until the
    /// operation's completion arrives (the context waits for it at the latest when it is dropped).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-read-at-raw-{}", std::process::id()));
    /// # std::fs::write(&path, b"guest data")?;
    /// let mut ram = vec![0u8; 8]; // stands in for mapped guest memory
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::open(&path).await?;
    ///     // SAFETY: `ram` outlives the read, which is awaited to completion, and nothing else uses it.
    ///     let n = unsafe { f.read_at_raw(ram.as_mut_ptr(), ram.len(), 6) }.await?;
    ///     assert_eq!(n, 4);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// assert_eq!(&ram[..4], b"data");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async unsafe fn read_at_raw(
        &self,
        ptr: *mut u8,
        len: usize,
        offset: u64,
    ) -> io::Result<usize> {
        let at = (ptr as usize, len, offset);
        self.transfer(Transfer::Read, at, ()).await.0
    }

    /// Writes from memory the caller keeps alive at `offset`.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads of `len` bytes until the operation completes (see
    /// [`read_at_raw`](Self::read_at_raw)).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-write-at-raw-{}", std::process::id()));
    /// let ram = b"guest data".to_vec(); // stands in for mapped guest memory
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     // SAFETY: `ram` outlives the write, which is awaited to completion.
    ///     let n = unsafe { f.write_at_raw(ram.as_ptr(), ram.len(), 0) }.await?;
    ///     assert_eq!(n, ram.len());
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// assert_eq!(std::fs::read(&path)?, b"guest data");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async unsafe fn write_at_raw(
        &self,
        ptr: *const u8,
        len: usize,
        offset: u64,
    ) -> io::Result<usize> {
        let at = (ptr as usize, len, offset);
        self.transfer(Transfer::Write { fua: false }, at, ())
            .await
            .0
    }

    /// `preadv` into caller-owned iovecs (a virtqueue's descriptor chain mapped to guest RAM). The
    /// `O_DIRECT` alignment of the iovecs is left to the kernel to check (`EINVAL`).
    ///
    /// # Safety
    ///
    /// The `count` iovecs at `iov` must be valid for this call (they are copied into the operation, so
    /// the array may go away with the caller's frame); the memory they describe must stay valid and
    /// unaliased until the operation completes (see [`read_at_raw`](Self::read_at_raw)).
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-readv-at-raw-{}", std::process::id()));
    /// # std::fs::write(&path, b"headerpayload")?;
    /// let (mut header, mut payload) = ([0u8; 6], [0u8; 7]); // two guest pages of one request
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::open(&path).await?;
    ///     let iov = [
    ///         libc::iovec { iov_base: header.as_mut_ptr().cast(), iov_len: header.len() },
    ///         libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() },
    ///     ];
    ///     // SAFETY: both arrays outlive the read, which is awaited to completion, and nothing else
    ///     // uses them meanwhile.
    ///     let n = unsafe { f.readv_at_raw(iov.as_ptr(), iov.len(), 0) }.await?;
    ///     assert_eq!(n, 13);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// assert_eq!((&header, &payload), (b"header", b"payload"));
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async unsafe fn readv_at_raw(
        &self,
        iov: *const libc::iovec,
        count: usize,
        offset: u64,
    ) -> io::Result<usize> {
        // SAFETY: forwarded from the caller.
        unsafe { self.run_vectored_raw(iov, count, offset, true) }.await
    }

    /// `pwritev` from caller-owned iovecs. There is no FUA variant for vectors: follow it with
    /// [`sync_data`](Self::sync_data) where the data must be stable.
    ///
    /// # Safety
    ///
    /// As for [`readv_at_raw`](Self::readv_at_raw), for reads of the memory.
    ///
    /// ```
    /// # let path = std::env::temp_dir().join(format!("aioctx-doc-writev-at-raw-{}", std::process::id()));
    /// let (header, payload) = (*b"header", *b"payload"); // two guest pages of one request
    /// let ctx = aioctx::AioContext::new()?;
    /// ctx.block_on(async {
    ///     let f = aioctx::fs::File::create(&path).await?;
    ///     let iov = [
    ///         libc::iovec { iov_base: header.as_ptr() as *mut _, iov_len: header.len() },
    ///         libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() },
    ///     ];
    ///     // SAFETY: both arrays outlive the write, which is awaited to completion.
    ///     let n = unsafe { f.writev_at_raw(iov.as_ptr(), iov.len(), 0) }.await?;
    ///     assert_eq!(n, 13);
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// assert_eq!(std::fs::read(&path)?, b"headerpayload");
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub async unsafe fn writev_at_raw(
        &self,
        iov: *const libc::iovec,
        count: usize,
        offset: u64,
    ) -> io::Result<usize> {
        // SAFETY: forwarded from the caller.
        unsafe { self.run_vectored_raw(iov, count, offset, false) }.await
    }
}

impl File {
    /// `preadv` (`read`) or `pwritev` over a copy of the caller's iovec array.
    ///
    /// # Safety
    ///
    /// As for [`readv_at_raw`](Self::readv_at_raw).
    async unsafe fn run_vectored_raw(
        &self,
        iov: *const libc::iovec,
        count: usize,
        off: u64,
        read: bool,
    ) -> io::Result<usize> {
        // SAFETY: the caller guarantees `count` valid iovecs at `iov` for this call.
        let iovecs = unsafe { copy_iovecs(iov, count) };
        let iov = iovecs.0.as_ptr() as usize;
        let req = if read {
            Req::Readv { iov, count, off }
        } else {
            Req::Writev { iov, count, off }
        };
        self.run(req, iovecs).await.0
    }
}

/// Copies a caller's iovec array into the operation's own resources: the kernel reads the array when
/// it issues the operation, which may be after the future that started it was dropped.
///
/// # Safety
///
/// `iov` must point at `count` valid iovecs (any pointer when `count` is 0).
unsafe fn copy_iovecs(iov: *const libc::iovec, count: usize) -> IoVecs {
    if count == 0 {
        return IoVecs(Vec::new());
    }
    // SAFETY: guaranteed by the caller.
    IoVecs(unsafe { std::slice::from_raw_parts(iov, count) }.to_vec())
}
