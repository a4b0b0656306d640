//! The vhost-user-blk daemon (examples::vhost_user_blk) serving a real Linux guest under QEMU 10
//! (`tests::guest`): fio with crc32c verification on 1 queue and on 4 queues over 2 IoThreads, a
//! sequential write read back, discard and write-zeroes seen in the image, a front end killed mid-I/O
//! and a new one verifying what the first wrote, and a read-only export. The daemon runs in this
//! process on its own thread; each guest runs alone (`guest::one_at_a_time`) within `guest::TIMEOUT`.
//! About 3 minutes here (15 to 30 s a guest).

#[path = "app_vhost_user_blk/harness.rs"]
mod harness;

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;

use harness::DaemonRig;
use tests::guest::{self, Disk, Guest, Job};

const MIB: u64 = 1 << 20;

fn randrw(queues: u16, iothreads: usize) {
    let _alone = guest::one_at_a_time();
    let daemon = DaemonRig::start_sized(32 * MIB, |o| {
        o.num_queues = queues;
        o.iothreads = Some(iothreads);
    });
    let out = Guest::new(Job::randrw(queues.into(), 16))
        .cpus(queues.into())
        .disk(Disk::vhost_user(&daemon.socket, queues))
        .run();
    out.assert_ok();
    assert_eq!(out.value("vda.bytes"), (32 * MIB).to_string());
    out.assert_randrw_verified(queues, &format!("aioctx with {iothreads} IoThreads"));
    daemon.stop().unwrap();
}

#[test]
fn a_guest_runs_verified_randrw_on_one_queue() {
    randrw(1, 1);
}

#[test]
fn a_guest_runs_verified_randrw_on_four_queues_over_two_iothreads() {
    randrw(4, 2);
}

#[test]
fn a_guest_writes_sequentially_and_reads_it_back() {
    let _alone = guest::one_at_a_time();
    let daemon = DaemonRig::start_sized(64 * MIB, |_| {});
    let out = Guest::new(Job::seqverify())
        .disk(Disk::vhost_user(&daemon.socket, 1))
        .run();
    out.assert_ok();
    let fio = out.fio("seqverify");
    assert_eq!(fio.error, 0);
    assert_eq!(fio.write.io_bytes, 64 * MIB);
    assert_eq!(fio.read.io_bytes, 64 * MIB, "the read-back covers the disk");
    daemon.stop().unwrap();
}

/// Where the image has data at or after `from` (SEEK_DATA), or its length if nowhere.
fn next_data(image: &std::fs::File, from: u64) -> u64 {
    // SAFETY: lseek on an open fd takes no pointers.
    let at = unsafe { libc::lseek(image.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
    if at < 0 {
        image.metadata().unwrap().len()
    } else {
        at as u64
    }
}

/// Discard and write-zeroes from the guest (blkdiscard, blkdiscard -z, fallocate --zero-range) reach
/// the image: the discarded MiB is a hole in the file, the zeroed MiBs read as zeroes (as WRITE_ZEROES
/// requests, no fallback to writes), the next MiB keeps its data.
#[test]
fn discard_and_write_zeroes_from_the_guest_reach_the_image() {
    let _alone = guest::one_at_a_time();
    let daemon = DaemonRig::start_sized(16 * MIB, |_| {});
    let out = Guest::new(Job::discard())
        .disk(Disk::vhost_user(&daemon.socket, 1))
        .run();
    out.assert_ok();
    assert_eq!(out.value("filled"), "yes");
    assert_eq!(out.value("vda.discard_max_bytes"), (32 * MIB).to_string());
    assert_eq!(
        out.value("vda.write_zeroes_max_bytes"),
        (32 * MIB).to_string(),
        "WRITE_ZEROES offered: the guest zeroes with it rather than with written zero pages"
    );
    assert_eq!(out.value("discard.rc"), "0");
    assert_eq!(out.value("discard.discard_ios"), "1");
    for step in ["zeroout", "zero_range"] {
        assert_eq!(out.value(&format!("{step}.rc")), "0", "{step}");
        assert_eq!(out.value(&format!("{step}.zeroed")), "yes", "{step}");
        // One WRITE_ZEROES, or two: the count the kernel reports varies between the two tools
        // (qemu-storage-daemon's export measured 1 for both).
        let writes: u32 = out.value(&format!("{step}.write_ios")).parse().unwrap();
        assert!((1..=2).contains(&writes), "{step}: {writes} write requests");
    }
    assert_eq!(out.value("untouched.intact"), "yes");
    // The guest has powered off: what it did is in the image.
    let mut image = std::fs::File::open(&daemon.image).unwrap();
    assert!(
        next_data(&image, 0) >= MIB,
        "the discarded MiB is a hole in the image"
    );
    let mut bytes = vec![0u8; 4 * MIB as usize];
    image.seek(SeekFrom::Start(0)).unwrap();
    image.read_exact(&mut bytes).unwrap();
    let mib = MIB as usize;
    assert!(
        bytes[..3 * mib].iter().all(|&b| b == 0),
        "MiBs 0-2 read as zeroes"
    );
    assert!(
        bytes[3 * mib..].iter().all(|&b| b == 0xaa),
        "MiB 3 untouched"
    );
    daemon.stop().unwrap();
}

/// A front end killed mid-I/O (QEMU gets SIGKILL while the guest writes): the daemon stops its rings,
/// keeps serving, and a new front end's guest verifies the pattern the first one wrote and flushed.
#[test]
fn a_front_end_killed_mid_io_and_its_successor_verifies_the_data() {
    let _alone = guest::one_at_a_time();
    let daemon = DaemonRig::start_sized(64 * MIB, |_| {});
    let mut writer = Guest::new(Job::pattern("write").param("hold", "io"))
        .disk(Disk::vhost_user(&daemon.socket, 1))
        .start();
    writer.wait_for_mark("written", guest::TIMEOUT);
    writer.wait_for_mark("holding", guest::TIMEOUT);
    let killed = writer.kill();
    assert!(
        killed.killed && killed.done.is_none(),
        "{}",
        killed.report()
    );
    assert_eq!(killed.fio("pattern.write").write.io_bytes, 16 * MIB);

    let out = Guest::new(Job::pattern("verify"))
        .disk(Disk::vhost_user(&daemon.socket, 1))
        .run();
    out.assert_ok();
    assert_eq!(out.fio("pattern.verify").read.io_bytes, 16 * MIB);
    daemon.stop().unwrap();
}

/// A read-only export: the guest sees a read-only disk and its write fails; reads work.
#[test]
fn a_read_only_export_refuses_writes_in_the_guest() {
    let _alone = guest::one_at_a_time();
    let daemon = DaemonRig::start_sized(16 * MIB, |o| o.read_only = true);
    let out = Guest::new(Job::readonly())
        .disk(Disk::vhost_user(&daemon.socket, 1))
        .run();
    out.assert_ok();
    assert_eq!(out.value("vda.ro"), "1");
    assert_eq!(
        out.value("write.error"),
        "EPERM",
        "{}",
        out.value("write.msg")
    );
    assert_eq!(out.value("read.rc"), "0");
    daemon.stop().unwrap();
}
