//! Owned buffers for block I/O: [`IoBuf`], [`IoBufMut`] and [`AlignedBuf`] for `O_DIRECT`.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A buffer the kernel can read from until an operation completes. Implemented for `Vec<u8>`,
/// `Box<[u8]>` and [`AlignedBuf`].
///
/// # Safety
///
/// `stable_ptr` must point at `bytes_init` initialised bytes that stay at the same address while the
/// value is moved around (heap memory), until the value is dropped.
///
/// ```
/// use std::sync::Arc;
/// use aioctx::fs::{File, IoBuf};
///
/// /// A block many writes share, such as a cached header.
/// struct SharedBlock(Arc<[u8]>);
///
/// // SAFETY: the Arc's allocation never moves, all of it is initialised and it is never written.
/// unsafe impl IoBuf for SharedBlock {
///     fn stable_ptr(&self) -> *const u8 {
///         self.0.as_ptr()
///     }
///     fn bytes_init(&self) -> usize {
///         self.0.len()
///     }
/// }
///
/// # let path = std::env::temp_dir().join(format!("aioctx-doc-iobuf-{}", std::process::id()));
/// let header: Arc<[u8]> = Arc::from(&b"QFI\xfb"[..]);
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let f = File::create(&path).await?;
///     f.write_all_at(SharedBlock(Arc::clone(&header)), 0).await.0?;
///     Ok::<_, std::io::Error>(())
/// })?;
/// assert_eq!(std::fs::read(&path)?, &header[..]);
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub unsafe trait IoBuf: Send + 'static {
    /// Where the bytes start.
    fn stable_ptr(&self) -> *const u8;
    /// How many bytes a write takes from the buffer.
    fn bytes_init(&self) -> usize;
}

/// A buffer the kernel can write into until an operation completes.
///
/// # Safety
///
/// As for [`IoBuf`], and `stable_mut_ptr` must be valid for writes of `bytes_total` bytes.
///
/// ```
/// use aioctx::fs::{AlignedBuf, File, IoBufMut};
///
/// /// Any buffer type will do; a `Vec` reads up to its capacity and its length follows.
/// async fn first_sector<B: IoBufMut>(f: &File, buf: B) -> std::io::Result<B> {
///     let (res, buf) = f.read_exact_at(buf, 0).await;
///     res.map(|()| buf)
/// }
///
/// # let path = std::env::temp_dir().join(format!("aioctx-doc-iobufmut-{}", std::process::id()));
/// # std::fs::write(&path, vec![0x55; 1024])?;
/// let ctx = aioctx::AioContext::new()?;
/// ctx.block_on(async {
///     let f = File::open(&path).await?;
///     let vec = first_sector(&f, Vec::with_capacity(512)).await?;
///     let aligned = first_sector(&f, AlignedBuf::new(512, 512)).await?;
///     assert_eq!(vec.len(), 512);
///     assert_eq!(vec[..], aligned[..]);
///     Ok::<_, std::io::Error>(())
/// })?;
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub unsafe trait IoBufMut: IoBuf {
    /// Where the kernel writes.
    fn stable_mut_ptr(&mut self) -> *mut u8;
    /// How many bytes a read may fill (a `Vec`'s capacity).
    fn bytes_total(&self) -> usize;
    /// Records that the first `n` bytes are initialised (a `Vec`'s length grows to `n`).
    ///
    /// # Safety
    ///
    /// The first `n` bytes must have been written.
    unsafe fn set_init(&mut self, n: usize);
}

// SAFETY: a Vec's heap allocation does not move when the Vec does; `len` bytes are initialised and
// `capacity` bytes are writable.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: see the IoBuf impl.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.len() {
            // SAFETY: the caller guarantees the first n bytes were written, and n <= capacity.
            unsafe { self.set_len(n) };
        }
    }
}

// SAFETY: a boxed slice's allocation does not move with the box; all of it is initialised.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: see the IoBuf impl.
unsafe impl IoBufMut for Box<[u8]> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
    unsafe fn set_init(&mut self, _n: usize) {}
}

/// A zeroed, heap-allocated byte buffer with a chosen alignment, for `O_DIRECT` I/O (which needs the
/// memory, the offset and the length aligned to the device's logical block size, typically 512 or 4096).
///
/// ```
/// let mut buf = aioctx::fs::AlignedBuf::new(8192, 4096);
/// assert_eq!(buf.as_ptr() as usize % 4096, 0);
/// buf[0] = 7;
/// assert_eq!(buf.len(), 8192);
/// ```
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    align: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zero bytes aligned to `align` (a power of two).
    ///
    /// # Panics
    ///
    /// If `align` is not a power of two, or the size overflows; [`try_new`](Self::try_new) reports
    /// those as errors instead (for sizes that come from outside the program).
    ///
    /// ```
    /// use aioctx::fs::AlignedBuf;
    /// let buf = AlignedBuf::new(4096, 512);
    /// assert_eq!(buf.len(), 4096);
    /// assert_eq!(buf.as_ptr() as usize % 512, 0);
    /// assert!(buf.iter().all(|&b| b == 0));
    /// ```
    pub fn new(len: usize, align: usize) -> Self {
        Self::try_new(len, align).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`new`](Self::new), but an alignment that is not a power of two, or a size that overflows
    /// once rounded up to it, is an `InvalidInput` error rather than a panic.
    ///
    /// ```
    /// use aioctx::fs::AlignedBuf;
    /// let buf = AlignedBuf::try_new(4096, 4096)?;
    /// assert_eq!(buf.as_ptr() as usize % 4096, 0);
    /// let err = AlignedBuf::try_new(4096, 3).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    /// assert!(AlignedBuf::try_new(usize::MAX, 512).is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn try_new(len: usize, align: usize) -> std::io::Result<Self> {
        let layout = Layout::from_size_align(len.max(1), align).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "AlignedBuf: {len} bytes aligned to {align}: the alignment must be a power \
                     of two and the rounded size fit in isize"
                ),
            )
        })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Ok(Self { ptr, len, align })
    }

    /// The alignment.
    ///
    /// ```
    /// let buf = aioctx::fs::AlignedBuf::new(512, 4096);
    /// assert_eq!(buf.align(), 4096);
    /// assert_eq!(buf.as_ptr() as usize % buf.align(), 0);
    /// ```
    pub fn align(&self) -> usize {
        self.align
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout =
            Layout::from_size_align(self.len.max(1), self.align).expect("validated in new");
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` zeroed (initialised) bytes live at `ptr` for the buffer's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("align", &self.align)
            .finish()
    }
}

// SAFETY: the allocation never moves and all `len` bytes are initialised (zeroed at allocation).
unsafe impl IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

// SAFETY: see the IoBuf impl.
unsafe impl IoBufMut for AlignedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.len
    }
    unsafe fn set_init(&mut self, _n: usize) {}
}
