//! Broken and hostile clients: malformed handshakes and requests, vanishing clients, a client that
//! never reads its replies. After each, a bystander connection must still be served.

use std::io::{ErrorKind, Read, Write};

use proptest::prelude::*;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::client::*;

fn server() -> TestServer {
    TestServer::start(Setup::default())
}

/// The bystander's block: far from what the hostile clients touch.
const BYSTANDER_AT: u64 = 7 << 20;

#[test]
fn options_are_answered_and_unknown_ones_refused() {
    let server = server();
    let mut c = Client::new(server.connect());
    c.greeting(true);
    c.send_option(OPT_LIST, &[]).unwrap();
    let entry = c.opt_reply().unwrap();
    assert_eq!((entry.option, entry.kind), (OPT_LIST, REP_SERVER));
    assert_eq!(entry.data, b"\0\0\0\x04disk");
    assert_eq!(c.opt_reply().unwrap().kind, REP_ACK);
    c.send_option(OPT_LIST, b"junk").unwrap();
    assert_eq!(c.opt_reply().unwrap().kind, REP_ERR_INVALID);
    for unknown in [0, 4, 12, 0x7fff_ffff] {
        c.send_option(unknown, b"some data").unwrap();
        let r = c.opt_reply().unwrap();
        assert_eq!((r.option, r.kind), (unknown, REP_ERR_UNSUP));
    }
    // No TLS configured: as qemu-nbd, STARTTLS is against the server's policy (with data, invalid),
    // and the options go on in the clear.
    c.send_option(OPT_STARTTLS, &[]).unwrap();
    assert_eq!(c.opt_reply().unwrap().kind, REP_ERR_POLICY);
    c.send_option(OPT_STARTTLS, b"x").unwrap();
    assert_eq!(c.opt_reply().unwrap().kind, REP_ERR_INVALID);
    assert_eq!(c.info_or_go(OPT_INFO, "nope"), Err(REP_ERR_UNKNOWN));
    let mut bad_info = Client::info_data("disk", &[3]);
    bad_info.push(0);
    c.send_option(OPT_INFO, &bad_info).unwrap();
    assert_eq!(c.opt_reply().unwrap().kind, REP_ERR_INVALID);
    c.send_option(OPT_GO, &[0, 0, 0, 9]).unwrap();
    assert_eq!(c.opt_reply().unwrap().kind, REP_ERR_INVALID);
    let (size, flags, sizes) = c.info_or_go(OPT_INFO, "disk").unwrap();
    assert_eq!(size, server.size);
    assert_eq!(sizes, Some([1, 4096, 32 << 20]));
    // HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN, SEND_CACHE,
    // SEND_FAST_ZERO; not READ_ONLY, not SEND_DF (no structured replies negotiated).
    assert_eq!(flags, 1 | 4 | 8 | 32 | 64 | 256 | 1024 | 2048);
    // The empty name is the default export.
    assert_eq!(c.go("").unwrap().0, server.size);
    round_trip(&mut c, 0, 1);
}

#[test]
fn export_name_handshake_with_and_without_zeroes() {
    let server = server();
    for no_zeroes in [true, false] {
        let mut c = Client::new(server.connect());
        c.greeting(no_zeroes);
        c.send_option(OPT_EXPORT_NAME, b"disk").unwrap();
        assert_eq!(c.u64().unwrap(), server.size);
        assert_eq!(c.u16().unwrap() & 1, 1, "HAS_FLAGS");
        if !no_zeroes {
            assert_eq!(c.read_data(124), vec![0; 124]);
        }
        round_trip(&mut c, 4096, 2);
        c.send(CMD_DISC, 0, 1, 0, 0);
        assert!(c.closed_by_server());
    }
}

#[test]
fn abort_is_acknowledged_then_closed() {
    let server = server();
    let mut c = Client::new(server.connect());
    c.greeting(true);
    c.send_option(OPT_ABORT, &[]).unwrap();
    let r = c.opt_reply().unwrap();
    assert_eq!((r.option, r.kind), (OPT_ABORT, REP_ACK));
    assert!(c.closed_by_server());
}

/// Something a broken client does after connecting.
type BrokenStart = fn(&mut Client);

#[test]
fn broken_handshakes_close_only_their_connection() {
    let server = server();
    let mut bystander = server.client();
    let broken: [(&str, BrokenStart); 5] = [
        ("bad option magic", |c| {
            c.greeting(true);
            c.s.write_all(&[0x55; 16]).unwrap();
        }),
        ("unknown client flags", |c| {
            c.read_data(18);
            c.s.write_all(&0x8000_0001u32.to_be_bytes()).unwrap();
        }),
        ("option data of 1 GiB", |c| {
            c.greeting(true);
            let mut b = IHAVEOPT.to_be_bytes().to_vec();
            b.extend_from_slice(&OPT_GO.to_be_bytes());
            b.extend_from_slice(&(1u32 << 30).to_be_bytes());
            c.s.write_all(&b).unwrap();
        }),
        ("EXPORT_NAME of an unknown export", |c| {
            c.greeting(true);
            c.send_option(OPT_EXPORT_NAME, b"other").unwrap();
        }),
        ("INFO from a client that is not fixed newstyle", |c| {
            c.read_data(18);
            c.s.write_all(&0u32.to_be_bytes()).unwrap();
            c.send_option(OPT_INFO, &Client::info_data("disk", &[]))
                .unwrap();
        }),
    ];
    for (i, (what, act)) in broken.iter().enumerate() {
        let mut c = Client::new(server.connect());
        act(&mut c);
        assert!(c.closed_by_server(), "{what}: connection not closed");
        round_trip(&mut bystander, BYSTANDER_AT, i as u8);
    }
    // Clients that vanish in the middle of the handshake.
    for cut in [0, 10, 18, 22, 30] {
        let mut c = Client::new(server.connect());
        let mut all = vec![0; 18];
        c.s.read_exact(&mut all).unwrap();
        let mut hello = 3u32.to_be_bytes().to_vec();
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&OPT_GO.to_be_bytes());
        hello.extend_from_slice(&100u32.to_be_bytes());
        hello.truncate(cut.min(hello.len()));
        c.s.write_all(&hello).unwrap();
        drop(c);
        round_trip(&mut bystander, BYSTANDER_AT, cut as u8);
    }
}

#[test]
fn invalid_requests_get_errors_and_the_connection_goes_on() {
    let server = server();
    let size = server.size;
    let mut c = server.client();
    assert_eq!(c.read(size - 4096, 8192), Err(EINVAL), "read past the end");
    assert_eq!(c.read(size, 1), Err(EINVAL), "read at the end");
    assert_eq!(c.read(u64::MAX - 10, 100), Err(EINVAL), "offset overflow");
    assert_eq!(c.read(0, (32 << 20) + 1), Err(EINVAL), "read over 32 MiB");
    assert_eq!(c.read(size - 10, 10).unwrap(), vec![0xee; 10]);
    assert_eq!(c.read(0, 0).unwrap(), Vec::<u8>::new());
    // A write past the end: its payload is skipped, the stream stays in step.
    assert_eq!(c.write(0, size - 100, &[1; 4096]), EINVAL);
    round_trip(&mut c, 0, 3);
    assert_eq!(c.simple(CMD_TRIM, 0, size, 1), EINVAL);
    assert_eq!(c.simple(CMD_WRITE_ZEROES, 0, size - 1, 2), EINVAL);
    assert_eq!(c.simple(8, 0, 0, 4096), EINVAL, "unknown command 8");
    assert_eq!(c.simple(0x1234, 0, 0, 4096), EINVAL, "unknown command");
    assert_eq!(c.simple(CMD_READ, 1 << 7, 0, 0), EINVAL, "unknown flag");
    assert_eq!(c.simple(CMD_FLUSH, FLAG_FUA, 0, 0), EINVAL, "FUA on FLUSH");
    assert_eq!(c.write(1 << 9, 0, &[2; 10]), EINVAL, "unknown write flag");
    round_trip(&mut c, 4096, 4);
    // Write-zeroes and trim far beyond 32 MiB are fine when in range (no payload).
    assert_eq!(c.simple(CMD_WRITE_ZEROES, FLAG_NO_HOLE, 0, size as u32), 0);
    assert_eq!(c.read(size - 4096, 4096).unwrap(), vec![0; 4096]);
    assert_eq!(c.simple(CMD_FLUSH, 0, 0, 0), 0);
    c.send(CMD_DISC, 0, 1, 0, 0);
    assert!(c.closed_by_server());
}

#[test]
fn bad_magic_and_oversized_writes_close_the_connection() {
    let server = server();
    let mut bystander = server.client();
    let mut c = server.client();
    let mut req = Client::request_bytes(CMD_READ, 0, 1, 0, 512);
    req[0] ^= 0xff;
    c.s.write_all(&req).unwrap();
    assert!(c.closed_by_server(), "bad request magic");
    round_trip(&mut bystander, BYSTANDER_AT, 5);

    let mut c = server.client();
    c.send(CMD_WRITE, 0, 2, 0, u32::MAX);
    // The server may already have closed: this write may fail.
    let _ = c.s.write_all(&[0; 4096]);
    assert!(c.closed_by_server(), "4 GiB write");
    round_trip(&mut bystander, BYSTANDER_AT, 6);
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let mut server = TestServer::start(Setup {
        read_only: true,
        ..Setup::default()
    });
    let mut c = Client::new(server.connect());
    c.greeting(true);
    let (_, flags) = c.go("disk").unwrap();
    assert_eq!(flags & 2, 2, "READ_ONLY flag");
    assert_eq!(c.write(0, 0, &[1; 512]), EPERM);
    assert_eq!(c.write(FLAG_FUA, 0, &[1; 512]), EPERM);
    assert_eq!(c.simple(CMD_TRIM, 0, 0, 512), EPERM);
    assert_eq!(c.simple(CMD_WRITE_ZEROES, 0, 0, 512), EPERM);
    assert_eq!(c.read(0, 512).unwrap(), vec![0xee; 512]);
    assert_eq!(c.simple(CMD_FLUSH, 0, 0, 0), 0);
    let image = server.image.clone();
    server.stop().unwrap();
    assert!(std::fs::read(image).unwrap().iter().all(|&b| b == 0xee));
}

#[test]
fn vanishing_clients_are_cleaned_up() {
    let mut server = server();
    let mut bystander = server.client();
    // Mid-payload.
    let mut c = server.client();
    c.send(CMD_WRITE, 0, 1, 0, 1 << 20);
    c.s.write_all(&[7; 1000]).unwrap();
    drop(c);
    round_trip(&mut bystander, BYSTANDER_AT, 7);
    // With many requests in flight and their replies never read.
    let mut c = server.client();
    c.s.write_all(&read_burst(200)).unwrap();
    drop(c);
    round_trip(&mut bystander, BYSTANDER_AT, 8);
    // Mid-header.
    let mut c = server.client();
    c.s.write_all(&Client::request_bytes(CMD_READ, 0, 1, 0, 512)[..13])
        .unwrap();
    drop(c);
    round_trip(&mut bystander, BYSTANDER_AT, 9);
    // Every connection task ended or ends on shutdown: serve returns.
    drop(bystander);
    server
        .stop()
        .expect("serve returns after the vanished clients");
}

#[test]
fn a_client_that_never_reads_replies_stalls_only_itself() {
    let server = server();
    let mut bystander = server.client();
    let mut greedy = Client::new(Box::new({
        let s = UnixStream::connect(server.socket_path()).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        // How long a blocked write counts as "the server stopped reading".
        s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    }));
    greedy.greeting(true);
    greedy.go("disk").unwrap();
    // 40 writes of 1000 read requests each: 160 MB of reads, far more than the server may hold. A server
    // that bounds its in-flight requests stops reading, the socket buffers fill, and a write blocks.
    let mut sent = 0u64;
    let mut blocked = false;
    for batch in 0..40u64 {
        let mut bytes = Vec::with_capacity(28_000);
        for i in 0..1000u64 {
            let n = batch * 1000 + i;
            bytes.extend(Client::request_bytes(
                CMD_READ,
                0,
                n,
                (n % 2048) << 12,
                4096,
            ));
        }
        match greedy.s.write_all(&bytes) {
            Ok(()) => sent += 1000,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                blocked = true;
                break;
            }
            Err(e) => panic!("writing requests: {e}"),
        }
        round_trip(&mut bystander, BYSTANDER_AT, batch as u8);
    }
    assert!(
        blocked,
        "the server read all {sent} requests of a client that reads no replies"
    );
    round_trip(&mut bystander, BYSTANDER_AT, 99);
    drop(greedy);
    round_trip(&mut bystander, BYSTANDER_AT, 100);
}

#[test]
fn pipelined_requests_are_matched_by_cookie() {
    let server = TestServer::start(Setup {
        iothreads: 1,
        ..Setup::default()
    });
    let mut c = server.client();
    let block = |i: u64| vec![(i * 7 + 1) as u8; 4096];
    let mut burst = Vec::new();
    for i in 0..48u64 {
        burst.extend(Client::request_bytes(
            CMD_WRITE,
            0,
            1000 + i,
            i * 8192,
            4096,
        ));
        burst.extend(block(i));
    }
    c.s.write_all(&burst).unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..48 {
        let r = c.reply().unwrap();
        assert_eq!(r.error, 0);
        assert!(
            (1000..1048).contains(&r.cookie) && seen.insert(r.cookie),
            "{r:?}"
        );
    }
    let mut burst = Vec::new();
    for i in 0..48u64 {
        burst.extend(Client::request_bytes(CMD_READ, 0, 2000 + i, i * 8192, 4096));
    }
    c.s.write_all(&burst).unwrap();
    seen.clear();
    for _ in 0..48 {
        let r = c.reply().unwrap();
        assert_eq!(r.error, 0);
        assert!(
            (2000..2048).contains(&r.cookie) && seen.insert(r.cookie),
            "{r:?}"
        );
        assert_eq!(c.read_data(4096), block(r.cookie - 2000));
    }
}

#[test]
fn shutdown_finishes_the_request_in_flight_then_closes() {
    let mut server = server();
    let mut c = server.client();
    // One write carries request A, the header of B and the start of B's payload: when A's reply arrives,
    // the server has already started reading B.
    let payload: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let mut bytes = Client::request_bytes(CMD_READ, 0, 1, 0, 4096);
    bytes.extend(Client::request_bytes(CMD_WRITE, FLAG_FUA, 2, 8192, 65536));
    bytes.extend_from_slice(&payload[..100]);
    c.s.write_all(&bytes).unwrap();
    assert_eq!(
        c.reply().unwrap(),
        Reply {
            error: 0,
            cookie: 1
        }
    );
    assert_eq!(c.read_data(4096), vec![0xee; 4096]);
    let stop = server.shutdown_handle();
    stop.shutdown();
    c.s.write_all(&payload[100..]).unwrap();
    assert_eq!(
        c.reply().unwrap(),
        Reply {
            error: 0,
            cookie: 2
        }
    );
    assert!(c.closed_by_server(), "closed after the last reply");
    let image = server.image.clone();
    let socket = server.socket_path().to_owned();
    server.stop().expect("serve returns Ok");
    assert!(!socket.exists(), "the socket file is removed");
    let file = std::fs::read(image).unwrap();
    assert_eq!(&file[8192..8192 + 65536], &payload[..]);
}

/// A server that gives closing connections 100 ms to drain.
fn quick_drain_server() -> TestServer {
    TestServer::start(Setup {
        drain_timeout: Duration::from_millis(100),
        ..Setup::default()
    })
}

/// `n` pipelined 64 KiB reads over the first 4 MiB.
fn read_burst(n: u64) -> Vec<u8> {
    let mut burst = Vec::new();
    for i in 0..n {
        burst.extend(Client::request_bytes(CMD_READ, 0, i, (i % 64) << 16, 65536));
    }
    burst
}

#[test]
fn shutdown_cuts_off_a_client_that_reads_no_replies() {
    let mut server = quick_drain_server();
    let mut greedy = server.client();
    // 13 MB of replies, far more than the socket buffers hold; none is read before the shutdown.
    greedy.s.write_all(&read_burst(200)).unwrap();
    round_trip(&mut server.client(), BYSTANDER_AT, 1);
    server.shutdown_handle().shutdown();
    // The stuck requests are aborted, their buffers freed, the connection closed, serve returns.
    wait_until_idle(&server);
    server.stop().expect("serve returns Ok");
    let mut replies = 0;
    while let Ok(reply) = greedy.reply() {
        assert_eq!(reply.error, 0);
        if greedy.s.read_exact(&mut vec![0; 65536]).is_err() {
            break;
        }
        replies += 1;
    }
    assert!(
        replies < 200,
        "all {replies} replies were sent: nothing was aborted"
    );
}

#[test]
fn shutdown_does_not_wait_for_a_payload_that_never_comes() {
    let mut server = quick_drain_server();
    let mut stalled = server.client();
    // A read (answered) proves the server is past the handshake; then half a write.
    stalled.send(CMD_READ, 0, 1, 0, 512);
    stalled.send(CMD_WRITE, 0, 2, 0, 65536);
    stalled.s.write_all(&[5; 1000]).unwrap();
    assert_eq!(
        stalled.reply().unwrap(),
        Reply {
            error: 0,
            cookie: 1
        }
    );
    stalled.read_data(512);
    // And a connection still in the handshake.
    let mut shy = Client::new(server.connect());
    shy.greeting(true);
    server.shutdown_handle().shutdown();
    wait_until_idle(&server);
    server.stop().expect("serve returns Ok");
    assert!(stalled.closed_by_server());
    assert!(shy.closed_by_server());
    let image = std::fs::read(&server.image).unwrap();
    assert!(
        image[..65536].iter().all(|&b| b == 0xee),
        "the partial write was not applied"
    );
}

#[test]
fn sigterm_stops_the_server_gracefully() {
    const NAME: &str = "hostile::sigterm_stops_the_server_gracefully";
    if tests::child_expectation(NAME).is_none() {
        // A child: the signal handlers stay installed for the life of the process, and the other
        // tests of this binary (and a CI timeout's SIGTERM) must not meet them.
        return tests::run_in_child(NAME, &[]);
    }
    let mut server = server();
    server.shutdown_handle().on_termination_signals().unwrap();
    let mut c = server.client();
    round_trip(&mut c, 0, 1);
    // SAFETY: raise takes no pointers; the handler installed above turns SIGTERM into a shutdown
    // instead of the default termination of this process.
    assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
    assert!(c.closed_by_server(), "SIGTERM closed the idle connection");
    server.wait().expect("serve returns Ok after SIGTERM");
    let image = std::fs::read(&server.image).unwrap();
    assert_eq!(
        &image[..2],
        &[1, 32],
        "the round trip's data is in the file"
    );
}

#[test]
fn random_garbage_never_takes_the_server_down() {
    use proptest::test_runner::{Config, TestRunner};
    let server = server();
    let bystander = std::cell::RefCell::new(server.client());
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let garbage = (
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..2000),
        any::<u8>(),
    );
    runner
        .run(&garbage, |(after_go, bytes, seed)| {
            let mut c = Client::new(server.connect());
            if after_go {
                c.greeting(true);
                c.go("disk").unwrap();
            }
            // The server may close as soon as it sees the first bad byte: writes may fail.
            let _ = c.s.write_all(&bytes);
            drop(c);
            round_trip(&mut bystander.borrow_mut(), BYSTANDER_AT, seed);
            Ok(())
        })
        .unwrap();
}
