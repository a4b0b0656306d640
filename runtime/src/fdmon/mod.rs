//! fd monitors: the part of the loop that sleeps in the kernel until an fd is ready or a timeout passes.
//!
//! Each monitor implements [`MonitorOps`]. [`FdMonitor`] wraps the active one and keeps the table of
//! registered fds, so it can switch monitors the way QEMU does: the poll monitor upgrades itself to epoll
//! once 64 fds are registered (scanning a pollfd array per wait is O(n), epoll is O(ready)), whether it
//! was chosen or named, and an epoll monitor that meets an fd epoll cannot watch (a regular file gives
//! `EPERM`) falls back to poll, unless the user named the epoll backend, in which case the registration
//! fails with that error instead. A poll monitor that fell back never upgrades again.

mod backend;
mod epoll;
pub(crate) mod io_uring;
mod poll;
mod readiness;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use ::io_uring::squeue;

pub use backend::Backend;
pub(crate) use io_uring::UringCounters;
pub(crate) use readiness::{Interest, Readiness};

/// The number of fds at which the poll monitor switches to epoll (QEMU's EPOLL_ENABLE_THRESHOLD).
const EPOLL_ENABLE_THRESHOLD: usize = 64;

/// One ready fd: the token it was registered with and what happened.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Event {
    pub(crate) token: u64,
    pub(crate) readiness: Readiness,
}

/// Interprets a wait syscall's return value: the number of ready entries, 0 when a signal interrupted
/// the wait (the loop simply iterates again), or the error with what was waiting.
fn wait_result(ret: libc::c_int, what: &str) -> io::Result<usize> {
    if ret >= 0 {
        return Ok(ret as usize);
    }
    let err = io::Error::last_os_error();
    match err.kind() {
        io::ErrorKind::Interrupted => Ok(0),
        _ => Err(crate::sys::with_context(err, what)),
    }
}

/// A user SQE's completion: the callback slot it belongs to and the CQE's result and flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Completion {
    pub(crate) key: usize,
    pub(crate) result: i32,
    pub(crate) flags: u32,
}

/// How to build a monitor.
#[derive(Clone, Debug)]
pub(crate) struct MonitorConfig {
    pub(crate) backend: Backend,
    /// The user named this backend: no fallback, no switching.
    pub(crate) forced: bool,
    pub(crate) ring_entries: u32,
    pub(crate) max_batch: usize,
    /// Fault injection: pretend io_uring setup failed with this errno.
    pub(crate) simulate_uring_errno: Option<i32>,
    pub(crate) uring_stats: Arc<UringCounters>,
}

/// What every fd monitor provides.
// Without the glib feature nothing waits on a monitor from outside yet.
#[cfg_attr(not(feature = "glib"), allow(dead_code))]
pub(crate) trait MonitorOps {
    /// Starts watching `fd` for `interest` (never empty).
    fn add(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()>;
    /// Changes what `fd` is watched for.
    fn modify(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()>;
    /// Stops watching `fd`. Best effort: the fd may already be closed.
    fn remove(&mut self, fd: RawFd);
    /// Sleeps up to `timeout_ns` (-1: forever, 0: just check) and appends ready fds to `out` and user SQE
    /// completions to `completions`.
    fn wait(
        &mut self,
        timeout_ns: i64,
        out: &mut Vec<Event>,
        completions: &mut Vec<Completion>,
    ) -> io::Result<()>;
    /// Whether the monitor has work that forbids userspace polling (io_uring: queued SQEs or ready CQEs).
    fn need_wait(&mut self) -> bool {
        false
    }
    /// Whether completions are waiting to be reaped (so a wait must not sleep).
    fn completions_ready(&mut self) -> bool {
        false
    }
    /// Hands queued submissions to the kernel without waiting (before the loop busy-polls).
    fn submit_pending(&mut self) {}
    /// QEMU's `aio-max-batch` at run time: submit user SQEs once this many are queued (0: at the
    /// next wait). Only io_uring batches.
    fn set_max_batch(&mut self, _max_batch: usize) {}
    /// The fds a poller outside the loop watches to learn that this monitor has events (QEMU 10.2's
    /// fdmon `gsource_prepare`): epoll and io_uring expose their own fd, poll every fd it watches.
    fn external_fds(&self, out: &mut Vec<libc::pollfd>);
    /// Makes [`external_fds`](Self::external_fds) wake an outside poller for every event. Only
    /// io_uring has work to do (see its module docs); false while that is not possible yet.
    fn make_pollable(&mut self) -> bool {
        true
    }
    /// The io_uring monitor's ring fd, for tests that put the ring in a state the kernel can reach.
    #[cfg(all(test, not(loom)))]
    fn uring_fd(&self) -> Option<RawFd> {
        None
    }
    /// Queues a user SQE whose `user_data` the caller already set.
    fn push_sqe(&mut self, _sqe: squeue::Entry) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "user SQEs need the io_uring backend; this context uses {:?}",
                self.backend()
            ),
        ))
    }
    /// Teardown: cancels user SQEs in flight and waits for their completions. Returns those completions
    /// and the callback slots of operations that could not be confirmed complete (their memory must be
    /// leaked, never freed).
    fn cancel_user_ops(&mut self) -> (Vec<Completion>, Vec<usize>) {
        (Vec::new(), Vec::new())
    }
    fn backend(&self) -> Backend;
    /// The io_uring ring the loop waits on, as `(fd, generation)`; the generation changes whenever
    /// the ring is replaced. `None` when the loop does not wait on a ring.
    fn ring_id(&self) -> Option<(RawFd, u64)> {
        None
    }
}

#[derive(Clone, Copy, Debug)]
struct Registered {
    token: u64,
    interest: Interest,
}

/// The context's fd monitor with QEMU's upgrade and fallback rules.
pub(crate) struct FdMonitor {
    ops: Box<dyn MonitorOps>,
    fds: BTreeMap<RawFd, Registered>,
    /// The user named the epoll backend: report fds it refuses instead of falling back to poll.
    epoll_named: bool,
    /// epoll refused one of our fds; stay on poll from then on.
    epoll_refused: bool,
    /// QEMU's `aio-max-batch`, kept whatever the backend (only io_uring uses it).
    max_batch: usize,
}

impl FdMonitor {
    /// Creates the monitor. `Auto` tries io_uring and falls back to epoll when the kernel refuses it.
    pub(crate) fn new(config: &MonitorConfig) -> io::Result<Self> {
        let ops: Box<dyn MonitorOps> = match config.backend {
            Backend::Poll => Box::new(poll::PollMonitor::new()),
            Backend::Epoll => Box::new(epoll::EpollMonitor::new()?),
            Backend::IoUring => Box::new(Self::uring(config)?),
            Backend::Auto => match Self::uring(config) {
                Ok(uring) => Box::new(uring),
                Err(_) => Box::new(epoll::EpollMonitor::new()?),
            },
        };
        Ok(Self {
            ops,
            fds: BTreeMap::new(),
            epoll_named: config.forced && config.backend == Backend::Epoll,
            epoll_refused: false,
            max_batch: config.max_batch,
        })
    }

    fn uring(config: &MonitorConfig) -> io::Result<io_uring::UringMonitor> {
        if let Some(errno) = config.simulate_uring_errno {
            return Err(io_uring::unavailable(io::Error::from_raw_os_error(errno)));
        }
        io_uring::UringMonitor::new(
            config.ring_entries,
            config.max_batch,
            Arc::clone(&config.uring_stats),
        )
    }

    pub(crate) fn completions_ready(&mut self) -> bool {
        self.ops.completions_ready()
    }

    pub(crate) fn submit_pending(&mut self) {
        self.ops.submit_pending();
    }

    pub(crate) fn set_max_batch(&mut self, max_batch: usize) {
        self.max_batch = max_batch;
        self.ops.set_max_batch(max_batch);
    }

    pub(crate) fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// See [`MonitorOps::external_fds`].
    #[cfg_attr(not(feature = "glib"), allow(dead_code))]
    pub(crate) fn external_fds(&self, out: &mut Vec<libc::pollfd>) {
        self.ops.external_fds(out);
    }

    /// See [`MonitorOps::make_pollable`].
    #[cfg_attr(not(feature = "glib"), allow(dead_code))]
    pub(crate) fn make_pollable(&mut self) -> bool {
        self.ops.make_pollable()
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn uring_fd(&self) -> Option<RawFd> {
        self.ops.uring_fd()
    }

    pub(crate) fn push_sqe(&mut self, sqe: squeue::Entry) -> io::Result<()> {
        self.ops.push_sqe(sqe)
    }

    /// Teardown: see [`MonitorOps::cancel_user_ops`].
    pub(crate) fn cancel_user_ops(&mut self) -> (Vec<Completion>, Vec<usize>) {
        self.ops.cancel_user_ops()
    }

    pub(crate) fn backend(&self) -> Backend {
        self.ops.backend()
    }

    /// See [`MonitorOps::ring_id`].
    pub(crate) fn ring_id(&self) -> Option<(RawFd, u64)> {
        self.ops.ring_id()
    }

    pub(crate) fn need_wait(&mut self) -> bool {
        self.ops.need_wait()
    }

    /// Registers, re-registers or (with no interest) unregisters `fd`.
    pub(crate) fn set(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        match self.fds.get(&fd).copied() {
            None if interest.is_none() => Ok(()),
            Some(_) if interest.is_none() => {
                self.ops.remove(fd);
                self.fds.remove(&fd);
                Ok(())
            }
            None => {
                self.add_with_fallback(fd, token, interest)?;
                self.fds.insert(fd, Registered { token, interest });
                self.maybe_upgrade();
                Ok(())
            }
            Some(old) => {
                if old.interest != interest || old.token != token {
                    self.ops.modify(fd, token, interest)?;
                    self.fds.insert(fd, Registered { token, interest });
                }
                Ok(())
            }
        }
    }

    pub(crate) fn wait(
        &mut self,
        timeout_ns: i64,
        out: &mut Vec<Event>,
        completions: &mut Vec<Completion>,
    ) -> io::Result<()> {
        self.ops.wait(timeout_ns, out, completions)
    }

    fn add_with_fallback(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        match self.ops.add(fd, token, interest) {
            Err(err)
                if err.raw_os_error_deep() == Some(libc::EPERM)
                    && self.ops.backend() == Backend::Epoll
                    && !self.epoll_named =>
            {
                // QEMU's fdmon_epoll_disable: epoll cannot watch this fd (a regular file, say); poll can.
                self.epoll_refused = true;
                self.switch_to(Box::new(poll::PollMonitor::new()))?;
                self.ops.add(fd, token, interest)
            }
            other => other,
        }
    }

    fn maybe_upgrade(&mut self) {
        // A named poll backend upgrades too: that is what QEMU's poll monitor does, and scanning a
        // pollfd array per wait would make every loop with many fds O(n).
        if self.epoll_refused
            || self.ops.backend() != Backend::Poll
            || self.fds.len() < EPOLL_ENABLE_THRESHOLD
        {
            return;
        }
        let Ok(epoll) = epoll::EpollMonitor::new() else {
            return;
        };
        if self.switch_to(Box::new(epoll)).is_err() {
            // One fd refused: stay on poll, rebuilt from the table.
            self.epoll_refused = true;
            let _ = self.switch_to(Box::new(poll::PollMonitor::new()));
        }
    }

    /// Re-registers every fd with `ops` and makes it the active monitor.
    fn switch_to(&mut self, mut ops: Box<dyn MonitorOps>) -> io::Result<()> {
        for (&fd, reg) in &self.fds {
            ops.add(fd, reg.token, reg.interest)?;
        }
        self.ops = ops;
        Ok(())
    }
}

/// `raw_os_error` that also looks through aioctx's error wrapping.
trait RawOsErrorDeep {
    fn raw_os_error_deep(&self) -> Option<i32>;
}

impl RawOsErrorDeep for io::Error {
    fn raw_os_error_deep(&self) -> Option<i32> {
        self.raw_os_error().or_else(|| {
            let inner = self.get_ref()?;
            std::error::Error::source(inner)?
                .downcast_ref::<io::Error>()?
                .raw_os_error()
        })
    }
}
