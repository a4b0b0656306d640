//! [`Builder`]: how a context is configured. `build` is in `task/`, which builds a context with its
//! executor hooked in.

use crate::PollParams;

/// Configures and creates an [`AioContext`](crate::AioContext).
///
/// ```
/// use aioctx::{AioContext, Backend};
/// let ctx = AioContext::builder()
///     .backend(Backend::Epoll)
///     .poll_max_ns(32_768)
///     .poll_grow(2)
///     .poll_shrink(0)
///     .poll_weight(3)
///     .build()?;
/// assert_eq!(ctx.backend(), Backend::Epoll);
/// assert_eq!(ctx.poll_params().max_ns, 32_768);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a Builder does nothing until .build() is called"]
pub struct Builder {
    pub(super) backend: crate::Backend,
    pub(super) poll: PollParams,
    pub(super) ring_entries: u32,
    pub(super) max_batch: usize,
    pub(super) wake_by_msg_ring: bool,
    pub(super) simulate_uring_errno: Option<i32>,
    pub(super) start_paused: bool,
    pub(super) pool_size: (usize, usize),
    pub(super) poll_idle_timeout: std::time::Duration,
}

/// QEMU's `POLL_IDLE_INTERVAL_NS`.
const DEFAULT_POLL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7);

impl Default for Builder {
    fn default() -> Self {
        Self {
            backend: crate::Backend::Auto,
            poll: PollParams::default(),
            ring_entries: crate::fdmon::io_uring::DEFAULT_ENTRIES,
            max_batch: 0,
            wake_by_msg_ring: false,
            simulate_uring_errno: None,
            start_paused: false,
            pool_size: (0, crate::pool::DEFAULT_MAX_THREADS),
            poll_idle_timeout: DEFAULT_POLL_IDLE_TIMEOUT,
        }
    }
}

impl Builder {
    /// A builder with QEMU's bare-context defaults: `Backend::Auto`, polling off.
    ///
    /// ```
    /// let ctx = aioctx::Builder::new().build()?;
    /// assert_eq!(ctx.poll_params(), aioctx::PollParams::default()); // polling off
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Chooses the fd monitor. A named backend is used as is (no fallback); `Auto` picks the best available.
    ///
    /// ```
    /// use aioctx::{AioContext, Backend};
    /// let ctx = AioContext::builder().backend(Backend::Poll).build()?;
    /// assert_eq!(ctx.backend(), Backend::Poll);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn backend(mut self, backend: crate::Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The longest busy-poll window in ns; 0 (the default) disables polling.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::builder().poll_max_ns(16_384).build()?;
    /// assert_eq!(ctx.poll_params().max_ns, 16_384);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_max_ns(mut self, ns: u64) -> Self {
        self.poll.max_ns = ns;
        self
    }

    /// The factor a poll window grows by; 0 means 2.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::builder().poll_max_ns(32_768).poll_grow(4).build()?;
    /// assert_eq!(ctx.poll_params().grow, 4);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_grow(mut self, factor: u64) -> Self {
        self.poll.grow = factor;
        self
    }

    /// The divisor a poll window shrinks by; 0 means reset it to 0.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::builder().poll_max_ns(32_768).poll_shrink(2).build()?;
    /// assert_eq!(ctx.poll_params().shrink, 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_shrink(mut self, divisor: u64) -> Self {
        self.poll.shrink = divisor;
        self
    }

    /// QEMU's `poll-weight`: the newest block time counts `1/2^weight` in each polled handler's
    /// moving average of how long the loop blocked, which sizes the poll window; 0 means
    /// [`PollParams::DEFAULT_WEIGHT`] (3). Higher values adapt more slowly; at most 62 (`build` fails
    /// with `InvalidInput` otherwise).
    ///
    /// ```
    /// let ctx = aioctx::AioContext::builder().poll_max_ns(32_768).poll_weight(2).build()?;
    /// assert_eq!(ctx.poll_params().weight, 2);
    /// let bad = aioctx::AioContext::builder().poll_max_ns(32_768).poll_weight(63).build();
    /// assert_eq!(bad.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_weight(mut self, weight: u64) -> Self {
        self.poll.weight = weight;
        self
    }

    /// The share of recent polling phases (percent) that must have found work for the loop to poll
    /// at every chance; below it the loop polls one chance in 8 to 256 and skips polling otherwise (see
    /// [`PollParams::min_hit_percent`]). 0 (the default of a bare context) means no minimum, as in
    /// QEMU; at most 100 (`build` fails with `InvalidInput` otherwise).
    ///
    /// ```
    /// let ctx = aioctx::AioContext::builder().poll_max_ns(32_768).poll_min_hit_percent(60).build()?;
    /// assert_eq!(ctx.poll_params().min_hit_percent, 60);
    /// let bad = aioctx::AioContext::builder().poll_min_hit_percent(101).build();
    /// assert_eq!(bad.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_min_hit_percent(mut self, percent: u64) -> Self {
        self.poll.min_hit_percent = percent;
        self
    }

    /// The io_uring submission queue size (rounded up to a power of two by the kernel; the completion
    /// queue is twice as large). Default 128, as in QEMU. More SQEs than this may be queued: the loop
    /// submits early when the SQ fills.
    ///
    /// ```
    /// use aioctx::AioContext;
    /// let ctx = AioContext::builder().ring_entries(256).build()?;
    /// # drop(ctx);
    /// let err = AioContext::builder().ring_entries(0).build().unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn ring_entries(mut self, entries: u32) -> Self {
        self.ring_entries = entries;
        self
    }

    /// Submits user SQEs early once this many are queued (QEMU's `aio-max-batch`); 0, the default, means
    /// they go out at the next wait or when the SQ is full.
    ///
    /// ```
    /// use aioctx::{AioContext, Backend, io_uring::opcode};
    /// let ctx = AioContext::builder().backend(Backend::IoUring).max_batch(1).build()?;
    /// let before = ctx.stats().sqes_submitted;
    /// // SAFETY: a NOP points at no memory.
    /// unsafe { ctx.add_sqe(opcode::Nop::new().build(), |_| {})? };
    /// assert!(ctx.stats().sqes_submitted > before); // submitted at once, not at the next wait
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }

    /// Wake this context from other threads by posting a completion into its io_uring ring
    /// (`IORING_OP_MSG_RING`) instead of writing its eventfd (default off). The loop then wakes from
    /// its `io_uring_enter` with nothing to clear, where the eventfd costs it a poll completion and a
    /// `read(2)`; each notifying thread gets a small ring of its own. Without io_uring (epoll, poll),
    /// and while glib or a `MainLoop` drives the context, notifications write the eventfd as before;
    /// [`Stats::notify_ring_posts`](crate::Stats::notify_ring_posts) counts the posts.
    ///
    /// ```
    /// use aioctx::{AioContext, Backend};
    /// let ctx = AioContext::builder().backend(Backend::IoUring).wake_by_msg_ring(true).build()?;
    /// let remote = ctx.remote();
    /// let waker = std::thread::spawn(move || remote.spawn(async { 6 * 7 }));
    /// let task = waker.join().unwrap();
    /// assert_eq!(ctx.block_on(task).unwrap(), 42);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wake_by_msg_ring(mut self, on: bool) -> Self {
        self.wake_by_msg_ring = on;
        self
    }

    /// Fault injection: behave as if io_uring setup failed with `errno` (e.g. `libc::EPERM` as a seccomp
    /// filter would make it). `Backend::Auto` then falls back to epoll; a forced `Backend::IoUring` fails.
    /// Only with the `test-util` feature.
    ///
    /// ```
    /// use aioctx::{AioContext, Backend};
    /// let ctx = AioContext::builder().simulate_io_uring_unavailable(libc::EPERM).build()?;
    /// assert_ne!(ctx.backend(), Backend::IoUring); // Auto fell back
    /// let forced = AioContext::builder().backend(Backend::IoUring);
    /// assert!(forced.simulate_io_uring_unavailable(libc::EPERM).build().is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[cfg(feature = "test-util")]
    pub fn simulate_io_uring_unavailable(mut self, errno: i32) -> Self {
        self.simulate_uring_errno = Some(errno);
        self
    }

    /// Starts with time paused, for deterministic tests (tokio's `start_paused`): the `aioctx::time`
    /// futures run on the context's virtual clock, which starts paused, and
    /// [`AioContext::block_on`](crate::AioContext::block_on) auto-advances it: when an iteration finds
    /// nothing to do, virtual time jumps to the next virtual timer instead of the loop sleeping.
    ///
    /// A time future reads its clock when it is created, so create it while the context is current
    /// (inside `block_on(async { .. })` or a task): `ctx.block_on(sleep(d))` builds the sleep before
    /// `block_on` makes the context current, and it runs on real time.
    ///
    /// ```
    /// use std::time::Duration;
    /// let ctx = aioctx::AioContext::builder().start_paused(true).build()?;
    /// let t0 = ctx.virtual_clock().now_ns();
    /// // An hour of virtual time passes at once: block_on jumps to the sleep's deadline. (The sleep is
    /// // created inside the context: outside one, it would measure real time.)
    /// ctx.block_on(async { aioctx::time::sleep(Duration::from_secs(3600)).await });
    /// assert!(ctx.virtual_clock().now_ns() - t0 >= 3_600_000_000_000);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start_paused(mut self, paused: bool) -> Self {
        self.start_paused = paused;
        self
    }

    /// The bounds of the context's blocking thread pool ([`spawn_blocking`](crate::spawn_blocking)): at
    /// most `max` workers (default 64), idle ones above `min` (default 0) exit after 10 s. Checked by
    /// `build` (`InvalidInput` if `max` is 0 or `min > max`).
    ///
    /// ```
    /// use aioctx::AioContext;
    /// let ctx = AioContext::builder().thread_pool(1, 2).build()?;
    /// let sum = ctx.block_on(ctx.spawn_blocking(|| (1..=10).sum::<u32>())).unwrap();
    /// assert_eq!(sum, 55);
    /// assert!(AioContext::builder().thread_pool(3, 2).build().is_err()); // min > max
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn thread_pool(mut self, min: usize, max: usize) -> Self {
        self.pool_size = (min, max);
        self
    }

    /// How long a handler's poll function may find nothing before the loop stops calling it while it
    /// busy-polls (QEMU's 7 s, the default). The handler goes back on the poll list as soon as its fd
    /// fires. Only the io_uring monitor does this: it notices such an fd during polling by peeking its
    /// completion queue, which epoll and poll cannot do without a syscall.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::builder()
    ///     .poll_max_ns(32_768)
    ///     .poll_idle_timeout(std::time::Duration::from_secs(1))
    ///     .build()?;
    /// # drop(ctx);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.poll_idle_timeout = timeout;
        self
    }

    /// All polling parameters at once.
    ///
    /// ```
    /// use aioctx::{AioContext, PollParams};
    /// let ctx = AioContext::builder().poll_params(PollParams::IOTHREAD).build()?;
    /// assert_eq!(ctx.poll_params(), PollParams::IOTHREAD);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_params(mut self, params: PollParams) -> Self {
        self.poll = params;
        self
    }

    /// The io_uring setup errno to simulate, if any (`test-util`).
    pub(super) fn simulate_uring_errno(&self) -> Option<i32> {
        self.simulate_uring_errno
    }
}
