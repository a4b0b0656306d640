//! The io_uring monitor (QEMU's fdmon-io_uring.c): fd readiness, the wait's timeout and user SQEs on one
//! ring per context.
//!
//! - **Readiness**: each watched fd has one one-shot `POLL_ADD` in flight, re-armed as soon as its
//!   completion is reaped. A handler that does not consume its fd is reported again at the next wait, so
//!   the level-triggered contract of the other monitors holds. (Multishot polls are edge-triggered.)
//! - **Changes are queued**: adding, changing and removing fds only queues SQEs; they go to the kernel
//!   with the next `io_uring_enter`. Removal queues a `POLL_REMOVE`, and the poll slot is freed only when
//!   the `POLL_ADD` itself completes (usually with `-ECANCELED`), so a late completion can never be taken
//!   for a newer registration of the same fd.
//! - **One syscall per wait**: the wait is a single `io_uring_enter` that submits everything queued and
//!   waits for one completion with the nanosecond timeout passed as an extended argument
//!   (`IORING_ENTER_EXT_ARG`, Linux 5.11).
//! - **need_wait**: the loop may busy-poll only while no completion is ready; checking the CQ is two loads
//!   of shared memory, no syscall. Queued SQEs are submitted (without waiting) before polling starts, so
//!   polling never holds back a submission.
//! - **Deferred task running**: the ring is set up with `SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG`
//!   (Linux 6.1; older kernels get a plain ring). Completions are then posted only when the home thread
//!   enters the kernel, which it does anyway, and the kernel flags pending ones in the SQ ring, so the
//!   polling phase still sees them without a syscall. The flag is only a hint: the kernel raises it
//!   after publishing the work, so it can outlive the work it announced. It therefore stops busy-polling
//!   but never stops the loop from sleeping; the sleeping enter runs pending work first anyway. Measured with the loop-tour example (polling off,
//!   eventfd kick to completion across threads): p50 13.7 us with a plain ring, 2.1 us with deferred
//!   task running (epoll: 1.1 us).
//! - **Waited on from outside** (glib through the context's GSource, or the `MainLoop`; QEMU 10.2 does
//!   the same): the ring fd is the one fd an outside poller watches; it is readable while CQEs wait.
//!   Queued SQEs go out in the prepare step, CQEs are reaped in dispatch. A ring with deferred task
//!   running cannot serve: its completions wait as task work that only an enter of the home thread
//!   posts, and that wakes no poller of the ring fd (an eventfd registered with the ring is signalled,
//!   but only after an RCU grace period: 15-35 ms measured on Linux 6.18). So `make_pollable`
//!   replaces such a ring with a plain one, re-arming every fd's poll there: possible only while no
//!   user SQE is in flight (their memory and callbacks belong to the old ring), so until then it
//!   reports false and the caller bounds its waits (see `context/external.rs`).
//! - **User SQEs** (QEMU's `aio_add_sqe`): code running in the context queues its own SQE with a completion
//!   callback. Those go out at the next wait, or earlier when the SQ is full or `max_batch` SQEs are
//!   queued; their completions are handed to the loop, which runs the callbacks first in dispatch.
//!
//! ## Buffer lifetimes
//!
//! An SQE may point at memory the kernel reads or writes until the matching CQE is posted, whatever
//! happens in userspace meanwhile. This module never owns such memory: it only carries `user_data`. The
//! contract of [`AioContext::add_sqe`](crate::AioContext::add_sqe) puts the memory in the completion
//! callback's keeping (or in memory the caller otherwise keeps alive), and the loop drops a callback only
//! after its CQE was reaped. The one place where that could break is teardown: dropping the ring while
//! operations are in flight would let the kernel finish them into freed memory. So before the context
//! drops its callbacks it calls `cancel_user_ops`, which submits an `ASYNC_CANCEL` for
//! every user operation still in flight and waits until each has posted its CQE (cancelled or done).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use slab::Slab;

use super::{Backend, Completion, Event, Interest, MonitorOps, Readiness};
use crate::counter::Counter;
use crate::sys;

/// Kinds of operation, in the top byte of `user_data`.
const KIND_SHIFT: u32 = 56;
const KIND_POLL: u64 = 1;
const KIND_POLL_REMOVE: u64 = 2;
const KIND_USER: u64 = 3;
const KIND_CANCEL: u64 = 4;
/// A CQE another thread posted with `IORING_OP_MSG_RING` to wake the loop (`context::msg_ring`):
/// it carries no work, its arrival ended the wait.
const KIND_WAKE: u64 = 5;

/// The `user_data` of the wake-up CQEs other threads post into a context's ring.
pub(crate) const WAKE_USER_DATA: u64 = KIND_WAKE << KIND_SHIFT;
const INDEX_MASK: u64 = (1 << KIND_SHIFT) - 1;

fn user_data(kind: u64, index: u64) -> u64 {
    (kind << KIND_SHIFT) | (index & INDEX_MASK)
}

/// The `user_data` the monitor puts on a user SQE for callback slot `key`.
pub(crate) fn user_sqe_data(key: usize) -> u64 {
    user_data(KIND_USER, key as u64)
}

/// The callback slots of the user operations in flight. Slots are slab keys, so dense and reused:
/// a flag per slot makes insert and remove O(1) without hashing, twice per I/O on the hot path.
#[derive(Debug, Default)]
struct InflightSlots {
    in_flight: Vec<bool>,
    count: usize,
}

impl InflightSlots {
    fn insert(&mut self, slot: usize) {
        if slot >= self.in_flight.len() {
            self.in_flight.resize(slot + 1, false);
        }
        if !std::mem::replace(&mut self.in_flight[slot], true) {
            self.count += 1;
        }
    }

    fn remove(&mut self, slot: usize) {
        if let Some(flag) = self.in_flight.get_mut(slot) {
            if std::mem::replace(flag, false) {
                self.count -= 1;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.in_flight
            .iter()
            .enumerate()
            .filter_map(|(slot, &flag)| flag.then_some(slot))
    }
}

/// The default ring size (QEMU uses 128 as well). The CQ is twice as large.
pub(crate) const DEFAULT_ENTRIES: u32 = 128;

/// The io_uring monitor's counters (home thread writes, any thread reads).
#[derive(Debug, Default)]
pub(crate) struct UringCounters {
    pub(crate) enters: Counter,
    pub(crate) sqes_submitted: Counter,
    pub(crate) cqes_reaped: Counter,
    pub(crate) cq_peek_hits: Counter,
}

struct PollSlot {
    fd: RawFd,
    token: u64,
    interest: Interest,
    /// A POLL_REMOVE was queued; free the slot when the POLL_ADD completes.
    removed: bool,
}

pub(crate) struct UringMonitor {
    ring: IoUring,
    polls: Slab<PollSlot>,
    by_fd: HashMap<RawFd, usize>,
    /// SQEs that did not fit in the SQ; they go first at the next submission.
    backlog: VecDeque<squeue::Entry>,
    /// User operations whose CQE has not arrived yet.
    user_inflight: InflightSlots,
    /// User SQEs queued since the last submission, for `max_batch`.
    user_queued: usize,
    max_batch: usize,
    /// Reused buffer for reaped CQEs.
    cqes: Vec<cqueue::Entry>,
    stats: Arc<UringCounters>,
    /// The ring defers task running (completions are posted only when the home thread enters).
    deferred: bool,
    /// Which ring this is: a new number whenever the monitor replaces its ring, so that a wake-up
    /// target made for the old one can tell (see [`MonitorOps::ring_id`]).
    generation: u64,
}

fn next_ring_generation() -> u64 {
    // Relaxed: only distinctness matters.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Why io_uring cannot be used here, as an error for a forced backend (and a reason for `Auto` to fall
/// back to epoll).
pub(crate) fn unavailable(err: io::Error) -> io::Error {
    let hint = match err.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring",
        Some(libc::EPERM) => "io_uring is forbidden (kernel.io_uring_disabled or a seccomp filter)",
        Some(libc::ENOMEM) => "no memory for the ring (RLIMIT_MEMLOCK?)",
        Some(libc::EINVAL) => "the kernel lacks a feature aioctx needs",
        _ => "io_uring setup failed",
    };
    sys::with_context(err, format!("io_uring unavailable: {hint}"))
}

impl UringMonitor {
    /// Sets up a ring and checks that the kernel offers what the monitor uses.
    pub(crate) fn new(
        entries: u32,
        max_batch: usize,
        stats: Arc<UringCounters>,
    ) -> io::Result<Self> {
        let (ring, deferred) = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(entries)
        {
            Ok(ring) => (ring, true),
            Err(_) => (IoUring::new(entries).map_err(unavailable)?, false),
        };
        let mut monitor = Self::with_ring(ring, max_batch, stats)?;
        monitor.deferred = deferred;
        Ok(monitor)
    }

    /// A ring whose fd becomes readable when completions arrive, for contexts that sleep in epoll or
    /// poll: no deferred task running, which would hold completions back until the next enter.
    pub(crate) fn new_user_sqe_ring(entries: u32, stats: Arc<UringCounters>) -> io::Result<Self> {
        let ring = IoUring::new(entries).map_err(unavailable)?;
        Self::with_ring(ring, 0, stats)
    }

    fn with_ring(ring: IoUring, max_batch: usize, stats: Arc<UringCounters>) -> io::Result<Self> {
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            return Err(unavailable(io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(unavailable)?;
        let needed = [
            opcode::PollAdd::CODE,
            opcode::PollRemove::CODE,
            opcode::AsyncCancel::CODE,
            opcode::Nop::CODE,
        ];
        if !needed.iter().all(|&op| probe.is_supported(op)) {
            return Err(unavailable(io::Error::from_raw_os_error(libc::EINVAL)));
        }
        Ok(Self {
            ring,
            polls: Slab::new(),
            by_fd: HashMap::new(),
            backlog: VecDeque::new(),
            user_inflight: InflightSlots::default(),
            user_queued: 0,
            max_batch,
            cqes: Vec::new(),
            stats,
            deferred: false,
            generation: next_ring_generation(),
        })
    }

    /// The ring's fd (readable when completions wait, for a user-SQE ring watched by epoll or poll).
    pub(crate) fn ring_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.ring.as_raw_fd()
    }

    /// Queues an SQE, submitting early if the SQ is full; what still does not fit waits in the backlog.
    fn queue(&mut self, sqe: squeue::Entry) {
        if self.backlog.is_empty() {
            // SAFETY: the entries we queue carry no pointers, or (user SQEs) pointers whose validity until
            // completion the caller of `add_sqe` guaranteed.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            self.submit_now();
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(sqe);
    }

    /// Moves backlog entries into the SQ, submitting whenever it fills. Returns false if the kernel
    /// refused to take more (EBUSY: too many completions pending), leaving the rest queued.
    fn drain_backlog(&mut self) -> bool {
        while let Some(sqe) = self.backlog.front() {
            // SAFETY: as in `queue`.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.backlog.pop_front();
                continue;
            }
            if !self.submit_now() {
                return false;
            }
        }
        true
    }

    /// `io_uring_enter` to submit what is queued, without waiting. Returns false on EBUSY/EAGAIN.
    fn submit_now(&mut self) -> bool {
        self.stats.enters.bump();
        self.user_queued = 0;
        match self.ring.submit() {
            Ok(n) => {
                self.stats.sqes_submitted.add(n as u64);
                true
            }
            Err(err) => !matches!(err.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)),
        }
    }

    fn arm_poll(&mut self, key: usize) {
        let slot = &self.polls[key];
        let sqe = opcode::PollAdd::new(types::Fd(slot.fd), slot.interest.poll_bits())
            .build()
            .user_data(user_data(KIND_POLL, key as u64));
        self.queue(sqe);
    }

    /// Reaps every available CQE into `out` and `completions`, re-arming polls.
    fn reap(&mut self, out: &mut Vec<Event>, completions: &mut Vec<Completion>) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion());
        self.stats.cqes_reaped.add(cqes.len() as u64);
        for cqe in cqes.drain(..) {
            let ud = cqe.user_data();
            let index = ud & INDEX_MASK;
            match ud >> KIND_SHIFT {
                KIND_POLL => self.poll_completed(index as usize, cqe.result(), out),
                KIND_USER => {
                    self.user_inflight.remove(index as usize);
                    completions.push(Completion {
                        key: index as usize,
                        result: cqe.result(),
                        flags: cqe.flags(),
                    });
                }
                // A wake-up CQE only had to end the wait; POLL_REMOVE and ASYNC_CANCEL results only
                // say whether the target was still there.
                _ => {}
            }
        }
        self.cqes = cqes;
    }

    fn poll_completed(&mut self, key: usize, result: i32, out: &mut Vec<Event>) {
        let Some(slot) = self.polls.get(key) else {
            return;
        };
        if slot.removed {
            self.polls.remove(key);
            return;
        }
        if result >= 0 {
            out.push(Event {
                token: slot.token,
                readiness: Readiness::from_poll_bits(result as u32),
            });
            self.arm_poll(key);
        } else if result != -libc::ECANCELED {
            // The fd cannot be polled (closed under us, say). Report an error once; re-arming would only
            // fail again at once.
            out.push(Event {
                token: slot.token,
                readiness: Readiness::ERROR,
            });
        }
    }
}

impl MonitorOps for UringMonitor {
    fn add(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let key = self.polls.insert(PollSlot {
            fd,
            token,
            interest,
            removed: false,
        });
        self.by_fd.insert(fd, key);
        self.arm_poll(key);
        Ok(())
    }

    fn modify(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.remove(fd);
        self.add(fd, token, interest)
    }

    fn remove(&mut self, fd: RawFd) {
        let Some(key) = self.by_fd.remove(&fd) else {
            return;
        };
        self.polls[key].removed = true;
        let sqe = opcode::PollRemove::new(user_data(KIND_POLL, key as u64))
            .build()
            .user_data(user_data(KIND_POLL_REMOVE, key as u64));
        self.queue(sqe);
    }

    fn wait(
        &mut self,
        timeout_ns: i64,
        out: &mut Vec<Event>,
        completions: &mut Vec<Completion>,
    ) -> io::Result<()> {
        let drained = self.drain_backlog();
        // Never sleep with completions already waiting to be reaped. Completions still held as task
        // work (the TASKRUN flag) need no special case: the waiting enter runs that work first and
        // returns at once if it posted a CQE, and the flag may be stale (see `completions_ready`).
        let timeout_ns = if self.completions_ready() {
            0
        } else {
            timeout_ns
        };
        let queued = {
            let sq = self.ring.submission();
            !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
        };
        let result = if timeout_ns == 0 {
            if queued {
                self.stats.enters.bump();
                self.ring.submit()
            } else {
                Ok(0)
            }
        } else if !drained {
            // The kernel is refusing submissions until we reap; do not sleep on top of that.
            Ok(0)
        } else {
            self.stats.enters.bump();
            if timeout_ns < 0 {
                self.ring.submit_and_wait(1)
            } else {
                let ts = types::Timespec::new()
                    .sec((timeout_ns / 1_000_000_000) as u64)
                    .nsec((timeout_ns % 1_000_000_000) as u32);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        self.user_queued = 0;
        match result {
            Ok(n) => self.stats.sqes_submitted.add(n as u64),
            Err(err) => match err.raw_os_error() {
                // Timeout, signal, or the CQ is full (reap below and go on).
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => {
                    return Err(sys::with_context(
                        err,
                        "io_uring_enter in the io_uring fd monitor",
                    ))
                }
            },
        }
        self.reap(out, completions);
        Ok(())
    }

    fn need_wait(&mut self) -> bool {
        if !self.backlog.is_empty() || !self.ring.submission().is_empty() {
            return true;
        }
        // With deferred task running, finished operations wait as task work (flagged in the SQ ring)
        // until an io_uring_enter posts their CQEs. A stale flag (see `completions_ready`) costs one
        // sleep instead of a spin (the next task work the kernel runs clears it), and the polling
        // phase it ended counts as a hit.
        let ready = self.completions_ready() || self.ring.submission().taskrun();
        if ready {
            self.stats.cq_peek_hits.bump();
        }
        ready
    }

    /// CQEs wait in the ring. The TASKRUN flag is deliberately not consulted: the kernel sets it after
    /// publishing the task work, so when our enter runs (and empties) the list in between, the flag is
    /// left set with nothing behind it, and it stays set until more task work arrives. Taking it as
    /// "do not sleep" made an idle loop spin at 100% CPU on a zero-timeout enter that never clears it.
    fn completions_ready(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    #[cfg(all(test, not(loom)))]
    fn uring_fd(&self) -> Option<RawFd> {
        Some(self.ring_fd())
    }

    fn external_fds(&self, out: &mut Vec<libc::pollfd>) {
        out.push(libc::pollfd {
            fd: self.ring_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }

    /// Swaps a deferred-task-running ring for a plain one (see the module docs), once no user SQE is
    /// in flight. The old ring's polls point at no memory: dropping the ring cancels them, and each
    /// fd's poll is armed again on the new ring (a completion reaped from neither ring is not lost:
    /// readiness is level-triggered, and the new poll reports it again).
    fn make_pollable(&mut self) -> bool {
        if !self.deferred {
            return true;
        }
        if !self.user_inflight.is_empty() {
            return false;
        }
        let Ok(ring) = IoUring::new(self.ring.params().sq_entries()) else {
            return false;
        };
        self.ring = ring;
        self.deferred = false;
        self.generation = next_ring_generation();
        // Only poll adds and removes can be queued: no user SQE is in flight.
        self.backlog.clear();
        self.user_queued = 0;
        self.polls.retain(|_, slot| !slot.removed);
        let keys: Vec<usize> = self.polls.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.arm_poll(key);
        }
        true
    }

    fn set_max_batch(&mut self, max_batch: usize) {
        self.max_batch = max_batch;
    }

    fn submit_pending(&mut self) {
        if !self.backlog.is_empty() {
            self.drain_backlog();
        }
        if !self.ring.submission().is_empty() {
            self.submit_now();
        }
    }

    fn push_sqe(&mut self, sqe: squeue::Entry) -> io::Result<()> {
        let ud = sqe.get_user_data();
        debug_assert_eq!(ud >> KIND_SHIFT, KIND_USER, "user SQEs carry user_sqe_data");
        self.user_inflight.insert((ud & INDEX_MASK) as usize);
        self.queue(sqe);
        self.user_queued += 1;
        if self.max_batch > 0 && self.user_queued >= self.max_batch {
            self.submit_now();
        }
        Ok(())
    }

    /// Cancels every user operation in flight and waits until each has completed, so that no memory
    /// they use is released while the kernel may still touch it. Returns their completions.
    fn cancel_user_ops(&mut self) -> (Vec<Completion>, Vec<usize>) {
        let mut completions = Vec::new();
        let mut events = Vec::new();
        let inflight: Vec<usize> = self.user_inflight.slots().collect();
        for slot in inflight {
            let sqe = opcode::AsyncCancel::new(user_sqe_data(slot))
                .build()
                .user_data(user_data(KIND_CANCEL, 0));
            self.queue(sqe);
        }
        // Transient refusals (EINTR, EBUSY, EAGAIN) are retried a bounded number of times.
        let mut attempts = 0;
        while (!self.user_inflight.is_empty() || !self.backlog.is_empty()) && attempts < 100_000 {
            attempts += 1;
            self.drain_backlog();
            self.stats.enters.bump();
            match self.ring.submit_and_wait(1) {
                Ok(n) => self.stats.sqes_submitted.add(n as u64),
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                    ) => {}
                Err(_) => break,
            }
            self.reap(&mut events, &mut completions);
        }
        // Whatever is still in flight may still be written by the kernel: its owner must leak it.
        let stuck = self.user_inflight.slots().collect();
        (completions, stuck)
    }

    fn backend(&self) -> Backend {
        Backend::IoUring
    }

    fn ring_id(&self) -> Option<(std::os::fd::RawFd, u64)> {
        Some((self.ring_fd(), self.generation))
    }
}

#[cfg(all(test, not(loom)))]
mod inflight_slots_tests {
    use super::InflightSlots;

    #[test]
    fn slots_are_counted_once_and_listed_in_order() {
        let mut slots = InflightSlots::default();
        assert!(slots.is_empty());
        slots.insert(5);
        slots.insert(0);
        slots.insert(5);
        assert_eq!(slots.slots().collect::<Vec<_>>(), [0, 5]);
        slots.remove(5);
        slots.remove(5);
        slots.remove(1_000);
        assert!(!slots.is_empty());
        assert_eq!(slots.slots().collect::<Vec<_>>(), [0]);
        slots.remove(0);
        assert!(slots.is_empty());
        assert_eq!(slots.slots().count(), 0);
    }
}
