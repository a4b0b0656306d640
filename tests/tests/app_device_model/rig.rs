//! The rig the device-model tests share: a virtio-blk device on an IoThread, its disk image in a temp
//! dir, and the guest driving it from the test thread. Each test file uses part of it.
#![allow(dead_code)]

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use aioctx::{Backend, IoThread, PollParams};
use examples::virtio_blk::request::Limits;
use examples::virtio_blk::workload::pattern;
use examples::virtio_blk::{
    Completion, DescSpec, GuestDriver, GuestLayout, GuestWait, Machine, VirtioBlkDevice,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress};

pub const DISK_SIZE: u64 = 1 << 20;
pub const BS: usize = 4096;
pub const OK: u8 = VIRTIO_BLK_S_OK as u8;
pub const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// What the guest puts in a status byte before submitting, so that an untouched byte shows.
pub const UNSET: u8 = 0xff;

/// A device on an IoThread, its disk in a temp dir, and the guest driving it from this thread.
pub struct Rig {
    pub driver: GuestDriver,
    pub machine: Machine,
    pub device: Option<VirtioBlkDevice>,
    pub iothread: Option<IoThread>,
    disk: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Rig {
    pub fn new(backend: Backend, polling: bool, limits: impl FnOnce(Limits) -> Limits) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&disk)
            .unwrap();
        file.set_len(DISK_SIZE).unwrap();
        let iothread = IoThread::builder()
            .name("blk-test")
            .backend(backend)
            .poll_max_ns(if polling {
                PollParams::IOTHREAD.max_ns
            } else {
                0
            })
            .spawn()
            .unwrap();
        let machine = Machine::new(GuestLayout::new(32, BS).unwrap()).unwrap();
        let parts = machine.device_parts(file, limits(Limits::for_capacity(DISK_SIZE)));
        let device = VirtioBlkDevice::start(iothread.remote(), parts).unwrap();
        let mut driver = machine.driver(GuestWait::Interrupt);
        driver.set_timeout(tests::BOUND);
        Rig {
            driver,
            machine,
            device: Some(device),
            iothread: Some(iothread),
            disk,
            _dir: Some(dir),
        }
    }

    /// A rig for a queue some other device serves (a vhost-user daemon, say): the guest `machine` and
    /// the image at `disk` the device writes.
    pub fn attached(machine: Machine, disk: PathBuf) -> Rig {
        let mut driver = machine.driver(GuestWait::Interrupt);
        driver.set_timeout(tests::BOUND);
        Rig {
            driver,
            machine,
            device: None,
            iothread: None,
            disk,
            _dir: None,
        }
    }

    pub fn default() -> Rig {
        Rig::new(Backend::Auto, true, |l| l)
    }

    pub fn mem(&self) -> &examples::virtio_blk::GuestMemory {
        &self.machine.mem
    }

    /// Scratch guest memory at `offset` into the scratch area.
    pub fn scratch(&self, offset: u64) -> GuestAddress {
        GuestAddress(self.machine.layout.scratch.0 + offset)
    }

    /// Writes a request header (type, sector) at `at`.
    pub fn header(&self, at: GuestAddress, kind: u32, sector: u64) -> DescSpec {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem().write_slice(&h, at).unwrap();
        DescSpec::read(at, 16)
    }

    /// A status descriptor at `at`, its byte set to [`UNSET`].
    pub fn status(&self, at: GuestAddress) -> DescSpec {
        self.mem().write_obj(UNSET, at).unwrap();
        DescSpec::write(at, 1)
    }

    /// Submits one chain, kicks if the device wants it, and waits for it to complete.
    pub fn roundtrip(&mut self, chain: &[DescSpec]) -> Completion {
        let head = self.driver.submit(chain).unwrap();
        self.driver.kick().unwrap();
        let done = self.driver.wait_used().unwrap();
        assert_eq!(done.head, head, "the only chain in flight completed");
        done
    }

    /// A full request whose status byte is in the scratch area at 0; returns (status, used len).
    pub fn request(&mut self, kind: u32, sector: u64, data: &[DescSpec]) -> (u8, u32) {
        let mut chain = vec![self.header(self.scratch(0x10), kind, sector)];
        chain.extend_from_slice(data);
        chain.push(self.status(self.scratch(0)));
        let done = self.roundtrip(&chain);
        (self.mem().read_obj(self.scratch(0)).unwrap(), done.len)
    }

    /// Writes `data` at `sector` through the device (from guest address `buf`).
    pub fn write(&mut self, sector: u64, buf: GuestAddress, data: &[u8]) {
        self.mem().write_slice(data, buf).unwrap();
        let seg = DescSpec::read(buf, data.len() as u32);
        assert_eq!(self.request(VIRTIO_BLK_T_OUT, sector, &[seg]), (OK, 1));
    }

    /// Reads `len` bytes at `sector` through the device (into guest address `buf`).
    pub fn read(&mut self, sector: u64, buf: GuestAddress, len: usize) -> Vec<u8> {
        self.mem().write_slice(&vec![0xaa; len], buf).unwrap();
        let seg = DescSpec::write(buf, len as u32);
        let want = (OK, len as u32 + 1);
        assert_eq!(self.request(VIRTIO_BLK_T_IN, sector, &[seg]), want);
        let mut out = vec![0; len];
        self.mem().read_slice(&mut out, buf).unwrap();
        out
    }

    /// The disk image's bytes, read with std (not through the device).
    pub fn disk_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut f = std::fs::File::open(&self.disk).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut out = vec![0; len];
        f.read_exact(&mut out).unwrap();
        out
    }

    /// A write and a read-back at a fresh place: the device still serves correctly.
    pub fn assert_still_serving(&mut self) {
        let data = pattern(200, 7, BS);
        self.write(200 * 8, self.scratch(0x4000), &data);
        assert_eq!(self.read(200 * 8, self.scratch(0x8000), BS), data);
    }

    pub fn counter(
        &self,
        pick: fn(&examples::virtio_blk::DeviceCounters) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        pick(&self.device.as_ref().unwrap().counters()).load(Ordering::Relaxed)
    }

    pub fn shutdown(mut self) {
        self.device.take().unwrap().stop().unwrap();
        self.iothread.take().unwrap().stop();
    }
}

/// A `virtio_blk_discard_write_zeroes` range at `at`.
pub fn range(rig: &Rig, at: GuestAddress, sector: u64, sectors: u32, flags: u32) -> DescSpec {
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&sectors.to_le_bytes());
    r[12..16].copy_from_slice(&flags.to_le_bytes());
    rig.mem().write_slice(&r, at).unwrap();
    DescSpec::read(at, 16)
}
