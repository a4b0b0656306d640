//! The virtio-blk device: a task on an aioctx IoThread serving one virtqueue.
//!
//! - The guest's kick is an ioeventfd, waited for with a polling [`aioctx::io::NotifierWaiter`]
//!   (`EventNotifier::waiter_polling_with`) whose poll function peeks the avail ring. With busy-polling
//!   on, the device sees new requests in memory without a syscall; while the loop polls, guest
//!   notifications are disabled (`poll_begin`) and they are re-enabled right before the loop sleeps
//!   (`poll_end`, followed by one more peek), as QEMU's virtio does with `io_poll_begin`/`io_poll_end`.
//!   Outside poll mode the device turns notifications off while it drains the ring and back on
//!   (re-checking the ring) before it waits. With `VIRTIO_RING_F_EVENT_IDX`, as in QEMU, "off" is
//!   implicit: the guest kicks only when its avail index crosses the `avail_event` the device last
//!   published, so a polling device that does not re-publish it gets at most one kick; without
//!   EVENT_IDX it is the used ring's `VRING_USED_F_NO_NOTIFY` flag.
//! - Each chain is parsed by [`request::parse`] and runs as its own task: block I/O with
//!   `aioctx::fs::File::read_to_memory`/`write_from_memory` straight into guest memory ([`GuestRam`]
//!   makes those calls safe), then the status byte, the used ring, and the irqfd only when
//!   `Queue::needs_notification` says the guest wants an interrupt.
//! - Malformed chains complete with their error status and the device goes on serving.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use futures::task::AtomicWaker;

use aioctx::{EventNotifier, JoinHandle, Remote};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use aioctx::fs::MemRange;

use super::request::{self, Limits, Op, Rejected, Request, Segment, ID_BYTES};
use super::{GuestMemory, GuestRam, QueueConfig};

/// Counters the device keeps, readable from any thread.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Chains taken off the avail ring.
    pub requests: AtomicU64,
    /// Chains refused by the parser.
    pub rejected: AtomicU64,
    /// Valid requests whose block I/O failed.
    pub io_errors: AtomicU64,
    /// Interrupts raised (irqfd writes).
    pub interrupts: AtomicU64,
    /// The guest broke the ring itself (an avail index more than a queue size ahead, rings outside its
    /// memory): the device stopped serving the queue, as QEMU's `virtio_error` does, until restarted.
    pub broken: AtomicBool,
}

/// Builds virtio-queue's `Queue` for `config` and checks it against guest memory.
pub fn make_queue(mem: &GuestMemory, config: &QueueConfig) -> io::Result<Queue> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("virtqueue: {what}"));
    let mut queue = Queue::new(config.size).map_err(|e| bad(&e.to_string()))?;
    queue
        .try_set_desc_table_address(config.desc_table)
        .map_err(|e| bad(&e.to_string()))?;
    queue
        .try_set_avail_ring_address(config.avail_ring)
        .map_err(|e| bad(&e.to_string()))?;
    queue
        .try_set_used_ring_address(config.used_ring)
        .map_err(|e| bad(&e.to_string()))?;
    queue.set_event_idx(config.event_idx);
    queue.set_ready(true);
    if !queue.is_valid(mem) {
        return Err(bad("the rings do not fit in guest memory"));
    }
    Ok(queue)
}

/// The guest ranges of validated segments, split where a segment crosses regions (each range lies in
/// one region, as [`GuestRam`] requires). Fails if a segment is not (or no longer) inside guest memory.
pub fn guest_ranges(mem: &GuestMemory, data: &[Segment]) -> io::Result<Vec<MemRange>> {
    let mut ranges = Vec::with_capacity(data.len());
    for seg in data {
        let mut addr = seg.addr.0;
        for slice in mem.get_slices(seg.addr, seg.len as usize) {
            let slice = slice.map_err(|e| io::Error::other(format!("guest segment: {e}")))?;
            ranges.push(MemRange {
                addr,
                len: slice.len(),
            });
            addr += slice.len() as u64;
        }
    }
    Ok(ranges)
}

/// The iovecs of validated guest segments (host addresses, split where a segment crosses regions), for
/// a device that makes its own syscalls, such as the tokio twin in `benches`. Fails if a segment is not
/// (or no longer) inside guest memory.
pub fn guest_iovecs(mem: &GuestMemory, data: &[Segment]) -> io::Result<Vec<libc::iovec>> {
    let mut iov = Vec::with_capacity(data.len());
    for seg in data {
        for slice in mem.get_slices(seg.addr, seg.len as usize) {
            let slice = slice.map_err(|e| io::Error::other(format!("guest segment: {e}")))?;
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Ok(iov)
}

/// Writes the GET_ID answer (the serial, NUL-padded to 20 bytes, cut to the buffer) into `data`;
/// returns the bytes written.
pub fn write_id(mem: &GuestMemory, data: &[Segment], serial: &[u8; ID_BYTES]) -> io::Result<u32> {
    let mut written = 0usize;
    for seg in data {
        let take = (ID_BYTES - written).min(seg.len as usize);
        if take == 0 {
            break;
        }
        mem.write_slice(&serial[written..written + take], seg.addr)
            .map_err(|e| io::Error::other(format!("GET_ID: {e}")))?;
        written += take;
    }
    Ok(written as u32)
}

/// The serial GET_ID reports.
pub const SERIAL: &[u8; ID_BYTES] = b"aioctx-virtio-blk\0\0\0";

/// Puts a finished chain on the used ring, after writing its status byte; returns whether the guest
/// must be interrupted. Errors mean the ring itself is unusable (the device stops serving it).
pub fn complete(
    queue: &mut Queue,
    mem: &GuestMemory,
    head: u16,
    status: Option<(GuestAddress, u8)>,
    written: u32,
) -> io::Result<bool> {
    let used_len = match status {
        // The address was validated by the parser; the guest cannot unmap its own memory.
        Some((addr, code)) => match mem.write_obj(code, addr) {
            Ok(()) => written.saturating_add(1),
            Err(_) => 0,
        },
        None => 0,
    };
    queue
        .add_used(mem, head, used_len)
        .and_then(|()| queue.needs_notification(mem))
        .map_err(|e| io::Error::other(format!("used ring: {e}")))
}

/// Whether an fallocate mode is not implemented by the file system.
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    ) || e.kind() == io::ErrorKind::Unsupported
}

/// A parsed chain and its head index.
pub type Chain = (u16, Result<Request, Rejected>);

/// Takes every chain the guest published on the avail ring and parses it. Fails when the ring itself
/// is broken (an avail index more than a queue size ahead).
pub fn take_chains(
    queue: &mut Queue,
    mem: &GuestMemory,
    limits: &Limits,
) -> io::Result<Vec<Chain>> {
    let iter = queue
        .iter(mem)
        .map_err(|e| io::Error::other(format!("avail ring: {e}")))?;
    Ok(iter
        .map(|chain| (chain.head_index(), request::parse(mem, chain, limits)))
        .collect())
}

/// State shared by the serving task, its request tasks and the poll hooks, on the IoThread.
struct Shared {
    mem: Arc<GuestMemory>,
    /// The same memory, for block I/O (each operation keeps an `Arc` of it until it completes).
    ram: Arc<GuestRam>,
    queue: RefCell<Queue>,
    /// The loop is busy-polling (between `poll_begin` and `poll_end`): notifications stay disabled.
    polling: Cell<bool>,
    /// The guest broke the ring itself (avail index out of range, used ring unwritable).
    broken: Cell<bool>,
    disk: aioctx::fs::File,
    limits: Limits,
    irq: EventNotifier,
    counters: Arc<DeviceCounters>,
    in_flight: Cell<usize>,
    idle: RefCell<Option<Waker>>,
}

impl Shared {
    fn mark_broken(&self) {
        self.broken.set(true);
        self.counters.broken.store(true, Ordering::Relaxed);
    }

    /// Whether the avail ring holds chains the device has not taken (the poll function).
    fn has_work(&self) -> bool {
        let Ok(queue) = self.queue.try_borrow() else {
            return false;
        };
        !self.broken.get()
            && queue
                .avail_idx(&*self.mem, Ordering::Acquire)
                .is_ok_and(|idx| idx.0 != queue.next_avail())
    }

    fn set_notification(&self, enable: bool) {
        if let Ok(mut queue) = self.queue.try_borrow_mut() {
            let res = if enable {
                queue.enable_notification(&*self.mem).map(drop)
            } else {
                queue.disable_notification(&*self.mem)
            };
            if res.is_err() {
                self.mark_broken();
            }
        }
    }

    /// Takes every available chain, parses it and starts a task for it. Outside poll mode,
    /// notifications are off while draining and re-enabled afterwards, re-checking the ring so that a
    /// chain published meanwhile is not missed.
    fn drain(self: &Rc<Self>) {
        loop {
            let suppress = !self.polling.get();
            if suppress {
                self.set_notification(false);
            }
            let parsed = take_chains(&mut self.queue.borrow_mut(), &self.mem, &self.limits);
            let Ok(parsed) = parsed else {
                self.mark_broken();
                return;
            };
            for (head, req) in parsed {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                self.in_flight.set(self.in_flight.get() + 1);
                drop(aioctx::spawn_local(serve_request(self.clone(), head, req)));
            }
            if self.broken.get() || !suppress {
                return;
            }
            let more = self
                .queue
                .borrow_mut()
                .enable_notification(&*self.mem)
                .unwrap_or(false);
            if !more {
                return;
            }
        }
    }

    async fn run(&self, req: &Request) -> io::Result<u32> {
        match &req.op {
            Op::Read | Op::Write => {
                let write = req.op == Op::Write;
                let mut ranges = guest_ranges(&self.mem, &req.data)?;
                self.transfer(&mut ranges, req.offset, write).await?;
                Ok(if write { 0 } else { req.data_len as u32 })
            }
            Op::Flush => self.disk.sync_data().await.map(|()| 0),
            Op::GetId => write_id(&self.mem, &req.data, SERIAL),
            Op::Discard(ranges) => {
                for r in ranges {
                    // A discard is a hint: a file system that cannot punch holes keeps the data.
                    match self.disk.discard(r.offset, r.len).await {
                        Err(e) if !unsupported(&e) => return Err(e),
                        _ => {}
                    }
                }
                Ok(0)
            }
            Op::WriteZeroes(ranges) => {
                for r in ranges {
                    self.zero_range(r.offset, r.len, r.unmap).await?;
                }
                Ok(0)
            }
        }
    }

    /// Makes a range read as zeroes: a hole if allowed, else `FALLOC_FL_ZERO_RANGE`, else written
    /// zeroes (QEMU's fallbacks, for file systems without those fallocate modes).
    async fn zero_range(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap {
            match self.disk.discard(offset, len).await {
                Err(e) if unsupported(&e) => {}
                other => return other,
            }
        }
        match self.disk.write_zeroes(offset, len).await {
            Err(e) if unsupported(&e) => {}
            other => return other,
        }
        let chunk = len.min(1 << 20) as usize;
        let mut zeroes = vec![0u8; chunk];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk as u64) as usize;
            zeroes.truncate(n);
            let (res, buf) = self.disk.write_all_at(zeroes, offset + done).await;
            res?;
            zeroes = buf;
            done += n as u64;
        }
        Ok(())
    }

    /// preadv/pwritev between the disk and guest memory, resubmitting the rest after a short transfer.
    async fn transfer(
        &self,
        ranges: &mut [MemRange],
        mut offset: u64,
        write: bool,
    ) -> io::Result<()> {
        let mut first = 0;
        while first < ranges.len() {
            let rest = &ranges[first..];
            let n = if write {
                self.disk.write_from_memory(&self.ram, rest, offset).await?
            } else {
                self.disk.read_to_memory(&self.ram, rest, offset).await?
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short transfer at disk offset {offset}"),
                ));
            }
            offset += n as u64;
            let mut left = n;
            while first < ranges.len() && left >= ranges[first].len {
                left -= ranges[first].len;
                first += 1;
            }
            if left > 0 {
                ranges[first].addr += left as u64;
                ranges[first].len -= left;
            }
        }
        Ok(())
    }

    fn finish(&self, head: u16, status: Option<(GuestAddress, u8)>, written: u32) {
        let notify = {
            let mut queue = self.queue.borrow_mut();
            complete(&mut queue, &self.mem, head, status, written)
        };
        match notify {
            Ok(true) => {
                if self.irq.set().is_ok() {
                    self.counters.interrupts.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(false) => {}
            Err(_) => self.mark_broken(),
        }
        let left = self.in_flight.get() - 1;
        self.in_flight.set(left);
        if left == 0 {
            if let Some(w) = self.idle.take() {
                w.wake();
            }
        }
    }
}

async fn serve_request(shared: Rc<Shared>, head: u16, req: Result<Request, Rejected>) {
    let (status, written) = match req {
        Ok(req) => match shared.run(&req).await {
            Ok(written) => (Some((req.status, VIRTIO_BLK_S_OK as u8)), written),
            Err(_) => {
                shared.counters.io_errors.fetch_add(1, Ordering::Relaxed);
                (Some((req.status, VIRTIO_BLK_S_IOERR as u8)), 0)
            }
        },
        Err(rejected) => {
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            let status = rejected.status_addr.zip(rejected.reason.status());
            (status, 0)
        }
    };
    shared.finish(head, status, written);
}

/// The serving loop: drain the ring, sleep (or poll) until the guest publishes more, until stopped;
/// then wait for the requests in flight.
/// How a device is told to stop: a flag and the serving task's waker, set from any thread. Not the
/// kick eventfd: a front end may hand the same eventfd to several queues, and another queue's waiter
/// could then consume the wake-up meant for this one.
#[derive(Debug, Default)]
struct StopSignal {
    stopped: AtomicBool,
    waker: AtomicWaker,
}

impl StopSignal {
    fn raise(&self) {
        // Release pairs with the Acquire in `is_raised`: the task sees the flag once woken.
        self.stopped.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn is_raised(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Completes once the signal is raised.
    async fn raised(&self) {
        poll_fn(|cx| {
            // Register before checking, so that a raise in between still wakes this task.
            self.waker.register(cx.waker());
            if self.is_raised() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

async fn serve(shared: Rc<Shared>, kick: EventNotifier, stop: Arc<StopSignal>) -> io::Result<u16> {
    let waiter = kick.waiter_polling_with(
        {
            let s = shared.clone();
            move || s.has_work()
        },
        {
            let s = shared.clone();
            move || {
                s.polling.set(true);
                s.set_notification(false);
            }
        },
        {
            let s = shared.clone();
            move || {
                s.polling.set(false);
                s.set_notification(true);
            }
        },
    )?;
    while !stop.is_raised() {
        if !shared.broken.get() {
            shared.drain();
        }
        let kicked = std::pin::pin!(waiter.wait());
        let stopped = std::pin::pin!(stop.raised());
        futures::future::select(kicked, stopped).await;
    }
    poll_fn(|cx| {
        if shared.in_flight.get() == 0 {
            return Poll::Ready(());
        }
        *shared.idle.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
    // Every chain taken has been completed: this is where a resumed device starts again.
    let next_avail = shared.queue.borrow().next_avail();
    Ok(next_avail)
}

/// What a device is made of: the backing file, guest memory with the queue in it, the guest's
/// ioeventfd and irqfd, and the limits it enforces.
#[derive(Debug)]
pub struct DeviceParts {
    /// The disk image.
    pub disk: std::fs::File,
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    /// Where the virtqueue is.
    pub queue: QueueConfig,
    /// The guest's kick (ioeventfd).
    pub kick: EventNotifier,
    /// The guest's interrupt (irqfd).
    pub irq: EventNotifier,
    /// What requests the device accepts.
    pub limits: Limits,
}

/// A running virtio-blk device. Dropping it stops it (see [`stop`](Self::stop)); stop or drop it from
/// another thread than its IoThread, which it waits for. On the IoThread itself, stopping only asks
/// the device to stop, and it finishes on its own.
#[derive(Debug)]
pub struct VirtioBlkDevice {
    remote: Remote,
    stop: Arc<StopSignal>,
    task: Option<JoinHandle<io::Result<u16>>>,
    counters: Arc<DeviceCounters>,
    /// Keeps guest memory mapped while the device runs (operations in flight hold their own `Arc`).
    _mem: Arc<GuestMemory>,
}

impl VirtioBlkDevice {
    /// Starts the device on the context behind `remote` (an IoThread's), serving `parts.queue` of the
    /// guest's memory with `parts.disk` as the backing file, from the start of a fresh ring. It waits
    /// until the device task runs, so it fails with `WouldBlock` when called on that context's own
    /// thread (where it would wait forever).
    pub fn start(remote: &Remote, parts: DeviceParts) -> io::Result<Self> {
        Self::resume(remote, parts, 0)
    }

    /// Starts the device on a ring already in use: the next chain it takes is at avail index
    /// `next_avail` (vhost-user's `SET_VRING_BASE`, or what [`pause`](Self::pause) returned), and
    /// completions go on from the used index the ring holds in guest memory. Otherwise as
    /// [`start`](Self::start).
    pub fn resume(remote: &Remote, parts: DeviceParts, next_avail: u16) -> io::Result<Self> {
        Self::resume_with_counters(remote, parts, next_avail, Arc::default())
    }

    /// [`resume`](Self::resume), counting into `counters` (shared with earlier runs of the same queue,
    /// so that totals survive a pause).
    pub fn resume_with_counters(
        remote: &Remote,
        parts: DeviceParts,
        next_avail: u16,
        counters: Arc<DeviceCounters>,
    ) -> io::Result<Self> {
        if remote.is_home_thread() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "VirtioBlkDevice::start waits for the device task: call it from another thread than \
                 the IoThread that serves the device",
            ));
        }
        let DeviceParts {
            disk,
            mem,
            queue,
            kick,
            irq,
            limits,
        } = parts;
        let mut q = make_queue(&mem, &queue)?;
        let used = q
            .used_idx(&*mem, Ordering::Acquire)
            .map_err(|e| io::Error::other(format!("used ring: {e}")))?;
        q.set_next_avail(next_avail);
        q.set_next_used(used.0);
        let stop = Arc::new(StopSignal::default());
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let task = remote.spawn_local_with({
            let (mem, counters, stop) = (mem.clone(), counters.clone(), stop.clone());
            move || async move {
                // The file resolves its I/O engine on the IoThread's context.
                let disk = aioctx::fs::File::from_std(disk)?;
                let shared = Rc::new(Shared {
                    ram: Arc::new(GuestRam(mem.clone())),
                    mem,
                    queue: RefCell::new(q),
                    polling: Cell::new(false),
                    broken: Cell::new(false),
                    disk,
                    limits,
                    irq,
                    counters,
                    in_flight: Cell::new(0),
                    idle: RefCell::new(None),
                });
                let _ = started_tx.send(());
                serve(shared, kick, stop).await
            }
        });
        let device = VirtioBlkDevice {
            remote: remote.clone(),
            stop,
            task: Some(task),
            counters,
            _mem: mem,
        };
        if started_rx.recv().is_err() {
            // The task ended before serving: report why.
            return device
                .stop()
                .and(Err(io::Error::other("the device task did not start")));
        }
        Ok(device)
    }

    /// The device's counters (they stay readable after the device stopped).
    pub fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    /// Stops serving: finishes the requests in flight, ends the task and reports how it ended. On the
    /// device's own IoThread it cannot wait for that: it asks the device to stop and fails with
    /// `WouldBlock`, and the device finishes its requests and ends on its own.
    pub fn stop(self) -> io::Result<()> {
        self.pause().map(drop)
    }

    /// Stops serving as [`stop`](Self::stop) does and returns the avail index to
    /// [`resume`](Self::resume) from: every chain before it has been completed on the used ring
    /// (vhost-user's `GET_VRING_BASE`).
    pub fn pause(mut self) -> io::Result<u16> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<u16> {
        let Some(task) = self.task.take() else {
            return Err(io::Error::other("the device was stopped already"));
        };
        self.stop.raise();
        if self.remote.is_home_thread() {
            // Waiting here would block the loop the task needs to finish.
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the device was stopped on its own IoThread: it ends without being waited for",
            ));
        }
        match task.join_blocking() {
            Ok(res) => res,
            Err(e) => Err(io::Error::other(format!("the device task failed: {e}"))),
        }
    }
}

impl Drop for VirtioBlkDevice {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
