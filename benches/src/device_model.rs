//! The virtio-blk device model written on tokio, for the `device_model_qd1`/`device_model_qd32`
//! scenarios of `compare`: the same request parser, guest, workload and disk as the aioctx device in
//! `examples::virtio_blk`, served the way a tokio program would do it: a current-thread runtime on its
//! own thread, `AsyncFd` on the guest's ioeventfd, each request a task, and the disk I/O (positional,
//! vectored, straight into guest memory) on `spawn_blocking`, since tokio has no asynchronous file I/O.
//! tokio does not busy-poll, so there is no poll function and the guest kicks whenever the queue has
//! notifications enabled.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use aioctx::EventNotifier;
use examples::virtio_blk::device::{self, unsupported, Chain, SERIAL};
use examples::virtio_blk::workload::WorkloadResult;
use examples::virtio_blk::{bench, DeviceParts, GuestMemory, Limits, Op, Rejected, Request};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::{Queue, QueueT};

/// The compare workload against the tokio device at `iodepth` for `duration` on `disk`; the
/// counterpart of
/// [`examples::virtio_blk::bench::aioctx_compare_run`] (same guest, workload and verification).
pub fn tokio_compare_run(
    iodepth: usize,
    duration: Duration,
    disk: &Path,
) -> io::Result<WorkloadResult> {
    bench::compare_run(
        iodepth,
        duration,
        disk,
        TokioDevice::start,
        TokioDevice::stop,
    )
}

/// The tokio device on its thread.
#[derive(Debug)]
pub struct TokioDevice {
    stop: Arc<AtomicBool>,
    kick: EventNotifier,
    thread: Option<thread::JoinHandle<io::Result<()>>>,
}

impl TokioDevice {
    /// Starts a current-thread runtime on a new thread serving the queue described by `parts`.
    pub fn start(parts: DeviceParts) -> io::Result<Self> {
        let queue = device::make_queue(&parts.mem, &parts.queue)?;
        let stop = Arc::new(AtomicBool::new(false));
        let kick = parts.kick.clone();
        let thread = thread::Builder::new()
            .name("tokio-virtio-blk".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, serve(parts, queue, stop))
                }
            })?;
        Ok(TokioDevice {
            stop,
            kick,
            thread: Some(thread),
        })
    }

    /// Stops serving after the requests in flight and joins the thread.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.store(true, Ordering::Release);
        self.kick.set()?;
        thread
            .join()
            .map_err(|_| io::Error::other("the tokio device thread panicked"))?
    }
}

impl Drop for TokioDevice {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

struct Shared {
    mem: Arc<GuestMemory>,
    queue: RefCell<Queue>,
    disk: Arc<std::fs::File>,
    limits: Limits,
    irq: EventNotifier,
    in_flight: Cell<usize>,
    idle: Notify,
}

async fn serve(parts: DeviceParts, queue: Queue, stop: Arc<AtomicBool>) -> io::Result<()> {
    // SAFETY: the EventNotifier owns its eventfd (behind an Arc) and always returns that same fd; it
    // is moved into the AsyncFd, which keeps it (so the fd open) until the AsyncFd is dropped.
    let kick = unsafe { AsyncFd::register(parts.kick) }.map_err(io::Error::from)?;
    let shared = Rc::new(Shared {
        mem: parts.mem,
        queue: RefCell::new(queue),
        disk: Arc::new(parts.disk),
        limits: parts.limits,
        irq: parts.irq,
        in_flight: Cell::new(0),
        idle: Notify::new(),
    });
    while !stop.load(Ordering::Acquire) {
        drain(&shared)?;
        let mut ready = kick.readable().await?;
        ready.get_inner().test_and_clear()?;
        ready.clear_ready();
    }
    while shared.in_flight.get() > 0 {
        shared.idle.notified().await;
    }
    Ok(())
}

/// Takes every published chain with guest notifications off, then turns them back on and re-checks.
fn drain(shared: &Rc<Shared>) -> io::Result<()> {
    let mem = &*shared.mem;
    loop {
        let chains: Vec<Chain> = {
            let mut queue = shared.queue.borrow_mut();
            queue.disable_notification(mem).map_err(io::Error::other)?;
            device::take_chains(&mut queue, mem, &shared.limits)?
        };
        for (head, req) in chains {
            shared.in_flight.set(shared.in_flight.get() + 1);
            tokio::task::spawn_local(serve_request(shared.clone(), head, req));
        }
        let mut queue = shared.queue.borrow_mut();
        if !queue.enable_notification(mem).map_err(io::Error::other)? {
            return Ok(());
        }
    }
}

async fn serve_request(shared: Rc<Shared>, head: u16, req: Result<Request, Rejected>) {
    let (status, written) = match req {
        Ok(req) => match run(&shared, &req).await {
            Ok(written) => (Some((req.status, VIRTIO_BLK_S_OK as u8)), written),
            Err(_) => (Some((req.status, VIRTIO_BLK_S_IOERR as u8)), 0),
        },
        Err(rejected) => (rejected.status_addr.zip(rejected.reason.status()), 0),
    };
    let notify = {
        let mut queue = shared.queue.borrow_mut();
        device::complete(&mut queue, &shared.mem, head, status, written)
    };
    if let Ok(true) = notify {
        let _ = shared.irq.set();
    }
    let left = shared.in_flight.get() - 1;
    shared.in_flight.set(left);
    if left == 0 {
        shared.idle.notify_one();
    }
}

async fn run(shared: &Shared, req: &Request) -> io::Result<u32> {
    let fd = shared.disk.clone();
    match &req.op {
        Op::Read | Op::Write => {
            let write = req.op == Op::Write;
            let io = GuestIo {
                iov: device::guest_iovecs(&shared.mem, &req.data)?,
                _mem: shared.mem.clone(),
            };
            let offset = req.offset;
            blocking(move || io.transfer(fd.as_raw_fd(), offset, write)).await?;
            Ok(if write { 0 } else { req.data_len as u32 })
        }
        Op::Flush => blocking(move || fd.sync_data()).await.map(|()| 0),
        Op::GetId => device::write_id(&shared.mem, &req.data, SERIAL),
        Op::Discard(ranges) | Op::WriteZeroes(ranges) => {
            let discard = matches!(req.op, Op::Discard(_));
            let ranges = ranges.clone();
            blocking(move || {
                for r in ranges {
                    zero_range(&fd, r.offset, r.len, discard, r.unmap)?;
                }
                Ok(())
            })
            .await
            .map(|()| 0)
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("blocking task: {e}")))?
}

fn fallocate(fd: RawFd, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate takes no pointers.
    let ret = unsafe { libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// DISCARD (a hint) or WRITE_ZEROES with the same fallbacks as the aioctx device.
fn zero_range(
    file: &std::fs::File,
    offset: u64,
    len: u64,
    discard: bool,
    unmap: bool,
) -> io::Result<()> {
    let fd = file.as_raw_fd();
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    if discard {
        return match fallocate(fd, punch, offset, len) {
            Err(e) if !unsupported(&e) => Err(e),
            _ => Ok(()),
        };
    }
    for mode in [unmap.then_some(punch), Some(libc::FALLOC_FL_ZERO_RANGE)]
        .into_iter()
        .flatten()
    {
        match fallocate(fd, mode, offset, len) {
            Err(e) if unsupported(&e) => {}
            other => return other,
        }
    }
    let zeroes = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeroes.len() as u64) as usize;
        std::os::unix::fs::FileExt::write_all_at(file, &zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Host iovecs into guest memory, with the mapping they point into.
struct GuestIo {
    iov: Vec<libc::iovec>,
    _mem: Arc<GuestMemory>,
}

// SAFETY: the iovecs point into the guest memory mapping that `_mem` keeps alive wherever the value
// goes; nothing else in this process reads or writes those bytes while the request is in flight (the
// guest waits for the used ring), so moving the pointers to a blocking thread is sound.
unsafe impl Send for GuestIo {}

impl GuestIo {
    /// preadv/pwritev until done, continuing short transfers.
    fn transfer(mut self, fd: RawFd, mut offset: u64, write: bool) -> io::Result<()> {
        let mut first = 0;
        while first < self.iov.len() {
            let rest = &self.iov[first..];
            let count = rest.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
            // SAFETY: the iovecs describe validated guest memory kept mapped by `self._mem` (see the
            // Send impl); `fd` is kept open by the caller's Arc<File>.
            let n = unsafe {
                if write {
                    libc::pwritev(fd, rest.as_ptr(), count, offset as libc::off_t)
                } else {
                    libc::preadv(fd, rest.as_ptr(), count, offset as libc::off_t)
                }
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short transfer at disk offset {offset}"),
                ));
            }
            offset += n as u64;
            let mut left = n as usize;
            while first < self.iov.len() && left >= self.iov[first].iov_len {
                left -= self.iov[first].iov_len;
                first += 1;
            }
            if left > 0 {
                let iov = &mut self.iov[first];
                // SAFETY: `left` < this iovec's length, so the new base stays inside its segment.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(left) }.cast();
                iov.iov_len -= left;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both devices serve the compare workload on one disk, every read verified (the workload fails on
    /// a mismatch or a bad status), at both iodepths.
    #[test]
    fn tokio_and_aioctx_devices_serve_the_same_verified_workload() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        let run = Duration::from_millis(50);
        for iodepth in [1, 32] {
            let tokio = tokio_compare_run(iodepth, run, &disk).unwrap().iops();
            let aioctx = bench::aioctx_compare_run(iodepth, run, &disk)
                .unwrap()
                .iops();
            assert!(
                tokio > 0.0 && aioctx > 0.0,
                "qd{iodepth}: tokio {tokio}, aioctx {aioctx}"
            );
        }
    }
}
