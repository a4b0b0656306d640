//! The virtio-blk device model (examples::virtio_blk) run in-process: an aioctx IoThread serves the
//! queue, this thread is the guest's vCPU. Every request type with its data checked (in guest memory
//! and in the disk image), every kind of malformed chain with the status the guest sees and the device
//! still serving afterwards, and full workloads with every read verified.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aioctx::{Backend, IoThread, PollParams};
use examples::virtio_blk::request::{Limits, ID_BYTES};
use examples::virtio_blk::workload::{self, pattern, DiskModel, Rw, Workload};
use examples::virtio_blk::{
    Completion, DescSpec, GuestDriver, GuestLayout, GuestWait, Machine, VirtioBlkDevice,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::{Bytes, GuestAddress};

const DISK_SIZE: u64 = 1 << 20;
const BS: usize = 4096;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// What the guest puts in a status byte before submitting, so that an untouched byte shows.
const UNSET: u8 = 0xff;

/// A device on an IoThread, its disk in a temp dir, and the guest driving it from this thread.
struct Rig {
    driver: GuestDriver,
    machine: Machine,
    device: Option<VirtioBlkDevice>,
    iothread: Option<IoThread>,
    disk: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(backend: Backend, polling: bool, limits: impl FnOnce(Limits) -> Limits) -> Rig {
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
            _dir: dir,
        }
    }

    fn default() -> Rig {
        Rig::new(Backend::Auto, true, |l| l)
    }

    fn mem(&self) -> &examples::virtio_blk::GuestMemory {
        &self.machine.mem
    }

    /// Scratch guest memory at `offset` into the scratch area.
    fn scratch(&self, offset: u64) -> GuestAddress {
        GuestAddress(self.machine.layout.scratch.0 + offset)
    }

    /// Writes a request header (type, sector) at `at`.
    fn header(&self, at: GuestAddress, kind: u32, sector: u64) -> DescSpec {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem().write_slice(&h, at).unwrap();
        DescSpec::read(at, 16)
    }

    /// A status descriptor at `at`, its byte set to [`UNSET`].
    fn status(&self, at: GuestAddress) -> DescSpec {
        self.mem().write_obj(UNSET, at).unwrap();
        DescSpec::write(at, 1)
    }

    /// Submits one chain, kicks if the device wants it, and waits for it to complete.
    fn roundtrip(&mut self, chain: &[DescSpec]) -> Completion {
        let head = self.driver.submit(chain).unwrap();
        self.driver.kick().unwrap();
        let done = self.driver.wait_used().unwrap();
        assert_eq!(done.head, head, "the only chain in flight completed");
        done
    }

    /// A full request whose status byte is in the scratch area at 0; returns (status, used len).
    fn request(&mut self, kind: u32, sector: u64, data: &[DescSpec]) -> (u8, u32) {
        let mut chain = vec![self.header(self.scratch(0x10), kind, sector)];
        chain.extend_from_slice(data);
        chain.push(self.status(self.scratch(0)));
        let done = self.roundtrip(&chain);
        (self.mem().read_obj(self.scratch(0)).unwrap(), done.len)
    }

    /// Writes `data` at `sector` through the device (from guest address `buf`).
    fn write(&mut self, sector: u64, buf: GuestAddress, data: &[u8]) {
        self.mem().write_slice(data, buf).unwrap();
        let seg = DescSpec::read(buf, data.len() as u32);
        assert_eq!(self.request(VIRTIO_BLK_T_OUT, sector, &[seg]), (OK, 1));
    }

    /// Reads `len` bytes at `sector` through the device (into guest address `buf`).
    fn read(&mut self, sector: u64, buf: GuestAddress, len: usize) -> Vec<u8> {
        self.mem().write_slice(&vec![0xaa; len], buf).unwrap();
        let seg = DescSpec::write(buf, len as u32);
        let want = (OK, len as u32 + 1);
        assert_eq!(self.request(VIRTIO_BLK_T_IN, sector, &[seg]), want);
        let mut out = vec![0; len];
        self.mem().read_slice(&mut out, buf).unwrap();
        out
    }

    /// The disk image's bytes, read with std (not through the device).
    fn disk_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut f = std::fs::File::open(&self.disk).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut out = vec![0; len];
        f.read_exact(&mut out).unwrap();
        out
    }

    /// A write and a read-back at a fresh place: the device still serves correctly.
    fn assert_still_serving(&mut self) {
        let data = pattern(200, 7, BS);
        self.write(200 * 8, self.scratch(0x4000), &data);
        assert_eq!(self.read(200 * 8, self.scratch(0x8000), BS), data);
    }

    fn counter(
        &self,
        pick: fn(&examples::virtio_blk::DeviceCounters) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        pick(&self.device.as_ref().unwrap().counters()).load(Ordering::Relaxed)
    }

    fn shutdown(mut self) {
        self.device.take().unwrap().stop().unwrap();
        self.iothread.take().unwrap().stop();
    }
}

tests::per_backend! {
    fn read_and_write_reach_the_disk_and_come_back(backend) {
        let mut rig = Rig::new(backend, true, |l| l);
        let data = pattern(3, 1, 2 * BS);
        rig.write(24, rig.scratch(0x1000), &data);
        assert_eq!(rig.disk_bytes(24 * 512, data.len()), data, "the write reached the image");
        assert_eq!(rig.read(24, rig.scratch(0x10000), 2 * BS), data);
        rig.shutdown();
    }
}

#[test]
fn data_split_over_many_descriptors_and_a_split_header() {
    let mut rig = Rig::default();
    let data = pattern(9, 2, 3 * 512);
    // Written from three 512-byte pieces at scattered guest addresses, header in two descriptors.
    let pieces = [0x2000u64, 0x5200, 0x3000];
    for (i, at) in pieces.iter().enumerate() {
        rig.mem()
            .write_slice(&data[i * 512..(i + 1) * 512], rig.scratch(*at))
            .unwrap();
    }
    let header = rig.header(rig.scratch(0x10), VIRTIO_BLK_T_OUT, 5);
    let mut chain = vec![
        DescSpec::read(header.addr, 5),
        DescSpec::read(GuestAddress(header.addr.0 + 5), 11),
    ];
    chain.extend(
        pieces
            .iter()
            .map(|&at| DescSpec::read(rig.scratch(at), 512)),
    );
    chain.push(rig.status(rig.scratch(0)));
    assert_eq!(rig.roundtrip(&chain).len, 1);
    assert_eq!(rig.mem().read_obj::<u8>(rig.scratch(0)).unwrap(), OK);
    assert_eq!(rig.disk_bytes(5 * 512, data.len()), data);

    // Read back into two pieces, the status byte sharing the last data descriptor.
    let header = rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 5);
    let status_at = rig.scratch(0x7000 + 1024);
    rig.mem().write_obj(UNSET, status_at).unwrap();
    let chain = [
        header,
        DescSpec::write(rig.scratch(0x6000), 512),
        DescSpec::write(rig.scratch(0x7000), 1025),
    ];
    assert_eq!(rig.roundtrip(&chain).len, 3 * 512 + 1);
    assert_eq!(rig.mem().read_obj::<u8>(status_at).unwrap(), OK);
    let mut back = vec![0; 3 * 512];
    rig.mem()
        .read_slice(&mut back[..512], rig.scratch(0x6000))
        .unwrap();
    rig.mem()
        .read_slice(&mut back[512..], rig.scratch(0x7000))
        .unwrap();
    assert_eq!(back, data);
    rig.shutdown();
}

#[test]
fn flush_completes_ok() {
    let mut rig = Rig::default();
    rig.write(0, rig.scratch(0x1000), &pattern(0, 1, BS));
    assert_eq!(rig.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
    rig.shutdown();
}

#[test]
fn get_id_writes_the_serial_cut_to_the_buffer() {
    let mut rig = Rig::default();
    let buf = rig.scratch(0x1000);
    rig.mem().write_slice(&[0xee; 32], buf).unwrap();
    let full = rig.request(VIRTIO_BLK_T_GET_ID, 0, &[DescSpec::write(buf, 32)]);
    assert_eq!(full, (OK, ID_BYTES as u32 + 1));
    let mut id = [0u8; 32];
    rig.mem().read_slice(&mut id, buf).unwrap();
    assert_eq!(&id[..ID_BYTES], examples::virtio_blk::device::SERIAL);
    assert_eq!(
        id[ID_BYTES..],
        [0xee; 32 - ID_BYTES],
        "nothing past the 20 bytes"
    );

    rig.mem().write_slice(&[0xee; 8], buf).unwrap();
    assert_eq!(
        rig.request(VIRTIO_BLK_T_GET_ID, 0, &[DescSpec::write(buf, 6)]),
        (OK, 7)
    );
    let mut short = [0u8; 8];
    rig.mem().read_slice(&mut short, buf).unwrap();
    assert_eq!(&short[..6], &examples::virtio_blk::device::SERIAL[..6]);
    assert_eq!(short[6..], [0xee, 0xee]);
    rig.shutdown();
}

/// A `virtio_blk_discard_write_zeroes` range at `at`.
fn range(rig: &Rig, at: GuestAddress, sector: u64, sectors: u32, flags: u32) -> DescSpec {
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&sectors.to_le_bytes());
    r[12..16].copy_from_slice(&flags.to_le_bytes());
    rig.mem().write_slice(&r, at).unwrap();
    DescSpec::read(at, 16)
}

#[test]
fn discard_and_write_zeroes_zero_their_ranges_only() {
    let mut rig = Rig::default();
    let data = pattern(1, 1, 4 * BS);
    rig.write(0, rig.scratch(0x1000), &data);

    // Discard the second block, write zeroes (without and with unmap) over the third and fourth.
    let d = range(&rig, rig.scratch(0x100), 8, 8, 0);
    assert_eq!(rig.request(VIRTIO_BLK_T_DISCARD, 0, &[d]), (OK, 1));
    let z = range(&rig, rig.scratch(0x100), 16, 8, 0);
    let zu = range(&rig, rig.scratch(0x110), 24, 8, 1);
    assert_eq!(rig.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[z, zu]), (OK, 1));

    let mut want = data.clone();
    want[BS..].fill(0);
    assert_eq!(rig.read(0, rig.scratch(0x10000), 4 * BS), want);
    assert_eq!(rig.disk_bytes(0, 4 * BS), want);
    rig.shutdown();
}

/// What one malformed chain must produce, and that the device serves on.
/// The status byte is the rig's usual one, at scratch offset 0.
fn assert_rejected(rig: &mut Rig, chain: &[DescSpec], want: u8) {
    let status_at = rig.scratch(0);
    let rejected = rig.counter(|c| &c.rejected);
    let done = rig.roundtrip(chain);
    assert_eq!(rig.mem().read_obj::<u8>(status_at).unwrap(), want, "status");
    assert_eq!(done.len, 1, "only the status byte was written");
    assert_eq!(rig.counter(|c| &c.rejected), rejected + 1);
    rig.assert_still_serving();
}

#[test]
fn malformed_too_short_header_is_ioerr() {
    let mut rig = Rig::default();
    let h = rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0);
    let chain = [
        DescSpec::read(h.addr, 8),
        DescSpec::write(rig.scratch(0x1000), 512),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &chain, IOERR);
    rig.shutdown();
}

#[test]
fn malformed_wrong_direction_is_ioerr() {
    let mut rig = Rig::default();
    // A read whose data buffer is device-readable.
    let chain = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0),
        DescSpec::read(rig.scratch(0x1000), 512),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &chain, IOERR);
    // A write whose data buffer is device-writable: the guest's buffer is not written either.
    rig.mem()
        .write_slice(&[0x5a; 512], rig.scratch(0x1000))
        .unwrap();
    let chain = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_OUT, 0),
        DescSpec::write(rig.scratch(0x1000), 512),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &chain, IOERR);
    let mut buf = [0u8; 512];
    rig.mem().read_slice(&mut buf, rig.scratch(0x1000)).unwrap();
    assert_eq!(buf, [0x5a; 512]);
    // A readable descriptor after a writable one.
    let chain = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0),
        DescSpec::write(rig.scratch(0x1000), 512),
        DescSpec::read(rig.scratch(0x2000), 512),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &chain, IOERR);
    rig.shutdown();
}

#[test]
fn malformed_without_status_byte_completes_with_nothing_written() {
    let mut rig = Rig::default();
    let cases = [
        // The last descriptor is device-readable.
        vec![
            rig.header(rig.scratch(0x10), VIRTIO_BLK_T_OUT, 0),
            DescSpec::read(rig.scratch(0x1000), 512),
        ],
        // The last descriptor is writable but empty.
        vec![
            rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0),
            DescSpec::write(rig.scratch(0x1000), 512),
            DescSpec::write(rig.scratch(0), 0),
        ],
        // The status byte is outside guest memory.
        vec![
            rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0),
            DescSpec::write(GuestAddress(rig.machine.layout.mem_size), 1),
        ],
    ];
    for chain in cases {
        rig.mem().write_obj(UNSET, rig.scratch(0)).unwrap();
        rig.mem()
            .write_slice(&[0x5a; 512], rig.scratch(0x1000))
            .unwrap();
        let rejected = rig.counter(|c| &c.rejected);
        let done = rig.roundtrip(&chain);
        assert_eq!(done.len, 0, "no status byte: nothing written");
        assert_eq!(rig.mem().read_obj::<u8>(rig.scratch(0)).unwrap(), UNSET);
        let mut buf = [0u8; 512];
        rig.mem().read_slice(&mut buf, rig.scratch(0x1000)).unwrap();
        assert_eq!(buf, [0x5a; 512], "the data buffer was not touched");
        assert_eq!(rig.counter(|c| &c.rejected), rejected + 1);
        rig.assert_still_serving();
    }
    rig.shutdown();
}

#[test]
fn malformed_sector_past_the_end_is_ioerr() {
    let mut rig = Rig::default();
    let last = DISK_SIZE / 512;
    for (sector, len) in [(last, 512u32), (last - 1, 1024), (u64::MAX / 512 + 1, 512)] {
        let chain = [
            rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, sector),
            DescSpec::write(rig.scratch(0x1000), len),
            rig.status(rig.scratch(0)),
        ];
        assert_rejected(&mut rig, &chain, IOERR);
    }
    let r = range(&rig, rig.scratch(0x100), last - 4, 8, 0);
    let chain = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_DISCARD, 0),
        r,
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &chain, IOERR);
    rig.shutdown();
}

#[test]
fn malformed_oversized_request_is_ioerr() {
    let mut rig = Rig::new(Backend::Auto, true, |l| Limits {
        max_transfer: 8192,
        max_segments: 4,
        max_ranges: 1,
        ..l
    });
    let too_long = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0),
        DescSpec::write(rig.scratch(0x1000), 16384),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &too_long, IOERR);
    let mut too_many = vec![rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0)];
    too_many.extend((0..5).map(|i| DescSpec::write(rig.scratch(0x1000 + i * 512), 512)));
    too_many.push(rig.status(rig.scratch(0)));
    assert_rejected(&mut rig, &too_many, IOERR);
    let ranges = [
        range(&rig, rig.scratch(0x100), 0, 8, 0),
        range(&rig, rig.scratch(0x110), 8, 8, 0),
    ];
    let chain = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_DISCARD, 0),
        ranges[0],
        ranges[1],
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &chain, IOERR);
    rig.shutdown();
}

#[test]
fn malformed_unaligned_length_and_guest_address_out_of_memory_are_ioerr() {
    let mut rig = Rig::default();
    let unaligned = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_OUT, 0),
        DescSpec::read(rig.scratch(0x1000), 100),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &unaligned, IOERR);
    let end = rig.machine.layout.mem_size;
    for (addr, len) in [(end, 512), (end - 512, 1024), (u64::MAX - 511, 512)] {
        let chain = [
            rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0),
            DescSpec::write(GuestAddress(addr), len),
            rig.status(rig.scratch(0)),
        ];
        assert_rejected(&mut rig, &chain, IOERR);
    }
    rig.shutdown();
}

#[test]
fn malformed_unsupported_type_or_flags_is_unsupp() {
    let mut rig = Rig::default();
    let unknown = [
        rig.header(rig.scratch(0x10), 0x77, 0),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &unknown, UNSUPP);
    // DISCARD with the unmap flag (only WRITE_ZEROES has it), WRITE_ZEROES with an unknown flag.
    for (kind, flags) in [(VIRTIO_BLK_T_DISCARD, 1), (VIRTIO_BLK_T_WRITE_ZEROES, 2)] {
        let r = range(&rig, rig.scratch(0x100), 0, 8, flags);
        let chain = [
            rig.header(rig.scratch(0x10), kind, 0),
            r,
            rig.status(rig.scratch(0)),
        ];
        assert_rejected(&mut rig, &chain, UNSUPP);
    }
    rig.shutdown();
}

#[test]
fn a_malformed_chain_among_valid_ones_fails_alone() {
    let mut rig = Rig::default();
    let data = pattern(4, 1, BS);
    rig.mem().write_slice(&data, rig.scratch(0x1000)).unwrap();
    let good = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_OUT, 64),
        DescSpec::read(rig.scratch(0x1000), BS as u32),
        rig.status(rig.scratch(0)),
    ];
    let bad = [
        rig.header(rig.scratch(0x20), VIRTIO_BLK_T_IN, DISK_SIZE / 512),
        DescSpec::write(rig.scratch(0x3000), 512),
        rig.status(rig.scratch(1)),
    ];
    let heads = [
        rig.driver.submit(&good).unwrap(),
        rig.driver.submit(&bad).unwrap(),
    ];
    rig.driver.kick().unwrap();
    let mut done = [
        rig.driver.wait_used().unwrap(),
        rig.driver.wait_used().unwrap(),
    ];
    done.sort_by_key(|c| if c.head == heads[0] { 0 } else { 1 });
    assert_eq!(done.iter().map(|c| c.head).collect::<Vec<_>>(), heads);
    assert_eq!(rig.mem().read_obj::<u8>(rig.scratch(0)).unwrap(), OK);
    assert_eq!(rig.mem().read_obj::<u8>(rig.scratch(1)).unwrap(), IOERR);
    assert_eq!(rig.disk_bytes(64 * 512, BS), data);
    rig.shutdown();
}

/// A bounded workload: at most `ios` requests, at most 10 s.
fn workload(rw: Rw, iodepth: usize, ios: u64) -> Workload {
    Workload {
        rw,
        iodepth,
        duration: Duration::from_secs(10),
        max_ios: ios,
        seed: 42 + iodepth as u64,
    }
}

#[test]
fn workloads_verify_every_read_at_qd1_and_qd32_polling_on_and_off() {
    for polling in [true, false] {
        let mut rig = Rig::new(Backend::Auto, polling, |l| l);
        let mut model = DiskModel::new(DISK_SIZE, BS, true).unwrap();
        let layout = rig.machine.layout;
        for (wait, depth) in [
            (GuestWait::Interrupt, 1),
            (GuestWait::Poll, 32),
            (GuestWait::Interrupt, 32),
        ] {
            rig.driver.set_wait(wait);
            for rw in [Rw::RandWrite, Rw::RandRead, Rw::RandRw] {
                let res = workload::run(
                    &mut rig.driver,
                    &layout,
                    &mut model,
                    &workload(rw, depth, 600),
                )
                .unwrap_or_else(|e| panic!("{rw} qd{depth} {wait:?} polling {polling}: {e}"));
                assert_eq!(res.ios, 600);
                assert_eq!(res.reads + res.writes, 600);
                assert_eq!(
                    res.verified_reads, res.reads,
                    "the disk started zeroed: all checkable"
                );
            }
        }
        assert_eq!(rig.counter(|c| &c.rejected), 0);
        assert_eq!(rig.counter(|c| &c.io_errors), 0);
        rig.shutdown();
    }
}

#[test]
fn interrupts_are_raised_only_when_the_guest_asks() {
    let mut rig = Rig::default();
    let mut model = DiskModel::new(DISK_SIZE, BS, true).unwrap();
    let layout = rig.machine.layout;
    // A polling guest keeps used_event out of reach: the device must never interrupt it.
    rig.driver.set_wait(GuestWait::Poll);
    let res = workload::run(
        &mut rig.driver,
        &layout,
        &mut model,
        &workload(Rw::RandRw, 8, 500),
    )
    .unwrap();
    assert_eq!(res.ios, 500);
    assert_eq!(rig.counter(|c| &c.interrupts), 0);
    // A guest that sleeps asks for an interrupt each time it runs out of completions.
    rig.driver.set_wait(GuestWait::Interrupt);
    workload::run(
        &mut rig.driver,
        &layout,
        &mut model,
        &workload(Rw::RandRw, 1, 100),
    )
    .unwrap();
    let irqs = rig.counter(|c| &c.interrupts);
    assert!(
        (1..=100).contains(&irqs),
        "{irqs} interrupts for 100 requests"
    );
    rig.shutdown();
}

#[test]
fn stop_waits_for_requests_in_flight() {
    let mut rig = Rig::default();
    let mut heads = Vec::new();
    for i in 0..8u64 {
        let chain = [
            rig.header(rig.scratch(0x10 * (i + 1)), VIRTIO_BLK_T_OUT, i * 8),
            DescSpec::read(rig.scratch(0x1000 + i * 0x1000), BS as u32),
            rig.status(rig.scratch(i)),
        ];
        heads.push(rig.driver.submit(&chain).unwrap());
    }
    rig.driver.kick().unwrap();
    let counters = rig.device.as_ref().unwrap().counters();
    tests::spin_until("the device to take the chains", || {
        counters.requests.load(Ordering::Relaxed) == 8
    });
    rig.device.take().unwrap().stop().unwrap();
    // Every chain the device took was completed before stop returned.
    let taken = counters.requests.load(Ordering::Relaxed);
    let mut done = 0;
    while let Some(c) = rig.driver.poll_used().unwrap() {
        let i = heads.iter().position(|&h| h == c.head).unwrap() as u64;
        assert_eq!(rig.mem().read_obj::<u8>(rig.scratch(i)).unwrap(), OK);
        done += 1;
    }
    assert_eq!(done, taken);
    rig.iothread.take().unwrap().stop();
}

#[test]
fn a_guest_that_breaks_the_ring_stops_the_queue_not_the_iothread() {
    let mut rig = Rig::default();
    rig.assert_still_serving();
    // An avail index more than a queue size ahead of what the device took.
    let queue = rig.machine.layout.queue;
    let idx_at = GuestAddress(queue.avail_ring.0 + 2);
    let idx: u16 = rig.mem().read_obj(idx_at).unwrap();
    let bogus = idx.wrapping_add(queue.size + 1);
    rig.mem().write_obj(bogus.to_le(), idx_at).unwrap();
    rig.machine.kick.set().unwrap();
    let counters = rig.device.as_ref().unwrap().counters();
    tests::spin_until("the device to notice", || {
        counters.broken.load(Ordering::Relaxed)
    });
    let io = rig.iothread.as_ref().unwrap();
    assert_eq!(io.remote().call(|| 7).unwrap(), 7, "the IoThread goes on");
    rig.device.take().unwrap().stop().unwrap();
    rig.iothread.take().unwrap().stop();
}

mod parser_properties {
    use examples::virtio_blk::request::{parse, Limits, Op};
    use proptest::prelude::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    const MEM: u64 = 0x10000;

    /// A descriptor the way virtio-queue yields it: any address, length and direction.
    fn desc() -> impl Strategy<Value = (u64, u32, bool)> {
        (
            prop_oneof![0..MEM + 0x100, Just(u64::MAX - 8), any::<u64>()],
            prop_oneof![0u32..0x2000, any::<u32>()],
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever the guest writes, the parser returns (no panic), and what it accepts lies in
        /// guest memory and in the disk.
        #[test]
        fn accepted_requests_stay_inside_memory_and_disk(
            kind in prop_oneof![0u32..16, any::<u32>()],
            sector in prop_oneof![0u64..0x1000, any::<u64>()],
            ranges in proptest::collection::vec(any::<u8>(), 32),
            middle in proptest::collection::vec(desc(), 0..8),
            framed in any::<bool>(),
        ) {
            // Half the chains are framed like a real request (header first, status byte last), so
            // that the accepting paths are explored as much as the rejecting ones.
            let mut descs = middle;
            if framed {
                descs.insert(0, (0, 16, false));
                descs.push((0x100, 1, true));
            }
            let mem: GuestMemoryMmap<()> =
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
            let mut header = [0u8; 16];
            header[0..4].copy_from_slice(&kind.to_le_bytes());
            header[8..16].copy_from_slice(&sector.to_le_bytes());
            mem.write_slice(&header, GuestAddress(0)).unwrap();
            mem.write_slice(&ranges, GuestAddress(16)).unwrap();
            let limits = Limits::for_capacity(1 << 20);
            let chain = descs.iter().map(|&(addr, len, write)| {
                let flags = if write { virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16 } else { 0 };
                virtio_queue::desc::split::Descriptor::new(addr, len, flags, 0)
            });
            match parse(&mem, chain, &limits) {
                Ok(req) => {
                    prop_assert!(mem.check_range(req.status, 1));
                    let mut total = 0u64;
                    for seg in &req.data {
                        prop_assert!(seg.len > 0 && mem.check_range(seg.addr, seg.len as usize));
                        total += u64::from(seg.len);
                    }
                    prop_assert_eq!(total, req.data_len);
                    match &req.op {
                        Op::Read | Op::Write => {
                            prop_assert!(req.offset + req.data_len <= limits.capacity);
                            prop_assert!(req.data_len <= limits.max_transfer);
                        }
                        Op::Discard(rs) | Op::WriteZeroes(rs) => {
                            for r in rs {
                                prop_assert!(r.offset + r.len <= limits.capacity);
                            }
                        }
                        Op::Flush | Op::GetId => {}
                    }
                }
                Err(rejected) => {
                    if let Some(at) = rejected.status_addr {
                        prop_assert!(mem.check_range(at, 1));
                        prop_assert!(rejected.reason.status().is_some());
                    }
                }
            }
        }
    }
}
