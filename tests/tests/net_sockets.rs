//! Readiness futures, sockets and event-notifier waits, on every backend.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use aioctx::io::Async;
use aioctx::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use aioctx::{AioContext, EventNotifier, IoThread};
use futures::{AsyncReadExt, AsyncWriteExt};
use tests::{context, per_backend};

async fn echo_once<S: futures::AsyncRead + futures::AsyncWrite + Unpin>(
    mut conn: S,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n]).await?;
    }
}

fn sock_path(tag: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("aioctx-net-{tag}-{}-{n}.sock", std::process::id()))
}

/// A stream that counts the read syscalls made on it.
struct CountingReads {
    inner: std::os::unix::net::UnixStream,
    reads: Rc<std::cell::Cell<usize>>,
}

impl std::io::Read for CountingReads {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reads.set(self.reads.get() + 1);
        self.inner.read(buf)
    }
}

impl std::os::fd::AsRawFd for CountingReads {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inner.as_raw_fd()
    }
}

per_backend! {
    // Each message arrives while the reader waits: one read finds nothing, the wakeup's read gets
    // the byte. A readiness the previous read consumed must not cause a third, doomed read.
    fn a_reader_woken_per_message_reads_twice_per_message(backend) {
        const MESSAGES: usize = 200;
        let ctx = context(backend);
        ctx.block_on(async {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let reads = Rc::new(std::cell::Cell::new(0));
            let mut reader = Async::new(CountingReads { inner: b, reads: reads.clone() }).unwrap();
            let mut writer = Async::new(a).unwrap();
            let (ack_tx, mut ack_rx) = futures::channel::mpsc::unbounded();
            let reader_task = aioctx::spawn_local(async move {
                let mut byte = [0u8; 1];
                for i in 0..MESSAGES {
                    reader.read_exact(&mut byte).await.unwrap();
                    assert_eq!(byte[0], i as u8);
                    ack_tx.unbounded_send(()).unwrap();
                }
            });
            for i in 0..MESSAGES {
                writer.write_all(&[i as u8]).await.unwrap();
                futures::StreamExt::next(&mut ack_rx).await.unwrap();
            }
            reader_task.await.unwrap();
            // (The first byte may already be there when the reader starts: one read less.)
            let reads = reads.get();
            assert!(
                (2 * MESSAGES - 1..=2 * MESSAGES).contains(&reads),
                "{reads} read syscalls for {MESSAGES} messages"
            );
        });
    }

    // Polling a pending read again without a readiness event (a wake by a select! sibling) waits
    // without a syscall; the event then lets the read through.
    fn a_pending_read_polled_again_makes_no_syscall(backend) {
        let ctx = context(backend);
        ctx.block_on(async {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let reads = Rc::new(std::cell::Cell::new(0));
            let mut reader = Async::new(CountingReads { inner: b, reads: reads.clone() }).unwrap();
            let mut byte = [0u8; 1];
            let mut read = std::pin::pin!(reader.read(&mut byte));
            for _ in 0..10 {
                assert!(futures::poll!(read.as_mut()).is_pending());
            }
            assert_eq!(reads.get(), 1, "only the first poll tries the socket");
            std::io::Write::write_all(&mut &a, b"x").unwrap();
            assert_eq!(read.await.unwrap(), 1);
            assert_eq!(reads.get(), 2);
            assert_eq!(byte, *b"x");
        });
    }

    fn tcp_echo_round_trips(backend) {
        let ctx = context(backend);
        ctx.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = aioctx::spawn_local(async move {
                let (conn, peer) = listener.accept().await?;
                assert!(peer.ip().is_loopback());
                echo_once(conn).await
            });
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.set_nodelay(true).unwrap();
            assert!(client.nodelay().unwrap());
            assert_eq!(client.peer_addr().unwrap(), addr);
            for round in 0..100u32 {
                let msg = vec![round as u8; 64];
                client.write_all(&msg).await.unwrap();
                let mut back = vec![0u8; 64];
                client.read_exact(&mut back).await.unwrap();
                assert_eq!(back, msg);
            }
            client.shutdown(std::net::Shutdown::Write).unwrap();
            server.await.unwrap().unwrap();
        });
    }

    // One writev/readv syscall moves every buffer, not just the first.
    fn vectored_io_moves_every_buffer(backend) {
        let ctx = context(backend);
        ctx.block_on(async {
            let (mut a, mut b) = UnixStream::pair().unwrap();
            let parts: [&[u8]; 3] = [b"head", b"-body-", b"tail"];
            let slices: Vec<_> = parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
            let sent = a.write_vectored(&slices).await.unwrap();
            assert_eq!(sent, 14);
            let (mut x, mut y, mut z) = ([0u8; 4], [0u8; 6], [0u8; 4]);
            let mut bufs = [
                std::io::IoSliceMut::new(&mut x),
                std::io::IoSliceMut::new(&mut y),
                std::io::IoSliceMut::new(&mut z),
            ];
            let got = b.read_vectored(&mut bufs).await.unwrap();
            assert_eq!(got, 14);
            assert_eq!((&x, &y, &z), (b"head", b"-body-", b"tail"));
        });
    }

    fn unix_echo_round_trips(backend) {
        let ctx = context(backend);
        let path = sock_path("echo");
        ctx.block_on(async {
            let listener = UnixListener::bind(&path).unwrap();
            let server = aioctx::spawn_local(async move {
                let (conn, _) = listener.accept().await?;
                echo_once(conn).await
            });
            let client = UnixStream::connect(&path).await.unwrap();
            let big = vec![0x5au8; 1 << 20]; // more than a socket buffer: readiness in both directions
            let (mut rd, mut wr) = client.split();
            let write = async {
                wr.write_all(&big).await.unwrap();
                wr.close().await.unwrap(); // shutdown(Write): the server sees EOF
            };
            let read = async {
                let mut back = Vec::new();
                rd.read_to_end(&mut back).await.unwrap();
                back
            };
            let ((), back) = futures::join!(write, read);
            assert_eq!(back, big);
            server.await.unwrap().unwrap();
        });
        let _ = std::fs::remove_file(&path);
    }

    fn many_concurrent_connections(backend) {
        const CLIENTS: usize = 100;
        let ctx = context(backend);
        ctx.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let _server = aioctx::spawn_local(async move {
                loop {
                    let (conn, _) = listener.accept().await.unwrap();
                    let _conn_task = aioctx::spawn_local(echo_once(conn));
                }
            });
            let clients: Vec<_> = (0..CLIENTS)
                .map(|i| {
                    aioctx::spawn_local(async move {
                        let mut c = TcpStream::connect(addr).await.unwrap();
                        for r in 0..10u8 {
                            let msg = [i as u8, r, 0xee];
                            c.write_all(&msg).await.unwrap();
                            let mut back = [0u8; 3];
                            c.read_exact(&mut back).await.unwrap();
                            assert_eq!(back, msg);
                        }
                    })
                })
                .collect();
            for c in clients {
                c.await.unwrap();
            }
        });
    }

    /// An fd that turns ready while no task waits for it is disarmed instead of keeping the loop busy.
    fn unserved_readiness_does_not_spin(backend) {
        let ctx = context(backend);
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let _g = ctx.enter();
        let b = Async::new(b).unwrap();
        ctx.block_on(async {
            // Arm read interest once, then stop waiting.
            let r = aioctx::time::timeout(std::time::Duration::from_millis(1), b.readable()).await;
            assert!(r.is_err());
        });
        use std::io::Write;
        (&a).write_all(b"x").unwrap();
        let mut iterations = 0;
        while ctx.poll(false) {
            iterations += 1;
            assert!(iterations < 5, "the loop keeps dispatching an fd nobody reads");
        }
        // And a later wait still sees the data.
        ctx.block_on(async {
            b.readable().await.unwrap();
            let mut buf = [0u8; 1];
            let n = b.read_with(|s| std::io::Read::read(&mut &*s, &mut buf)).await.unwrap();
            assert_eq!((n, buf[0]), (1, b'x'));
        });
    }

    fn notifier_wait_and_waiter(backend) {
        let ctx = context(backend);
        let n = EventNotifier::new().unwrap();
        ctx.block_on(async {
            n.set().unwrap();
            n.wait().await.unwrap(); // already set: at once, and cleared
            assert!(!n.test_and_clear().unwrap());
            let waiter = n.waiter().unwrap();
            for _ in 0..3 {
                let n2 = n.clone();
                let t = std::thread::spawn(move || n2.set().unwrap());
                waiter.wait().await;
                t.join().unwrap();
            }
            assert!(!n.test_and_clear().unwrap(), "the waiter cleared it");
        });
    }

    fn notifier_wait_polling_sees_memory_without_the_fd(backend) {
        // Windows grow x100 (up to 0.5 s) whenever the loop blocked longer than the window: wakeups
        // a few ms apart take it from 0 to 4 us, 400 us and 40 ms, long enough to see work that
        // another thread publishes only in memory.
        let ctx = AioContext::builder()
            .backend(backend)
            .poll_max_ns(500_000_000)
            .poll_grow(100)
            .build()
            .unwrap();
        let n = EventNotifier::new().unwrap();
        let work = Arc::new(AtomicBool::new(false));
        ctx.block_on(async {
            let w = work.clone();
            // Only this poll function clears `work`: a wait that ended without a kick ended here.
            let waiter = n.waiter_polling(move || w.swap(false, Ordering::AcqRel)).unwrap();
            for _ in 0..4 {
                let kick = n.clone();
                let t = std::thread::spawn(move || {
                    // Workload, not synchronisation: the loop must block a while for the window to grow.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    kick.set().unwrap();
                });
                waiter.wait().await;
                t.join().unwrap();
            }
            assert!(!n.test_and_clear().unwrap(), "the waiter cleared every kick");
            // Work only in memory. A round where the polling loop missed it (the publishing thread was
            // descheduled past the window) ends with a kick after 200 ms, and is tried again.
            let mut polled = false;
            for _ in 0..5 {
                let kicked = Arc::new(AtomicBool::new(false));
                let (w, kick, k) = (work.clone(), n.clone(), kicked.clone());
                let t = std::thread::spawn(move || {
                    w.store(true, Ordering::Release);
                    let until = std::time::Instant::now() + std::time::Duration::from_millis(200);
                    while w.load(Ordering::Acquire) && std::time::Instant::now() < until {
                        std::thread::yield_now();
                    }
                    if w.load(Ordering::Acquire) {
                        k.store(true, Ordering::Release);
                        kick.set().unwrap();
                    }
                });
                waiter.wait().await;
                t.join().unwrap();
                if !kicked.load(Ordering::Acquire) {
                    polled = true;
                    break;
                }
                n.test_and_clear().unwrap();
                work.store(false, Ordering::Release);
            }
            assert!(polled, "polling never saw work published in memory");
        });
    }
}

#[test]
fn remote_spawn_local_runs_socket_code_on_an_iothread() {
    let io = IoThread::spawn("sockets").unwrap();
    let h = io.remote().spawn_local_with(|| async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = aioctx::spawn_local(async move {
            let (conn, _) = listener.accept().await?;
            echo_once(conn).await
        });
        let mut c = TcpStream::connect(addr).await?;
        c.write_all(b"iothread").await?;
        let mut back = [0u8; 8];
        c.read_exact(&mut back).await?;
        drop(c);
        server.await.unwrap()?;
        let rc = Rc::new(back); // !Send state is fine in here
        Ok::<_, std::io::Error>((*rc, std::thread::current().name().map(str::to_owned)))
    });
    let (echoed, thread) = h.join_blocking().unwrap().unwrap();
    assert_eq!(&echoed, b"iothread");
    assert_eq!(thread.as_deref(), Some("IO sockets"));
}

#[test]
fn async_outside_a_context_is_an_error() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    assert_eq!(
        Async::new(a).unwrap_err().kind(),
        std::io::ErrorKind::NotConnected
    );
}

per_backend! {
    /// A connect the peer refuses fails with ConnectionRefused (waiting for the connect to finish is an
    /// fd readiness wait, on each backend).
    fn a_refused_connect_is_an_error(backend) {
        let ctx = context(backend);
        let _g = ctx.enter();
        let err = ctx.block_on(TcpStream::connect("127.0.0.1:1")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
