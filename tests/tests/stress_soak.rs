//! Soak: connection churn for about a minute (`AIOCTX_SOAK_SECS`, default 45) against echo servers on
//! two IoThreads and the NBD example server on two more, with every echoed byte and every block read
//! back verified. A warm-up quarter of the run is followed by a snapshot of open fds and RSS, taken with
//! every connection closed; the rest of the run must leave both flat: exactly the same fds (a leaked
//! connection is a leaked fd), and RSS grown by at most max(16 MiB, 25%).

#[allow(dead_code)]
#[path = "app_nbd_server/client.rs"]
mod client;
// The client's replies beyond simple ones (the soak only uses simple replies).
#[allow(dead_code)]
#[path = "app_nbd_server/structured.rs"]
mod structured;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aioctx::net::{TcpListener, TcpStream};
use aioctx::IoThread;
use client::{Client, Kind, Setup, TestServer, CMD_DISC};
use futures::{AsyncReadExt, AsyncWriteExt};

/// Echo client tasks running at once (on one client IoThread).
const ECHO_LANES: usize = 8;
/// NBD client threads; each owns one region of the export.
const NBD_CLIENTS: usize = 3;
/// Bytes of the export each NBD client owns.
const REGION: usize = 1 << 20;
/// How long one echo connection may take before the test fails instead of hanging.
const CONN_TIMEOUT: Duration = Duration::from_secs(20);
/// Allowed RSS growth after warm-up: the larger of these.
const RSS_SLACK_BYTES: u64 = 16 << 20;
const RSS_SLACK_PERCENT: u64 = 25;

/// xorshift64: pseudo-random sizes, offsets and contents, reproducible from a seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len).map(|_| next(&mut x) as u8).collect()
}

/// Echo servers on their IoThreads and the live-connection count they keep.
struct EchoServers {
    threads: Vec<IoThread>,
    addrs: Vec<SocketAddr>,
    live: Arc<AtomicUsize>,
    failures: Arc<AtomicU64>,
}

impl EchoServers {
    fn start(count: usize) -> EchoServers {
        let live = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..count {
            let io = IoThread::spawn(format!("echo{i}")).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let (live, failures) = (live.clone(), failures.clone());
            // The accept loop lives until the IoThread stops (its handle detaches).
            drop(io.remote().spawn_local_with(move || async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    let Ok((conn, _)) = listener.accept().await else {
                        // Clients now get refused and fail the test loudly.
                        failures.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    live.fetch_add(1, Ordering::SeqCst);
                    let (live, failures) = (live.clone(), failures.clone());
                    drop(aioctx::spawn_local(async move {
                        if echo(conn).await.is_err() {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        live.fetch_sub(1, Ordering::SeqCst);
                    }));
                }
            }));
            addrs.push(rx.recv_timeout(CONN_TIMEOUT).expect("echo server bound"));
            threads.push(io);
        }
        EchoServers {
            threads,
            addrs,
            live,
            failures,
        }
    }
}

async fn echo(mut conn: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n]).await?;
    }
}

/// One echo connection: a few messages of up to 32 KiB, each read back and compared; returns the bytes.
async fn echo_connection(addr: SocketAddr, seed: &mut u64) -> std::io::Result<u64> {
    let mut conn = TcpStream::connect(addr).await?;
    let mut total = 0;
    for _ in 0..1 + next(seed) % 5 {
        let message = pattern(1 + (next(seed) % (32 << 10)) as usize, next(seed));
        conn.write_all(&message).await?;
        let mut back = vec![0u8; message.len()];
        conn.read_exact(&mut back).await?;
        assert!(back == message, "echoed bytes differ from what was sent");
        total += message.len() as u64;
    }
    Ok(total)
}

/// Echo lanes on `clients` until `until`: connect, exchange, close, repeat. Returns (connections, bytes).
fn echo_churn(clients: &IoThread, addrs: &[SocketAddr], until: Instant) -> (u64, u64) {
    let addrs = addrs.to_vec();
    let lanes = clients.remote().spawn_local_with(move || async move {
        let lanes: Vec<_> = (0..ECHO_LANES)
            .map(|lane| {
                let addrs = addrs.clone();
                aioctx::spawn_local(async move {
                    let mut seed = 0x9e37_79b9_7f4a_7c15 ^ lane as u64;
                    let (mut conns, mut bytes) = (0u64, 0u64);
                    while Instant::now() < until {
                        let addr = addrs[(lane + conns as usize) % addrs.len()];
                        let exchange = echo_connection(addr, &mut seed);
                        match aioctx::time::timeout(CONN_TIMEOUT, exchange).await {
                            Ok(Ok(n)) => bytes += n,
                            Ok(Err(e)) => panic!("echo connection to {addr}: {e}"),
                            Err(_) => panic!("echo connection to {addr} hung"),
                        }
                        conns += 1;
                    }
                    (conns, bytes)
                })
            })
            .collect();
        let mut totals = (0, 0);
        for lane in lanes {
            let (conns, bytes) = lane.await.expect("echo lane panicked");
            assert!(conns > 0, "an echo lane made no connection");
            totals = (totals.0 + conns, totals.1 + bytes);
        }
        totals
    });
    lanes.join_blocking().expect("echo lanes")
}

/// One NBD client thread until `until`: connect and negotiate, write blocks into its own region and
/// read blocks back (checked against what it wrote, on this or an earlier connection), then leave with
/// `NBD_CMD_DISC` or by just closing. Returns (connections, blocks verified).
fn nbd_churn(server: &TestServer, index: usize, shadow: &mut [u8], until: Instant) -> (u64, u64) {
    let base = (index * REGION) as u64;
    let mut seed = 0x2545_f491_4f6c_dd1d ^ (index as u64 + 1);
    let (mut conns, mut verified) = (0u64, 0u64);
    while Instant::now() < until {
        let mut client = server.client();
        for _ in 0..1 + next(&mut seed) % 4 {
            let len = 512 * (1 + next(&mut seed) % 128) as usize;
            let offset = 512 * (next(&mut seed) as usize % ((REGION - len) / 512 + 1));
            let data = pattern(len, next(&mut seed));
            assert_eq!(client.write(0, base + offset as u64, &data), 0, "write");
            shadow[offset..offset + len].copy_from_slice(&data);
            let back = client.read(base + offset as u64, len as u32).expect("read");
            assert!(back == data, "block read back differs at {offset}");
            // A block that may have been written by an earlier connection (or still holds the image).
            let other = 512 * (next(&mut seed) as usize % (REGION / 512 - 8));
            let old = client.read(base + other as u64, 4096).expect("read");
            assert!(old == shadow[other..other + 4096], "stale block at {other}");
            verified += 2;
        }
        if conns % 2 == 0 {
            client.send(CMD_DISC, 0, 1, 0, 0);
            assert!(client.closed_by_server(), "DISC must close the connection");
        }
        drop::<Client>(client);
        conns += 1;
    }
    (conns, verified)
}

/// Open fds and resident bytes of this process.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    fds: usize,
    rss: u64,
}

fn snapshot() -> Snapshot {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Snapshot {
        fds,
        rss: pages * page,
    }
}

fn soak_duration() -> Duration {
    let secs = match std::env::var("AIOCTX_SOAK_SECS") {
        Ok(v) => v
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("AIOCTX_SOAK_SECS={v:?} is not a number of seconds")),
        Err(_) => 45.0,
    };
    assert!(secs >= 2.0, "AIOCTX_SOAK_SECS must be at least 2");
    Duration::from_secs_f64(secs)
}

#[test]
fn connection_churn_leaves_fds_and_memory_flat() {
    let total = soak_duration();
    let echo = EchoServers::start(2);
    let clients = IoThread::spawn("soak-clients").unwrap();
    let nbd = TestServer::start(Setup {
        kind: Kind::Unix,
        iothreads: 2,
        contents: pattern(NBD_CLIENTS * REGION, 7),
        ..Setup::default()
    });
    let mut shadows: Vec<Vec<u8>> = nbd_image_regions(&nbd);

    let run = |length: Duration, shadows: &mut Vec<Vec<u8>>| {
        let until = Instant::now() + length;
        let (echo_totals, nbd_totals) = std::thread::scope(|s| {
            let workers: Vec<_> = shadows
                .iter_mut()
                .enumerate()
                .map(|(i, shadow)| {
                    let nbd = &nbd;
                    s.spawn(move || nbd_churn(nbd, i, shadow, until))
                })
                .collect();
            let echo_totals = echo_churn(&clients, &echo.addrs, until);
            let nbd_totals = workers.into_iter().fold((0, 0), |acc, w| {
                let (conns, blocks) = w.join().expect("NBD client panicked");
                assert!(conns > 0, "an NBD client made no connection");
                (acc.0 + conns, acc.1 + blocks)
            });
            (echo_totals, nbd_totals)
        });
        // Everything the clients closed must be closed on the servers too before a snapshot.
        tests::spin_until("echo servers to close every connection", || {
            echo.live.load(Ordering::SeqCst) == 0
        });
        client::wait_until_idle(&nbd);
        assert_eq!(
            echo.failures.load(Ordering::Relaxed),
            0,
            "echo server errors"
        );
        (echo_totals, nbd_totals)
    };

    let warm_up = total / 4;
    let started = Instant::now();
    run(warm_up, &mut shadows);
    let before = snapshot();
    let (echo_totals, nbd_totals) = run(total - warm_up, &mut shadows);
    let after = snapshot();
    eprintln!(
        "soak {:?}: {} echo connections ({} bytes), {} NBD connections ({} blocks verified); \
         fds {} -> {}, RSS {} -> {} KiB",
        started.elapsed(),
        echo_totals.0,
        echo_totals.1,
        nbd_totals.0,
        nbd_totals.1,
        before.fds,
        after.fds,
        before.rss >> 10,
        after.rss >> 10
    );
    assert_eq!(
        after.fds, before.fds,
        "open fds changed with every connection closed: a connection (or file) leaked"
    );
    let slack = RSS_SLACK_BYTES.max(before.rss * RSS_SLACK_PERCENT / 100);
    assert!(
        after.rss <= before.rss + slack,
        "RSS grew from {} to {} KiB (allowed: +{} KiB)",
        before.rss >> 10,
        after.rss >> 10,
        slack >> 10
    );
    drop(nbd);
    drop(clients);
    drop(echo.threads);
}

/// The image's initial contents, one region per NBD client.
fn nbd_image_regions(server: &TestServer) -> Vec<Vec<u8>> {
    let image = std::fs::read(&server.image).unwrap();
    image.chunks(REGION).map(<[u8]>::to_vec).collect()
}
