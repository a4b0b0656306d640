//! The virtio-blk device model (examples::virtio_blk) run in-process: an aioctx IoThread serves the
//! queue, this thread is the guest's vCPU. Every request type with its data checked (in guest memory
//! and in the disk image), full workloads with every read verified, interrupt suppression, stopping,
//! and a guest that breaks the ring. Malformed chains: `app_device_model_malformed.rs`.

#[path = "app_device_model/rig.rs"]
mod rig;

use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aioctx::Backend;
use examples::virtio_blk::request::Limits;
use examples::virtio_blk::request::ID_BYTES;
use examples::virtio_blk::workload::{self, pattern, DiskModel, Rw, Workload};
use examples::virtio_blk::{DescSpec, GuestWait, VirtioBlkDevice};
use rig::{range, Rig, BS, DISK_SIZE, OK, UNSET};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::{Bytes, GuestAddress};

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

/// A workload of exactly `ios` requests: no time limit, so a slow machine (ASan, valgrind, load)
/// completes the same count; the rig's per-completion bound turns a stuck device into a failure.
fn workload(rw: Rw, iodepth: usize, ios: u64) -> Workload {
    Workload {
        rw,
        iodepth,
        duration: Duration::MAX,
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
fn start_and_stop_on_the_devices_own_iothread_fail_instead_of_hanging() {
    let mut rig = Rig::default();
    let remote = rig.iothread.as_ref().unwrap().remote().clone();
    let disk = tempfile::tempfile().unwrap();
    let parts = rig
        .machine
        .device_parts(disk, Limits::for_capacity(rig::DISK_SIZE));
    let on_iothread = remote.clone();
    let started = remote
        .call(move || VirtioBlkDevice::start(&on_iothread, parts).map(drop))
        .unwrap();
    assert_eq!(started.unwrap_err().kind(), ErrorKind::WouldBlock);
    rig.assert_still_serving();

    // Stopping there only asks the device to stop: the loop is not blocked, so it keeps serving.
    let device = rig.device.take().unwrap();
    let stopped = remote.call(move || device.stop()).unwrap();
    assert_eq!(stopped.unwrap_err().kind(), ErrorKind::WouldBlock);
    assert_eq!(remote.call(|| 7).unwrap(), 7, "the IoThread still serves");
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
