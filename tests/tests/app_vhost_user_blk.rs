//! The vhost-user-blk daemon (examples::vhost_user_blk) driven over its socket: by rust-vmm's vhost
//! frontend with guest memory in a memfd (as a VMM shares it) and this thread as the guest's vCPU, and
//! by a raw front end sending what a well-behaved one never would. A real QEMU 10 guest drives it in
//! `app_vhost_user_blk_guest.rs`.

#[path = "app_vhost_user_blk/harness.rs"]
mod harness;

use std::os::fd::AsRawFd;

use examples::virtio_blk::workload::{self, pattern, DiskModel, Rw, Workload};
use examples::virtio_blk::DescSpec;
use harness::rig::{Rig, BS, IOERR, OK};
use harness::{
    code, mem_table, vring_addr, vring_state, Answer, DaemonRig, FrontEnd, RawFrontEnd, GUEST_MEM,
    IMAGE_SIZE,
};
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_RO, VIRTIO_BLK_T_OUT};
use vm_memory::Bytes;

const SECTORS_PER_BLOCK: u64 = (BS / 512) as u64;

#[test]
fn four_queues_on_two_iothreads_serve_verified_io_and_report_the_disk() {
    let daemon = DaemonRig::start(|o| {
        o.num_queues = 4;
        o.iothreads = Some(2);
    });
    let mut fe = FrontEnd::connect(&daemon.socket, 4);
    assert_eq!(fe.frontend.get_queue_num().unwrap(), 4);
    let (_, config) = fe
        .frontend
        .get_config(0, 60, VhostUserConfigFlags::empty(), &[0; 60])
        .unwrap();
    let capacity = u64::from_le_bytes(config[0..8].try_into().unwrap());
    assert_eq!(capacity, IMAGE_SIZE / 512, "capacity in sectors");
    assert_eq!(
        u16::from_le_bytes([config[34], config[35]]),
        4,
        "num_queues"
    );

    let machines: Vec<_> = (0..4).map(|i| fe.start_queue(i, 0)).collect();
    std::thread::scope(|s| {
        for (i, machine) in machines.into_iter().enumerate() {
            let image = daemon.image.clone();
            s.spawn(move || {
                let mut rig = Rig::attached(machine, image);
                if i == 0 {
                    // Random reads and writes over the first half of the disk, every read verified.
                    let mut model = DiskModel::new(IMAGE_SIZE / 2, BS, true).unwrap();
                    let work = Workload {
                        rw: Rw::RandRw,
                        iodepth: 16,
                        duration: tests::BOUND,
                        max_ios: 2000,
                        seed: 7,
                    };
                    let res =
                        workload::run(&mut rig.driver, &rig.machine.layout, &mut model, &work)
                            .unwrap();
                    assert_eq!(res.ios, 2000);
                } else {
                    // Each other queue writes and reads back its own blocks in the second half.
                    for n in 0..50u64 {
                        let block = IMAGE_SIZE / BS as u64 / 2 + i as u64 * 100 + n;
                        let data = pattern(block, i as u32, BS);
                        rig.write(block * SECTORS_PER_BLOCK, rig.scratch(0x1000), &data);
                        assert_eq!(
                            rig.read(block * SECTORS_PER_BLOCK, rig.scratch(0x2000), BS),
                            data
                        );
                    }
                }
            });
        }
    });
    let block = IMAGE_SIZE / BS as u64 / 2 + 300 + 49;
    assert_eq!(
        daemon.image_bytes(block * BS as u64, BS),
        pattern(block, 3, BS),
        "queue 3's last write is in the image"
    );
    drop(fe);
    daemon.stop().unwrap();
}

#[test]
fn get_vring_base_says_where_the_ring_stopped_and_it_resumes_there() {
    let daemon = DaemonRig::start(|_| {});
    let mut fe = FrontEnd::connect(&daemon.socket, 1);
    let mut rig = Rig::attached(fe.start_queue(0, 0), daemon.image.clone());
    for n in 0..10u64 {
        rig.write(
            n * SECTORS_PER_BLOCK,
            rig.scratch(0x1000),
            &pattern(n, 1, BS),
        );
    }
    assert_eq!(fe.frontend.get_vring_base(0).unwrap(), 10);
    // The ring is stopped: the same queue is started again from index 10 with the same eventfds,
    // and the guest goes on where it was.
    let (kick, call) = fe.eventfds[0].take().unwrap();
    fe.frontend.set_vring_base(0, 10).unwrap();
    fe.frontend.set_vring_call(0, &call).unwrap();
    fe.frontend.set_vring_kick(0, &kick).unwrap();
    fe.frontend.set_vring_enable(0, true).unwrap();
    for n in 0..10u64 {
        assert_eq!(
            rig.read(n * SECTORS_PER_BLOCK, rig.scratch(0x2000), BS),
            pattern(n, 1, BS)
        );
    }
    assert_eq!(fe.frontend.get_vring_base(0).unwrap(), 20);
    drop(fe);
    daemon.stop().unwrap();
}

#[test]
fn a_front_end_killed_mid_io_keeps_its_data_and_the_next_one_is_served() {
    let daemon = DaemonRig::start(|o| o.num_queues = 2);
    let written = pattern(5, 9, BS);
    {
        let mut fe = FrontEnd::connect(&daemon.socket, 2);
        let mut rig = Rig::attached(fe.start_queue(0, 0), daemon.image.clone());
        rig.write(5 * SECTORS_PER_BLOCK, rig.scratch(0x1000), &written);
        // Sixteen writes in flight (never waited for), then the front end is gone: the socket
        // closes with the guest's memory still mapped by the daemon.
        let layout = rig.machine.layout;
        for slot in 0..16 {
            let sector = (100 + slot as u64) * SECTORS_PER_BLOCK;
            let header = rig.header(layout.header(slot), VIRTIO_BLK_T_OUT, sector);
            let data = DescSpec::read(layout.data(slot), BS as u32);
            let status = rig.status(layout.status(slot));
            rig.driver.submit(&[header, data, status]).unwrap();
        }
        rig.driver.kick().unwrap();
        drop(fe);
    }
    let mut fe = FrontEnd::connect(&daemon.socket, 2);
    let mut rig = Rig::attached(fe.start_queue(1, 0), daemon.image.clone());
    assert_eq!(
        rig.read(5 * SECTORS_PER_BLOCK, rig.scratch(0x2000), BS),
        written,
        "data written before the kill reads back through the next front end"
    );
    rig.assert_still_serving();
    drop(fe);
    daemon.stop().unwrap();
}

tests::per_backend! {
fn a_second_front_end_is_refused_while_one_is_served(backend) {
    let daemon = DaemonRig::start(|o| o.backend = backend);
    let mut fe = FrontEnd::connect(&daemon.socket, 1);
    let mut rig = Rig::attached(fe.start_queue(0, 0), daemon.image.clone());
    let mut second = RawFrontEnd::connect(&daemon.socket);
    assert_eq!(second.answer(), Answer::Closed, "the second connection is closed");
    rig.assert_still_serving();
    drop(fe);
    // Once the first has gone, the next one is served.
    let mut fe = FrontEnd::connect(&daemon.socket, 1);
    Rig::attached(fe.start_queue(0, 0), daemon.image.clone()).assert_still_serving();
    drop(fe);
    daemon.stop().unwrap();
}
}

#[test]
fn a_read_only_export_offers_ro_and_fails_writes() {
    let daemon = DaemonRig::start(|o| o.read_only = true);
    let mut fe = FrontEnd::connect(&daemon.socket, 1);
    assert_ne!(fe.features & 1 << VIRTIO_BLK_F_RO, 0, "RO offered");
    let mut rig = Rig::attached(fe.start_queue(0, 0), daemon.image.clone());
    // A guest that writes anyway gets IOERR, and the image is untouched.
    let buf = rig.scratch(0x1000);
    rig.mem().write_slice(&pattern(1, 1, BS), buf).unwrap();
    let seg = DescSpec::read(buf, BS as u32);
    assert_eq!(rig.request(VIRTIO_BLK_T_OUT, 8, &[seg]), (IOERR, 1));
    assert_eq!(daemon.image_bytes(8 * 512, BS), vec![0; BS]);
    assert_eq!(
        rig.read(8, rig.scratch(0x2000), BS),
        vec![0; BS],
        "reads work"
    );
    let _ = OK;
    drop(fe);
    daemon.stop().unwrap();
}

/// Refused: a REPLY_ACK failure (when the daemon got that far; replies to earlier requests may come
/// first) and then the connection closed.
fn assert_refused(raw: &mut RawFrontEnd, case: &str) {
    loop {
        match raw.answer() {
            Answer::U64(v) => assert_ne!(v, 0, "{case}: acked as accepted"),
            Answer::Closed => return,
            other => panic!("{case}: unexpected answer {other:?}"),
        }
    }
}

tests::per_backend! {
fn hostile_front_ends_are_refused_and_the_daemon_serves_on(backend) {
    let daemon = DaemonRig::start(|o| {
        o.backend = backend;
        o.stall_limit = std::time::Duration::from_millis(200);
    });
    let ram = harness::GuestRam::new(GUEST_MEM);
    let memfd = ram.file.as_raw_fd();
    // Neither an eventfd nor a regular file.
    let (socket_a, _socket_b) = std::os::unix::net::UnixStream::pair().unwrap();
    let pipe = socket_a.as_raw_fd();
    let small = {
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        f
    };
    let good_table = mem_table(&[(0, GUEST_MEM, ram.host_addr, 0)]);
    let eventfd = aioctx::EventNotifier::new().unwrap();

    type Case = Box<dyn Fn(&mut RawFrontEnd)>;
    let cases: Vec<(&str, Case)> = vec![
        (
            "a header claiming a body longer than any message",
            Box::new(|r| r.send_header(code::GET_CONFIG, 0x1 | 0x8, 1 << 20, &[], &[])),
        ),
        (
            "a truncated body",
            Box::new(|r| r.send_header(code::SET_VRING_NUM, 0x1 | 0x8, 8, &[0; 4], &[])),
        ),
        (
            "an unknown request",
            Box::new(|r| r.send(9999, true, &[], &[])),
        ),
        (
            "an fd on a message that takes none",
            Box::new(move |r| r.send(code::SET_OWNER, true, &[], &[memfd])),
        ),
        (
            "a memory table with fewer fds than regions",
            Box::new(move |r| {
                let body = mem_table(&[(0, 4096, 0x1000_0000, 0), (1 << 20, 4096, 0x2000_0000, 0)]);
                r.send(code::SET_MEM_TABLE, true, &body, &[memfd]);
            }),
        ),
        (
            "overlapping regions",
            Box::new(move |r| {
                let body = mem_table(&[(0, 8192, 0x1000_0000, 0), (4096, 4096, 0x2000_0000, 0)]);
                r.send(code::SET_MEM_TABLE, true, &body, &[memfd, memfd]);
            }),
        ),
        (
            "a zero-sized region",
            Box::new(move |r| {
                r.send(code::SET_MEM_TABLE, true, &mem_table(&[(0, 0, 0x1000_0000, 0)]), &[memfd])
            }),
        ),
        (
            "a region larger than its file",
            Box::new({
                let fd = small.as_raw_fd();
                move |r| {
                    let body = mem_table(&[(0, 1 << 40, 0x1000_0000, 0)]);
                    r.send(code::SET_MEM_TABLE, true, &body, &[fd]);
                }
            }),
        ),
        (
            "a region whose fd is a socket",
            Box::new(move |r| {
                r.send(code::SET_MEM_TABLE, true, &mem_table(&[(0, 4096, 0x1000_0000, 0)]), &[pipe])
            }),
        ),
        (
            "a queue size that is not a power of two",
            Box::new(|r| r.send(code::SET_VRING_NUM, true, &vring_state(0, 100), &[])),
        ),
        (
            "a queue size above 32768",
            Box::new(|r| r.send(code::SET_VRING_NUM, true, &vring_state(0, 65536), &[])),
        ),
        (
            "a queue index out of range",
            Box::new(|r| r.send(code::SET_VRING_NUM, true, &vring_state(5, 128), &[])),
        ),
        (
            "a base that is not a ring index",
            Box::new(|r| r.send(code::SET_VRING_BASE, true, &vring_state(0, 70000), &[])),
        ),
        (
            "vring addresses outside guest memory",
            Box::new({
                let table = good_table.clone();
                let user = ram.host_addr;
                move |r| {
                    r.send(code::SET_MEM_TABLE, false, &table, &[memfd]);
                    r.send(code::SET_VRING_NUM, false, &vring_state(0, 128), &[]);
                    let outside = user + GUEST_MEM;
                    let body = vring_addr(0, outside, user, user + 0x1000);
                    r.send(code::SET_VRING_ADDR, true, &body, &[]);
                }
            }),
        ),
        (
            "a kick fd that is not an eventfd",
            Box::new(move |r| r.send(code::SET_VRING_KICK, true, &0u64.to_le_bytes(), &[pipe])),
        ),
        (
            "a kick without an fd (polling mode)",
            Box::new(|r| r.send(code::SET_VRING_KICK, true, &0x100u64.to_le_bytes(), &[])),
        ),
        (
            "a call fd for a queue out of range",
            Box::new({
                let fd = eventfd.as_raw_fd();
                move |r| r.send(code::SET_VRING_CALL, true, &7u64.to_le_bytes(), &[fd])
            }),
        ),
        (
            "a header sent in pieces and never finished",
            Box::new(|r| {
                harness::write_raw(&mut r.sock, &code::SET_VRING_NUM.to_le_bytes());
                harness::write_raw(&mut r.sock, &[0x9]);
            }),
        ),
        (
            "a front end that never reads its replies",
            Box::new(|r| {
                // Requests keep coming while the replies pile up unread: the daemon stops reading
                // when it has no room to reply, and drops the front end when that lasts.
                r.sock.set_nonblocking(true).unwrap();
                let mut msg = code::GET_FEATURES.to_le_bytes().to_vec();
                msg.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
                let mut sent = 0;
                let give_up = std::time::Instant::now() + tests::BOUND;
                loop {
                    match std::io::Write::write(&mut r.sock, &msg[sent..]) {
                        Ok(n) => sent = (sent + n) % msg.len(),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            assert!(std::time::Instant::now() < give_up, "never dropped");
                            harness::wait_writable(&r.sock, 100);
                        }
                        Err(_) => break, // EPIPE or a reset: the daemon closed the connection
                    }
                }
                r.sock.set_nonblocking(false).unwrap();
            }),
        ),
        (
            "features that were not offered",
            Box::new(|r| r.send(code::SET_FEATURES, true, &(1u64 << 60).to_le_bytes(), &[])),
        ),
    ];
    for (case, send) in &cases {
        let mut raw = RawFrontEnd::connect(&daemon.socket);
        raw.negotiate();
        send(&mut raw);
        assert_refused(&mut raw, case);
    }
    // A config window past the protocol's limit gets vhost-user's error reply (an empty payload),
    // and the connection goes on.
    let mut raw = RawFrontEnd::connect(&daemon.socket);
    raw.negotiate();
    let mut body = 250u32.to_le_bytes().to_vec();
    body.extend_from_slice(&100u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&[0; 100]);
    raw.send(code::GET_CONFIG, false, &body, &[]);
    let Answer::Bytes(reply) = raw.answer() else {
        panic!("GET_CONFIG got no config reply")
    };
    assert_eq!(reply.len(), 12, "no payload");
    assert_eq!(&reply[4..8], &[0; 4], "size 0: an error");
    raw.send(code::GET_FEATURES, false, &[], &[]);
    assert!(matches!(raw.answer(), Answer::U64(f) if f != 0), "still served");
    drop(raw);
    // After all that, a well-behaved front end is served.
    let mut fe = FrontEnd::connect(&daemon.socket, 1);
    Rig::attached(fe.start_queue(0, 0), daemon.image.clone()).assert_still_serving();
    drop(fe);
    daemon.stop().unwrap();
}
}

/// A front end that gives two queues the same kick eventfd: each ring still stops when told (the stop
/// does not travel through the kick, which the other queue's waiter could consume), so the daemon
/// drops the front end and serves the next one.
#[test]
fn queues_sharing_one_kick_eventfd_still_stop() {
    let daemon = DaemonRig::start(|o| {
        o.num_queues = 2;
        o.iothreads = Some(1);
    });
    let mut fe = FrontEnd::connect(&daemon.socket, 2);
    let mut rig = Rig::attached(fe.start_queue(0, 0), daemon.image.clone());
    let shared_kick = &fe.eventfds[0].as_ref().unwrap().0;
    let q1 = FrontEnd::layout(1).queue;
    fe.frontend.set_vring_num(1, q1.size).unwrap();
    fe.frontend
        .set_vring_addr(
            1,
            &vhost::VringConfigData {
                queue_max_size: q1.size,
                queue_size: q1.size,
                flags: 0,
                desc_table_addr: fe.ram.user_addr(q1.desc_table),
                used_ring_addr: fe.ram.user_addr(q1.used_ring),
                avail_ring_addr: fe.ram.user_addr(q1.avail_ring),
                log_addr: None,
            },
        )
        .unwrap();
    fe.frontend.set_vring_kick(1, shared_kick).unwrap();
    fe.frontend.set_vring_enable(1, true).unwrap();
    rig.assert_still_serving();
    for _ in 0..3 {
        assert_eq!(
            fe.frontend.get_vring_base(1).unwrap(),
            0,
            "queue 1 took nothing"
        );
        fe.frontend.set_vring_kick(1, shared_kick).unwrap();
        fe.frontend.set_vring_enable(1, true).unwrap();
    }
    drop(fe);
    let mut fe = FrontEnd::connect(&daemon.socket, 2);
    Rig::attached(fe.start_queue(0, 0), daemon.image.clone()).assert_still_serving();
    drop(fe);
    daemon.stop().unwrap();
}
