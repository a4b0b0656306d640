//! Safe block I/O straight into memory that outlives the operation: guest RAM, a lent buffer.
//!
//! The raw-pointer API (`File::readv_at_raw`, ...) is `unsafe` at every call: the caller must keep the
//! memory alive and in place until the kernel is done, even if the future is dropped. [`IoMemory`] moves
//! that promise to one `unsafe impl` per memory type (crosvm's `BackingMemory` does the same): the
//! memory stays valid and does not move while any `Arc` of it lives, and the operation holds an `Arc`
//! until its completion arrives, also when its future is dropped first. Every call is then safe.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use super::file::File;
use super::req::{IoVecs, Req};

/// A range of an [`IoMemory`]: `len` bytes at offset (or guest address) `addr`.
///
/// ```
/// let range = aioctx::fs::MemRange { addr: 4096, len: 512 };
/// assert_eq!(range.end(), Some(4608));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemRange {
    /// Where the range starts, in the memory's own address space.
    pub addr: u64,
    /// Its length in bytes.
    pub len: usize,
}

impl MemRange {
    /// The first address after the range, or `None` if it overflows.
    ///
    /// ```
    /// use aioctx::fs::MemRange;
    /// assert_eq!(MemRange { addr: u64::MAX, len: 1 }.end(), None);
    /// ```
    pub fn end(self) -> Option<u64> {
        self.addr.checked_add(self.len as u64)
    }
}

/// Memory that block I/O may read and write while the operation is in flight.
///
/// # Safety
///
/// An implementation promises that, for as long as the value lives, every pointer
/// [`host_range`](IoMemory::host_range) returned for a range stays valid for reads and writes of that
/// range's `len` bytes: the memory is neither freed, unmapped nor moved (it sits behind a stable
/// address, not inside the value), and writing to it does not violate Rust's aliasing rules (no
/// `&`/`&mut` to those bytes is handed out while the value is shared, or they are `UnsafeCell`s or
/// memory shared with a guest, which Rust code reaches only through volatile or atomic accesses).
/// Concurrent accesses to the same bytes by the guest or another operation are allowed and give
/// unspecified contents, as on real hardware.
///
/// ```
/// use std::sync::Arc;
/// use aioctx::fs::{File, IoMemory, MemRange, MemoryBuf};
/// # let path = std::env::temp_dir().join(format!("aioctx-doc-iomemory-{}", std::process::id()));
/// # let _ = std::fs::remove_file(&path);
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let file = File::create(&path).await?;
///     let data = Arc::new(MemoryBuf::from_vec(b"0123456789".to_vec()));
///     let parts = [MemRange { addr: 5, len: 5 }, MemRange { addr: 0, len: 5 }];
///     assert_eq!(file.write_from_memory(&data, &parts, 0).await?, 10);
///     let back = Arc::new(MemoryBuf::new(10));
///     assert_eq!(file.read_to_memory(&back, &[MemRange { addr: 0, len: 10 }], 0).await?, 10);
///     let back = Arc::try_unwrap(back).expect("the operation let go of it").into_vec();
///     assert_eq!(back, b"5678901234");
///     Ok::<_, std::io::Error>(())
/// })?;
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub unsafe trait IoMemory: Send + Sync + 'static {
    /// The host address of `range`, or an error (`InvalidInput`, or what fits the memory) if the
    /// range is not entirely inside one contiguous part of this memory.
    fn host_range(&self, range: MemRange) -> io::Result<NonNull<u8>>;
}

/// A byte buffer lent to I/O operations: while an operation may use it (as `Arc<MemoryBuf>`), its
/// bytes are reachable only by operations; once it is yours alone again (`Arc::try_unwrap`),
/// [`into_vec`](MemoryBuf::into_vec) gives them back. This is what makes lending it sound.
///
/// ```
/// let buf = aioctx::fs::MemoryBuf::from_vec(vec![7; 3]);
/// assert_eq!(buf.len(), 3);
/// assert_eq!(buf.into_vec(), [7, 7, 7]);
/// ```
pub struct MemoryBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: the buffer is an owned heap block; `&MemoryBuf` gives no access to its bytes (only
// `host_range`, for operations, whose accesses the `IoMemory` contract covers), so sharing it between
// threads shares nothing else.
unsafe impl Send for MemoryBuf {}
// SAFETY: as above.
unsafe impl Sync for MemoryBuf {}

impl std::fmt::Debug for MemoryBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBuf").field("len", &self.len).finish()
    }
}

impl MemoryBuf {
    /// `len` zero bytes.
    ///
    /// ```
    /// assert_eq!(aioctx::fs::MemoryBuf::new(4).into_vec(), [0; 4]);
    /// ```
    pub fn new(len: usize) -> MemoryBuf {
        MemoryBuf::from_vec(vec![0; len])
    }

    /// Takes over `vec`'s bytes.
    ///
    /// ```
    /// let buf = aioctx::fs::MemoryBuf::from_vec(b"abc".to_vec());
    /// assert_eq!(buf.into_vec(), b"abc");
    /// ```
    pub fn from_vec(vec: Vec<u8>) -> MemoryBuf {
        let mut vec = std::mem::ManuallyDrop::new(vec);
        MemoryBuf {
            // `as_mut_ptr` of an owned Vec: the pointer carries write permission for the whole block.
            ptr: NonNull::new(vec.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            len: vec.len(),
            capacity: vec.capacity(),
        }
    }

    /// The length in bytes.
    ///
    /// ```
    /// assert_eq!(aioctx::fs::MemoryBuf::new(9).len(), 9);
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    ///
    /// ```
    /// assert!(aioctx::fs::MemoryBuf::new(0).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, as a `Vec` again.
    ///
    /// ```
    /// let bytes = aioctx::fs::MemoryBuf::from_vec(vec![1, 2]).into_vec();
    /// assert_eq!(bytes, [1, 2]);
    /// ```
    pub fn into_vec(self) -> Vec<u8> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `ptr`, `len` and `capacity` are those of the Vec `from_vec` took apart (a zero
        // capacity Vec's dangling pointer included), and `this` is not dropped, so the block is
        // reassembled exactly once.
        unsafe { Vec::from_raw_parts(this.ptr.as_ptr(), this.len, this.capacity) }
    }
}

impl Drop for MemoryBuf {
    fn drop(&mut self) {
        // SAFETY: as in `into_vec`; `drop` runs once.
        drop(unsafe { Vec::from_raw_parts(self.ptr.as_ptr(), self.len, self.capacity) });
    }
}

// SAFETY: the heap block lives, unmoved, until the MemoryBuf is dropped, and no reference to its
// bytes exists while it is shared (see the type); `host_range` checks the range is inside it.
unsafe impl IoMemory for MemoryBuf {
    fn host_range(&self, range: MemRange) -> io::Result<NonNull<u8>> {
        match range.end() {
            Some(end) if end <= self.len as u64 => {
                // SAFETY: `addr + len <= self.len`, so the offset stays inside the allocation.
                Ok(unsafe { self.ptr.add(range.addr as usize) })
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range {range:?} is outside a buffer of {} bytes", self.len),
            )),
        }
    }
}

/// The most iovecs one operation takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// The iovecs of `ranges` in `mem`, checked.
fn iovecs<M: IoMemory + ?Sized>(mem: &M, ranges: &[MemRange]) -> io::Result<IoVecs> {
    if ranges.len() > IOV_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} ranges in one operation; at most {IOV_MAX}",
                ranges.len()
            ),
        ));
    }
    let mut iov = Vec::with_capacity(ranges.len());
    for &range in ranges {
        let base = mem.host_range(range)?;
        iov.push(libc::iovec {
            iov_base: base.as_ptr().cast(),
            iov_len: range.len,
        });
    }
    Ok(IoVecs(iov))
}

impl File {
    /// Reads from the file at `offset` into `ranges` of `mem`, in order (one `preadv`): safe, because
    /// the operation keeps its own `Arc` of `mem` until the kernel is done, also if this future is
    /// dropped first. Returns the bytes read, which may be fewer than asked (at end of file, or a
    /// short transfer); read the rest with the ranges moved on.
    ///
    /// Errors: a range outside `mem` (as its [`IoMemory::host_range`] says), more than 1024 ranges
    /// (`InvalidInput`), or what the read returns.
    ///
    /// See [`IoMemory`] for an example.
    pub async fn read_to_memory<M: IoMemory + ?Sized>(
        &self,
        mem: &Arc<M>,
        ranges: &[MemRange],
        offset: u64,
    ) -> io::Result<usize> {
        self.memory_op(mem, ranges, offset, true).await
    }

    /// Writes `ranges` of `mem`, in order, to the file at `offset` (one `pwritev`); safe as
    /// [`read_to_memory`](File::read_to_memory) is. Returns the bytes written, which may be fewer than
    /// asked.
    ///
    /// See [`IoMemory`] for an example.
    pub async fn write_from_memory<M: IoMemory + ?Sized>(
        &self,
        mem: &Arc<M>,
        ranges: &[MemRange],
        offset: u64,
    ) -> io::Result<usize> {
        self.memory_op(mem, ranges, offset, false).await
    }

    async fn memory_op<M: IoMemory + ?Sized>(
        &self,
        mem: &Arc<M>,
        ranges: &[MemRange],
        off: u64,
        read: bool,
    ) -> io::Result<usize> {
        let iovecs = iovecs(&**mem, ranges)?;
        let (iov, count) = (iovecs.0.as_ptr() as usize, iovecs.0.len());
        if count == 0 {
            return Ok(0);
        }
        let req = if read {
            Req::Readv { iov, count, off }
        } else {
            Req::Writev { iov, count, off }
        };
        // The operation owns an Arc of the memory and the iovec array until its completion: the
        // pointers in `req` stay valid whatever happens to this future (IoMemory's contract).
        let keep = (KeepMemory(Arc::clone(mem)), iovecs);
        self.run(req, keep).await.0
    }
}

/// An `Arc` of memory kept alive by an operation (it is `Send`: `IoMemory` requires `Send + Sync`).
struct KeepMemory<M: ?Sized>(#[allow(dead_code)] Arc<M>);
