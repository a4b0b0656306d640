//! One measured run of the device and the guest: used by the `device-model` example for its table and
//! by the `compare` benchmark, whose tokio device runs the same guest workload on the same disk.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aioctx::{IoThread, PollParams, Stats};

use super::guest::{GuestDriver, GuestLayout, GuestWait, Machine};
use super::request::Limits;
use super::workload::{self, DiskModel, Rw, Workload, WorkloadResult};
use super::{DeviceParts, VirtioBlkDevice};

/// Opens (creating it if needed) a disk image of `size` bytes for the device. Returns the file and
/// whether it is known to read as zeroes (it was created here, sparse).
pub fn open_disk(path: &Path, size: u64) -> io::Result<(std::fs::File, bool)> {
    let created = !path.exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    if file.metadata()?.len() < size {
        file.set_len(size)?;
    }
    Ok((file, created))
}

/// What one workload measured, with the loop and device counters over the same span.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// The guest's view: IOPS, latencies, kicks.
    pub result: WorkloadResult,
    /// Interrupts the device raised.
    pub interrupts: u64,
    /// Eventfd writes made by the IoThread's context to wake itself (`notify_writes`).
    pub notify_writes: u64,
    /// `io_uring_enter` calls on the IoThread.
    pub uring_enters: u64,
    /// Polling phases that found work on the IoThread.
    pub poll_hits: u64,
    /// Polling phases that ended without work on the IoThread.
    pub poll_misses: u64,
    /// Nanoseconds the IoThread spent busy-polling.
    pub poll_ns: u64,
}

impl Measurement {
    /// Eventfd writes of every kind: guest kicks, interrupts, and the loop's own wakeups.
    pub fn eventfd_writes(&self) -> u64 {
        self.result.kicks + self.interrupts + self.notify_writes
    }

    /// `count` per completed request.
    pub fn per_request(&self, count: u64) -> f64 {
        count as f64 / self.result.ios.max(1) as f64
    }
}

/// The aioctx device on its IoThread, with its guest.
#[derive(Debug)]
pub struct AioctxRig {
    /// The guest (memory, queue layout, eventfds).
    pub machine: Machine,
    /// What the guest knows of the disk.
    pub model: DiskModel,
    /// The guest's driver of the device's queue.
    pub driver: GuestDriver,
    device: Option<VirtioBlkDevice>,
    iothread: Option<IoThread>,
}

impl AioctxRig {
    /// Starts an IoThread and a device on `disk` (created with `size` bytes if missing) for a guest of
    /// `slots` request slots of `block_size` bytes.
    pub fn new(disk: &Path, size: u64, slots: usize, block_size: usize) -> io::Result<Self> {
        let (file, zeroed) = open_disk(disk, size)?;
        let capacity = file.metadata()?.len();
        let layout = GuestLayout::new(slots, block_size)?;
        let machine = Machine::new(layout)?;
        let model = DiskModel::new(capacity, block_size, zeroed)?;
        let iothread = IoThread::builder().name("virtio-blk").spawn()?;
        let parts = machine.device_parts(file, Limits::for_capacity(capacity));
        let device = VirtioBlkDevice::start(iothread.remote(), parts)?;
        Ok(AioctxRig {
            driver: machine.driver(GuestWait::Interrupt),
            machine,
            model,
            device: Some(device),
            iothread: Some(iothread),
        })
    }

    /// Sets the IoThread's polling parameters (`PollParams::IOTHREAD`: the IoThread default, up to
    /// 64 us; `PollParams::default()`: polling off).
    pub fn set_poll_params(&self, params: PollParams) -> io::Result<()> {
        self.iothread()?.set_poll_params(params)
    }

    fn iothread(&self) -> io::Result<&IoThread> {
        self.iothread
            .as_ref()
            .ok_or_else(|| io::Error::other("the rig was shut down"))
    }

    /// The device.
    pub fn device(&self) -> Option<&VirtioBlkDevice> {
        self.device.as_ref()
    }

    /// The IoThread's statistics.
    pub fn stats(&self) -> io::Result<Stats> {
        Ok(self.iothread()?.stats())
    }

    /// Runs `workload` with a fresh driver waiting as `wait`.
    pub fn run(&mut self, workload: &Workload, wait: GuestWait) -> io::Result<Measurement> {
        let before = self.stats()?;
        let irqs = |d: Option<&VirtioBlkDevice>| {
            d.map_or(0, |d| d.counters().interrupts.load(Ordering::Relaxed))
        };
        let irqs_before = irqs(self.device.as_ref());
        self.driver.set_wait(wait);
        let layout = self.machine.layout;
        let result = workload::run(&mut self.driver, &layout, &mut self.model, workload)?;
        let after = self.stats()?;
        Ok(Measurement {
            result,
            interrupts: irqs(self.device.as_ref()) - irqs_before,
            notify_writes: after.notify_writes - before.notify_writes,
            uring_enters: after.uring_enters - before.uring_enters,
            poll_hits: after.poll_hits - before.poll_hits,
            poll_misses: after.poll_misses - before.poll_misses,
            poll_ns: after.poll_ns - before.poll_ns,
        })
    }

    /// Stops the device (after the requests in flight) and then the IoThread.
    pub fn shutdown(mut self) -> io::Result<()> {
        let res = self.device.take().map_or(Ok(()), VirtioBlkDevice::stop);
        if let Some(io) = self.iothread.take() {
            io.stop();
        }
        res
    }
}

impl Drop for AioctxRig {
    fn drop(&mut self) {
        // The device first: it must not outlive the IoThread serving it.
        drop(self.device.take());
        drop(self.iothread.take());
    }
}

/// The workload the `compare` scenarios run: 4 KiB random reads and writes, half each.
pub fn compare_workload(iodepth: usize, duration: Duration) -> Workload {
    Workload {
        rw: Rw::RandRw,
        iodepth,
        duration,
        max_ios: u64::MAX,
        seed: 0x5eed,
    }
}

/// Disk size the `compare` scenarios create: 64 MiB, sparse.
pub const COMPARE_DISK_SIZE: u64 = 64 << 20;

/// Runs the `compare` workload (see [`compare_workload`]) on `disk` (created with
/// [`COMPARE_DISK_SIZE`] if missing) against the device `start` builds from the guest's parts, the guest
/// waiting by interrupt, and returns what the workload did (`.iops()` is its IOPS). Every read is
/// verified. `stop` ends the device.
pub fn compare_run<D>(
    iodepth: usize,
    duration: Duration,
    disk: &Path,
    start: impl FnOnce(DeviceParts) -> io::Result<D>,
    stop: impl FnOnce(D) -> io::Result<()>,
) -> io::Result<WorkloadResult> {
    let (file, zeroed) = open_disk(disk, COMPARE_DISK_SIZE)?;
    let capacity = file.metadata()?.len();
    let layout = GuestLayout::new(iodepth, 4096)?;
    let machine = Machine::new(layout)?;
    let mut model = DiskModel::new(capacity, 4096, zeroed)?;
    let device = start(machine.device_parts(file, Limits::for_capacity(capacity)))?;
    let mut driver = machine.driver(GuestWait::Interrupt);
    let result = workload::run(
        &mut driver,
        &layout,
        &mut model,
        &compare_workload(iodepth, duration),
    );
    let stopped = stop(device);
    let result = result?;
    stopped?;
    Ok(result)
}

/// The compare workload against the aioctx device on an IoThread with its defaults (io_uring, 64 us
/// adaptive polling); see [`compare_run`].
pub fn aioctx_compare_run(
    iodepth: usize,
    duration: Duration,
    disk: &Path,
) -> io::Result<WorkloadResult> {
    let iothread = IoThread::builder().name("virtio-blk").spawn()?;
    compare_run(
        iodepth,
        duration,
        disk,
        |parts| VirtioBlkDevice::start(iothread.remote(), parts),
        VirtioBlkDevice::stop,
    )
}
