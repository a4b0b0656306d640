//! Datagram sockets (`UdpSocket`, `UnixDatagram`) on every backend, with the io_uring backend's
//! completion-based receives (RECVMSG owned by the socket) in mind: boundaries and truncation, empty
//! datagrams, peeking, dropped receive futures, a reader and a writer sharing one socket, host names,
//! errors, dropping a socket with a receive in flight, and one fd per socket. Every receive is
//! bounded by `tests::BOUND`, so a lost datagram fails the test instead of hanging it.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;

use aioctx::net::{UdpSocket, UnixDatagram};
use aioctx::Backend;
use tests::{per_backend, TempPath, BOUND};

/// `fut`, failing the test if it takes longer than [`BOUND`].
async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    aioctx::time::timeout(BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {BOUND:?} (a datagram was lost?)"))
}

/// Byte `i` of a test datagram: not periodic in any buffer size the tests use.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 7)) as u8
}

fn backend() -> Backend {
    aioctx::with_current(|ctx| ctx.backend())
}

/// Polls `fut` once (it must wait) and drops it: on io_uring this leaves a RECVMSG in flight.
async fn abandon<F: Future>(fut: F) {
    let fut = std::pin::pin!(fut);
    assert!(futures::poll!(fut).is_pending(), "nothing was sent yet");
}

/// Lets the loop run a few iterations (and any RECVMSG in flight complete) with nobody receiving.
async fn let_the_loop_run() {
    for _ in 0..3 {
        aioctx::yield_now().await;
    }
}

fn udp_pair() -> (UdpSocket, UdpSocket) {
    (
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
    )
}

#[aioctx::test(backend = "all")]
async fn udp_echo_with_send_to_and_connected_send() {
    let (a, b) = udp_pair();
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let mut buf = [0u8; 64];
    for round in 0..3u8 {
        let msg = [round; 7];
        assert_eq!(a.send_to(&msg, b_addr).await.unwrap(), 7);
        let (n, from) = bounded("b receives", b.recv_from(&mut buf)).await.unwrap();
        assert_eq!((&buf[..n], from), (&msg[..], a_addr));
        assert_eq!(b.send_to(&buf[..n], from).await.unwrap(), 7);
        let (n, from) = bounded("a receives", a.recv_from(&mut buf)).await.unwrap();
        assert_eq!((&buf[..n], from), (&msg[..], b_addr));
    }
    a.connect(b_addr).await.unwrap();
    b.connect(a_addr).await.unwrap();
    assert_eq!(a.peer_addr().unwrap(), b_addr);
    assert_eq!(a.send(b"connected").await.unwrap(), 9);
    let n = bounded("b receives", b.recv(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"connected");
    b.send(b"back").await.unwrap();
    let (n, from) = bounded("a receives", a.recv_from(&mut buf)).await.unwrap();
    assert_eq!((&buf[..n], from), (&b"back"[..], b_addr));
}

#[aioctx::test(backend = "all")]
async fn a_long_datagram_is_truncated_and_the_next_receive_gets_the_next_datagram() {
    let (a, b) = udp_pair();
    let to = b.local_addr().unwrap();
    let long: Vec<u8> = (0..1000).map(pattern).collect();
    a.send_to(&long, to).await.unwrap();
    a.send_to(b"next", to).await.unwrap();
    a.send_to(&long, to).await.unwrap();
    let mut small = [0u8; 10];
    let (n, from) = bounded("first", b.recv_from(&mut small)).await.unwrap();
    assert_eq!((n, from), (10, a.local_addr().unwrap()));
    assert_eq!(small[..], long[..10]);
    let (n, _) = bounded("second", b.recv_from(&mut small)).await.unwrap();
    assert_eq!(
        &small[..n],
        b"next",
        "the rest of the long datagram was discarded"
    );
    // A buffer larger than the datagram gets all of it.
    let mut big = vec![0u8; 4096];
    let n = bounded("third", b.recv(&mut big)).await.unwrap();
    assert_eq!(big[..n], long[..]);
}

#[aioctx::test(backend = "all")]
async fn empty_datagrams_are_received_with_their_sender() {
    let (a, b) = udp_pair();
    let to = b.local_addr().unwrap();
    a.send_to(b"", to).await.unwrap();
    a.send_to(b"after", to).await.unwrap();
    a.send_to(b"", to).await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        bounded("empty", b.recv_from(&mut buf)).await.unwrap(),
        (0, a.local_addr().unwrap())
    );
    let (n, _) = bounded("after", b.recv_from(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"after");
    assert_eq!(bounded("empty again", b.recv(&mut buf)).await.unwrap(), 0);
    // Into an empty buffer too.
    a.send_to(b"", to).await.unwrap();
    assert_eq!(bounded("into nothing", b.recv(&mut [])).await.unwrap(), 0);
}

#[aioctx::test(backend = "all")]
async fn peek_from_then_recv_from_return_the_same_datagram() {
    let (a, b) = udp_pair();
    let to = b.local_addr().unwrap();
    let from = a.local_addr().unwrap();
    a.send_to(b"first datagram", to).await.unwrap();
    a.send_to(b"second", to).await.unwrap();
    let mut buf = [0u8; 64];
    let mut small = [0u8; 5];
    // Peeking twice, once truncated, consumes nothing.
    assert_eq!(
        bounded("peek", b.peek_from(&mut small)).await.unwrap(),
        (5, from)
    );
    assert_eq!(&small, b"first");
    let (n, peeked_from) = bounded("peek", b.peek_from(&mut buf)).await.unwrap();
    assert_eq!((&buf[..n], peeked_from), (&b"first datagram"[..], from));
    let (n, got_from) = bounded("recv", b.recv_from(&mut buf)).await.unwrap();
    assert_eq!((&buf[..n], got_from), (&b"first datagram"[..], from));
    let (n, _) = bounded("recv", b.recv_from(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"second");
}

#[aioctx::test(backend = "all")]
async fn a_receive_dropped_mid_flight_loses_no_datagram() {
    let (a, b) = udp_pair();
    let to = b.local_addr().unwrap();
    let mut buf = [0u8; 16];
    abandon(b.recv_from(&mut buf)).await;
    a.send_to(b"while nobody waits", to).await.unwrap();
    let_the_loop_run().await;
    let mut big = [0u8; 64];
    let (n, from) = bounded("the next receive", b.recv_from(&mut big))
        .await
        .unwrap();
    assert_eq!(
        (&big[..n], from),
        (&b"while nobody waits"[..], a.local_addr().unwrap())
    );
    assert!(
        aioctx::time::timeout(std::time::Duration::from_millis(5), b.recv_from(&mut buf))
            .await
            .is_err(),
        "nothing else arrived"
    );
    // That receive timed out and was dropped too: the next datagram goes to the next receive.
    a.send_to(b"after a timeout", to).await.unwrap();
    let (n, _) = bounded("after a timeout", b.recv_from(&mut big))
        .await
        .unwrap();
    assert_eq!(&big[..n], b"after a timeout");
}

#[aioctx::test(backend = "all")]
async fn a_reader_task_and_a_writer_task_share_one_socket() {
    const N: usize = 64;
    let (ours, echo) = udp_pair();
    let ours = Rc::new(ours);
    let echo_addr = echo.local_addr().unwrap();
    let echoer = aioctx::spawn_local(async move {
        let mut buf = [0u8; 64];
        for _ in 0..N {
            let (n, from) = bounded("echo", echo.recv_from(&mut buf)).await.unwrap();
            echo.send_to(&buf[..n], from).await.unwrap();
        }
    });
    let reader = aioctx::spawn_local({
        let ours = ours.clone();
        async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while got.len() < N {
                let (n, from) = bounded("reader", ours.recv_from(&mut buf)).await.unwrap();
                assert_eq!((n, from), (8, echo_addr));
                got.push(u64::from_le_bytes(buf[..8].try_into().unwrap()));
            }
            got
        }
    });
    let writer = aioctx::spawn_local({
        let ours = ours.clone();
        async move {
            for i in 0..N as u64 {
                ours.send_to(&i.to_le_bytes(), echo_addr).await.unwrap();
                aioctx::yield_now().await; // interleave with the reader
            }
        }
    });
    writer.await.unwrap();
    echoer.await.unwrap();
    let mut got = reader.await.unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..N as u64).collect::<Vec<_>>());
}

#[aioctx::test(backend = "all")]
async fn host_names_for_bind_send_to_and_connect() {
    // Both bind the first address "localhost" resolves to, as send_to sends to it.
    let receiver = UdpSocket::bind("localhost:0").unwrap();
    let sender = UdpSocket::bind("localhost:0").unwrap();
    let port = receiver.local_addr().unwrap().port();
    assert!(receiver.local_addr().unwrap().ip().is_loopback());
    let target = format!("localhost:{port}");
    assert_eq!(sender.send_to(b"by name", &target).await.unwrap(), 7);
    let mut buf = [0u8; 16];
    let (n, from) = bounded("by name", receiver.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        (&buf[..n], from),
        (&b"by name"[..], sender.local_addr().unwrap())
    );
    sender.connect(("localhost", port)).await.unwrap();
    assert_eq!(sender.peer_addr().unwrap(), receiver.local_addr().unwrap());
    sender.send(b"connected").await.unwrap();
    let n = bounded("connected", receiver.recv(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"connected");
    let err = sender
        .send_to(b"x", "no-such-host.invalid:9")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    let err = sender
        .send_to(b"x", &[][..] as &[SocketAddr])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
}

#[aioctx::test(backend = "all")]
async fn a_refused_datagram_is_a_receive_error_once() {
    // A port nobody listens on: the kernel answers with ICMP port unreachable, which a connected
    // socket reports on its next receive (also one already waiting, on io_uring a RECVMSG).
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let_the_loop_run().await;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(closed_addr).await.unwrap();
    let mut buf = [0u8; 8];
    let mut receive = std::pin::pin!(socket.recv(&mut buf));
    assert!(futures::poll!(receive.as_mut()).is_pending());
    socket.send(b"anyone?").await.unwrap();
    let err = bounded("the refusal", receive).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // Reported once: the socket still works.
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(peer.local_addr().unwrap()).await.unwrap();
    peer.send_to(b"ok", socket.local_addr().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(bounded("after", socket.recv(&mut buf)).await.unwrap(), 2);
}

#[aioctx::test(backend = "all")]
async fn dropping_a_socket_with_a_receive_in_flight_releases_its_port() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let mut buf = [0u8; 8];
    abandon(socket.recv_from(&mut buf)).await;
    let_the_loop_run().await; // the RECVMSG reached the kernel
    drop(socket);
    // On io_uring the cancelled RECVMSG completes at the next iterations; then the port is free.
    let mut rebound = None;
    for _ in 0..100 {
        match UdpSocket::bind(addr) {
            Ok(s) => {
                rebound = Some(s);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => aioctx::yield_now().await,
            Err(e) => panic!("rebinding {addr}: {e}"),
        }
    }
    let rebound = rebound.expect("the port is free once the receive is cancelled");
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(b"new", addr).await.unwrap();
    let n = bounded("the new socket", rebound.recv(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"new");
}

#[aioctx::test(backend = "all")]
async fn into_std_keeps_a_held_datagram() {
    let (a, b) = udp_pair();
    let to = b.local_addr().unwrap();
    let mut buf = [0u8; 8];
    abandon(b.recv_from(&mut buf)).await;
    a.send_to(b"held", to).await.unwrap();
    let_the_loop_run().await;
    match b.into_std() {
        Ok(std_b) => {
            assert_ne!(backend(), Backend::IoUring, "io_uring holds the datagram");
            std_b.set_nonblocking(false).unwrap();
            std_b.set_read_timeout(Some(BOUND)).unwrap();
            let n = std_b.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"held");
        }
        Err(e) => {
            assert_eq!(backend(), Backend::IoUring);
            let b = e.into_inner();
            let n = bounded("held", b.recv(&mut buf)).await.unwrap();
            assert_eq!(&buf[..n], b"held");
            assert!(b.into_std().is_ok(), "nothing held any more");
        }
    }
}

#[test]
fn sockets_outside_a_context_fail_with_not_connected() {
    use std::io::ErrorKind::NotConnected;
    assert_eq!(
        UdpSocket::bind("127.0.0.1:0").unwrap_err().kind(),
        NotConnected
    );
    let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = UdpSocket::from_std(std_socket).unwrap_err();
    assert_eq!(err.kind(), NotConnected);
    assert!(
        err.to_string().contains("outside an aioctx context"),
        "{err}"
    );
    assert_eq!(UnixDatagram::pair().unwrap_err().kind(), NotConnected);
    assert_eq!(UnixDatagram::unbound().unwrap_err().kind(), NotConnected);
    let path = TempPath::new("dgram-outside");
    assert_eq!(
        UnixDatagram::bind(&path.0).unwrap_err().kind(),
        NotConnected
    );
    assert!(!path.0.exists(), "no socket file is left behind");
}

#[aioctx::test(backend = "all")]
async fn unix_datagrams_between_paths() {
    let (server_path, client_path) = (TempPath::new("dgram-server"), TempPath::new("dgram-client"));
    let server = UnixDatagram::bind(&server_path.0).unwrap();
    let client = UnixDatagram::bind(&client_path.0).unwrap();
    assert_eq!(
        server.local_addr().unwrap().as_pathname(),
        Some(server_path.0.as_path())
    );
    let mut buf = [0u8; 64];
    for round in 0..3u8 {
        let msg = [round; 5];
        assert_eq!(client.send_to(&msg, &server_path.0).await.unwrap(), 5);
        let (n, from) = bounded("server", server.recv_from(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], &msg);
        assert_eq!(from.as_pathname(), Some(client_path.0.as_path()));
        server
            .send_to(&buf[..n], from.as_pathname().unwrap())
            .await
            .unwrap();
        let (n, from) = bounded("client", client.recv_from(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], &msg);
        assert_eq!(from.as_pathname(), Some(server_path.0.as_path()));
    }
    // An unbound sender is unnamed; a connected one sends with `send`.
    let anonymous = UnixDatagram::unbound().unwrap();
    anonymous.send_to(b"anon", &server_path.0).await.unwrap();
    let (n, from) = bounded("anonymous", server.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"anon");
    assert!(from.is_unnamed());
    anonymous.connect(&server_path.0).unwrap();
    anonymous.send(b"connected").await.unwrap();
    let n = bounded("connected", server.recv(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"connected");
}

#[aioctx::test(backend = "all")]
async fn unix_datagrams_truncate_keep_empty_ones_and_survive_dropped_receives() {
    let (a, b) = UnixDatagram::pair().unwrap();
    let long: Vec<u8> = (0..1000).map(pattern).collect();
    let mut small = [0u8; 10];
    abandon(b.recv_from(&mut small)).await;
    a.send(&long).await.unwrap();
    a.send(b"").await.unwrap();
    a.send(b"next").await.unwrap();
    let_the_loop_run().await;
    let (n, from) = bounded("truncated", b.recv_from(&mut small)).await.unwrap();
    assert_eq!(small[..n], long[..10]);
    assert!(from.is_unnamed(), "a socketpair end has no path");
    assert_eq!(
        bounded("empty", b.recv_from(&mut small)).await.unwrap().0,
        0
    );
    let n = bounded("next", b.recv(&mut small)).await.unwrap();
    assert_eq!(&small[..n], b"next");
}

#[aioctx::test(backend = "all")]
async fn a_unix_datagram_longer_than_64_kib_fits_a_large_buffer() {
    let (a, b) = UnixDatagram::pair().unwrap();
    let long: Vec<u8> = (0..100_000).map(pattern).collect();
    assert_eq!(a.send(&long).await.unwrap(), long.len());
    let mut buf = vec![0u8; 200_000];
    let n = bounded("long", b.recv(&mut buf)).await.unwrap();
    assert_eq!(n, long.len());
    assert!(buf[..n] == long[..]);
}

#[aioctx::test(backend = "all")]
async fn a_unix_datagram_read_shutdown_ends_receives_after_what_was_queued() {
    let (a, b) = UnixDatagram::pair().unwrap();
    let mut buf = [0u8; 16];
    let mut waiting = std::pin::pin!(b.recv(&mut buf));
    assert!(futures::poll!(waiting.as_mut()).is_pending());
    a.send(b"queued").await.unwrap();
    assert_eq!(bounded("queued", waiting).await.unwrap(), 6);
    a.send(b"also queued").await.unwrap();
    let_the_loop_run().await;
    b.shutdown(std::net::Shutdown::Read).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(bounded("also queued", b.recv(&mut buf)).await.unwrap(), 11);
    let (n, from) = bounded("after shutdown", b.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert!(from.is_unnamed());
    assert_eq!(bounded("and again", b.recv(&mut buf)).await.unwrap(), 0);
    // The write side still works.
    b.send(b"still sends").await.unwrap();
    assert_eq!(bounded("a", a.recv(&mut buf)).await.unwrap(), 11);
}

#[aioctx::test(backend = "all")]
async fn a_unix_datagram_reader_and_writer_share_one_socket() {
    const N: u32 = 32;
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    let ours = Rc::new(ours);
    let echoer = aioctx::spawn_local(async move {
        let mut buf = [0u8; 8];
        for _ in 0..N {
            let n = bounded("echo", theirs.recv(&mut buf)).await.unwrap();
            theirs.send(&buf[..n]).await.unwrap();
        }
    });
    let reader = aioctx::spawn_local({
        let ours = ours.clone();
        async move {
            let mut buf = [0u8; 8];
            let mut sum = 0;
            for _ in 0..N {
                let n = bounded("reader", ours.recv(&mut buf)).await.unwrap();
                sum += u32::from_le_bytes(buf[..n].try_into().unwrap());
            }
            sum
        }
    });
    for i in 0..N {
        ours.send(&i.to_le_bytes()).await.unwrap();
    }
    echoer.await.unwrap();
    assert_eq!(reader.await.unwrap(), (0..N).sum::<u32>());
}

per_backend! {
    // One fd per socket: 100 UDP sockets and 100 Unix datagram sockets, each with a receive waiting
    // (a RECVMSG in flight on io_uring, which keeps its socket open by sharing it, not by a
    // duplicate fd), cost 200 fds and a few for the context, not 400.
    fn datagram_sockets_with_receives_in_flight_cost_one_fd_each(backend) {
        // Counted in a child process: the other tests of this binary open fds meanwhile.
        let name = tests::per_backend_test_name(module_path!(), backend);
        if tests::child_expectation(&name).is_none() {
            return tests::run_in_child(&name, &[]);
        }
        let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let ctx = tests::context(backend);
        ctx.block_on(async {
            let before = open_fds();
            let mut udp = Vec::new();
            let mut unix = Vec::new();
            let mut receivers = Vec::new();
            for _ in 0..100 {
                // On 127.0.0.2: the 127.0.0.1 ports that this binary's other tests free and rebind,
                // or send to once closed, meanwhile are not taken here, and none of their
                // datagrams lands here.
                let socket = Rc::new(UdpSocket::bind("127.0.0.2:0").unwrap());
                receivers.push(aioctx::spawn_local({
                    let socket = socket.clone();
                    async move {
                        let mut buf = [0u8; 8];
                        socket.recv_from(&mut buf).await.map(|(n, _)| n)
                    }
                }));
                udp.push(socket);
                let socket = Rc::new(UnixDatagram::unbound().unwrap());
                receivers.push(aioctx::spawn_local({
                    let socket = socket.clone();
                    async move {
                        let mut buf = [0u8; 8];
                        socket.recv(&mut buf).await
                    }
                }));
                unix.push(socket);
            }
            let_the_loop_run().await; // every receive is waiting, its RECVMSG submitted
            let used = open_fds() - before;
            assert!(
                (200..=216).contains(&used),
                "200 datagram sockets with receives waiting use {used} fds"
            );
            for r in &receivers {
                assert!(!r.is_finished(), "a receive finished with nothing sent");
            }
            if backend == Backend::IoUring {
                // No readiness fallback: each socket has a RECVMSG in flight (its Debug shows it).
                let udp_debug = udp.iter().map(|s| format!("{s:?}"));
                for debug in udp_debug.chain(unix.iter().map(|s| format!("{s:?}"))) {
                    assert!(debug.contains("in_flight: true"), "{debug}");
                }
            }
            drop(receivers);
            drop((udp, unix));
        });
    }
}
