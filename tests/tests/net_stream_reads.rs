//! Stream reads on every backend, with the io_uring backend's completion-based receives in mind:
//! data order and leftovers, end of stream, errors, dropped reads, dropped streams.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::task::Poll;

use aioctx::net::{TcpListener, TcpStream, UnixStream};
use aioctx::Backend;
use futures::{AsyncReadExt, AsyncWriteExt};
use tests::{context, per_backend, Guard, BOUND};

/// Byte `i` of the test stream: not periodic in any buffer size the reads use.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 7)) as u8
}

/// Bytes waiting in the socket's receive queue.
fn queued_bytes(fd: &impl AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at `n`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(ret, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    n as usize
}

/// Makes `stream`'s close send a reset (SO_LINGER with a zero timeout).
fn set_linger_zero(stream: &std::net::TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: SO_LINGER reads a `linger` of the given size from the pointer.
    let ret = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(ret, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// A connected pair: an aioctx TCP stream (server side) and a blocking std client.
async fn tcp_pair() -> (TcpStream, std::net::TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || std::net::TcpStream::connect(addr).unwrap());
    let (server, _) = listener.accept().await.unwrap();
    let client = client.join().unwrap();
    client.set_read_timeout(Some(BOUND)).unwrap();
    (server, client)
}

/// Polls a read on `stream` once (it must wait) and drops it: on io_uring this leaves a RECV in flight.
async fn abandon_a_read(stream: &mut (impl futures::AsyncRead + Unpin)) {
    let mut buf = [0u8; 16];
    let read = std::pin::pin!(stream.read(&mut buf));
    assert!(futures::poll!(read).is_pending());
}

/// A stream on `ctx` with an abandoned read, whose peer then wrote 40 bytes; and a probe of its fd.
fn reader_after_an_abandoned_read(
    ctx: &aioctx::AioContext,
) -> (UnixStream, std::os::unix::net::UnixStream) {
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let probe = ours.try_clone().unwrap();
    let _enter = ctx.enter();
    let mut reader = UnixStream::from_std(ours).unwrap();
    ctx.block_on(abandon_a_read(&mut reader));
    theirs.write_all(&[7u8; 40]).unwrap();
    (reader, probe)
}

per_backend! {
    // Reads smaller and larger than what arrived, and than the receive buffer, return every byte in
    // order; then end of stream, twice.
    fn data_arrives_intact_over_reads_of_varying_sizes(backend) {
        const TOTAL: usize = 1 << 20;
        let ctx = context(backend);
        ctx.block_on(async {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut reader = UnixStream::from_std(ours).unwrap();
            let writer = std::thread::spawn(move || {
                let data: Vec<u8> = (0..TOTAL).map(pattern).collect();
                let mut theirs = theirs;
                for (i, chunk) in data.chunks(3001).enumerate() {
                    // Varying write sizes too: whole chunks, or split in two.
                    if i % 2 == 0 {
                        theirs.write_all(chunk).unwrap();
                    } else {
                        let (a, b) = chunk.split_at(chunk.len() / 3);
                        theirs.write_all(a).unwrap();
                        theirs.write_all(b).unwrap();
                    }
                }
            });
            let sizes = [1, 7, 100, 4095, 4096, 70_000, 3, 65_536, 20_000];
            let mut got = 0;
            let mut buf = vec![0u8; 70_000];
            let mut reads = 0;
            while got < TOTAL {
                let want = sizes[reads % sizes.len()];
                let n = reader.read(&mut buf[..want]).await.unwrap();
                assert!(n > 0 && n <= want, "read {n} of {want} with {} to come", TOTAL - got);
                for (k, &b) in buf[..n].iter().enumerate() {
                    assert_eq!(b, pattern(got + k), "byte {}", got + k);
                }
                got += n;
                reads += 1;
            }
            writer.join().unwrap();
            assert_eq!(reader.read(&mut buf[..10]).await.unwrap(), 0, "end of stream");
            assert_eq!(reader.read(&mut buf[..10]).await.unwrap(), 0, "and again");
        });
    }

    // Vectored reads fill their buffers in order, from leftovers too.
    fn vectored_reads_fill_buffers_in_order(backend) {
        let ctx = context(backend);
        ctx.block_on(async {
            let (mut a, b) = UnixStream::pair().unwrap();
            let mut b = b;
            b.write_all(b"abcdefghij").await.unwrap();
            let mut first = [0u8; 2];
            a.read_exact(&mut first).await.unwrap();
            assert_eq!(&first, b"ab");
            let (mut x, mut y) = ([0u8; 3], [0u8; 10]);
            let mut bufs = [std::io::IoSliceMut::new(&mut x), std::io::IoSliceMut::new(&mut y)];
            let n = a.read_vectored(&mut bufs).await.unwrap();
            assert!(n >= 1);
            let mut all = [&x[..], &y[..]].concat();
            all.truncate(n);
            assert_eq!(&all[..], &b"cdefghij"[..n]);
        });
    }

    // The stream, not the read future, owns a receive in flight: bytes that arrive after the future
    // was dropped are returned by the next read.
    fn a_dropped_read_future_loses_no_data(backend) {
        let ctx = context(backend);
        ctx.block_on(async {
            let (mut a, mut b) = UnixStream::pair().unwrap();
            abandon_a_read(&mut a).await;
            b.write_all(b"hello").await.unwrap();
            // Let the loop run (and any receive complete) with nobody reading.
            for _ in 0..3 {
                aioctx::yield_now().await;
            }
            b.close().await.unwrap();
            drop(b);
            let mut all = Vec::new();
            a.read_to_end(&mut all).await.unwrap();
            assert_eq!(&all[..], b"hello");
        });
    }

    // A stream dropped while a read waits closes the connection at once: the peer sees end of
    // stream (its blocking read is bounded by a timeout, which fails the test).
    fn dropping_a_stream_with_a_pending_read_closes_it(backend) {
        let ctx = context(backend);
        // Dropped while the receive is still queued, and after the loop submitted it.
        for loop_ran in [false, true] {
            ctx.block_on(async {
                let (mut server, mut client) = tcp_pair().await;
                abandon_a_read(&mut server).await;
                if loop_ran {
                    for _ in 0..3 {
                        aioctx::yield_now().await;
                    }
                }
                let (tx, rx) = futures::channel::oneshot::channel();
                let peer = std::thread::spawn(move || {
                    let mut byte = [0u8; 1];
                    let r = client.read(&mut byte);
                    let _ = tx.send(());
                    r
                });
                drop(server);
                rx.await.unwrap();
                let r = peer.join().unwrap();
                assert_eq!(r.unwrap(), 0, "the peer sees end of stream, not a timeout");
            });
        }
    }

    // One fd per socket: 200 streams, each with a read waiting (a RECV in flight on io_uring, which
    // keeps its socket open by sharing it, not by a duplicate fd), cost 200 fds and a few for the
    // context, not 400.
    fn streams_with_reads_in_flight_cost_one_fd_each(backend) {
        // Counted in a child process: the other tests of this binary open fds meanwhile.
        let name = tests::per_backend_test_name(module_path!(), backend);
        if tests::child_expectation(&name).is_none() {
            return tests::run_in_child(&name, &[]);
        }
        let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let ctx = context(backend);
        ctx.block_on(async {
            let before = open_fds();
            let mut ends = Vec::new();
            let mut readers = Vec::new();
            for _ in 0..100 {
                let (a, b) = aioctx::net::UnixStream::pair().unwrap();
                let a = std::rc::Rc::new(a);
                readers.push(aioctx::spawn_local({
                    let a = a.clone();
                    async move {
                        let mut byte = [0u8; 1];
                        (&*a).read(&mut byte).await
                    }
                }));
                ends.push((a, b));
            }
            for _ in 0..3 {
                aioctx::yield_now().await; // every read is waiting, its RECV submitted
            }
            let used = open_fds() - before;
            assert!(
                (200..=216).contains(&used),
                "200 streams with reads waiting use {used} fds"
            );
            for r in &readers {
                assert!(!r.is_finished(), "a read finished with nothing to read");
            }
            drop(readers);
            drop(ends);
        });
    }

    // A reset from the peer while a read waits surfaces as ECONNRESET.
    fn a_reset_from_the_peer_is_an_error(backend) {
        let ctx = context(backend);
        ctx.block_on(async {
            let (mut server, client) = tcp_pair().await;
            let mut buf = [0u8; 8];
            let mut read = std::pin::pin!(server.read(&mut buf));
            assert!(futures::poll!(read.as_mut()).is_pending());
            set_linger_zero(&client);
            drop(client);
            let err = read.await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        });
    }

    // `readable()` is ready when data waits, wherever it waits (socket or receive buffer).
    fn readable_sees_data_that_arrived(backend) {
        let ctx = context(backend);
        ctx.block_on(async {
            let (mut a, mut b) = UnixStream::pair().unwrap();
            abandon_a_read(&mut a).await;
            let mut buf = [0u8; 4];
            b.write_all(b"data").await.unwrap();
            a.readable().await.unwrap();
            a.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"data");
        });
    }
}

// On io_uring a waiting read is a RECV in flight: data is taken off the socket by the kernel while the
// loop runs, without any read syscall (which on the readiness path waits for the reader's next poll),
// and a later read returns it without touching the socket.
#[test]
fn io_uring_receives_complete_without_a_read_syscall() {
    let ctx = context(Backend::IoUring);
    let guard = Guard::new(&ctx);
    let (mut reader, probe) = reader_after_an_abandoned_read(&ctx);
    let mut buf = [0u8; 64];
    guard.poll_until(&ctx, "the kernel to take the bytes off the socket", || {
        queued_bytes(&probe) == 0
    });
    ctx.block_on(async {
        {
            let readable = std::pin::pin!(reader.readable());
            assert!(matches!(futures::poll!(readable), Poll::Ready(Ok(()))));
        }
        let read = std::pin::pin!(reader.read(&mut buf));
        assert!(matches!(futures::poll!(read), Poll::Ready(Ok(40))));
    });
    assert_eq!(&buf[..40], &[7u8; 40]);
}

per_backend! {
    #[backends(epoll, poll)]
    // The readiness backends do not read ahead: data stays in the socket until a read asks for it.
    // (io_uring does read ahead: the test above.)
    fn readiness_backends_leave_data_in_the_socket(backend) {
        let ctx = context(backend);
        let (_reader, probe) = reader_after_an_abandoned_read(&ctx);
        for _ in 0..10 {
            ctx.poll(false);
        }
        assert_eq!(queued_bytes(&probe), 40, "{backend:?}");
    }
}
