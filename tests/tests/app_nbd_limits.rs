//! The NBD server under resource attacks, as an operator would meet them: clients that stall in the
//! handshake, more connections than allowed, the process's fd limit, a client that pipelines reads
//! and never reads a reply. Each time, a well-behaved client (QEMU's `qemu-io`) is still served, the
//! server does not spin, and its memory stays within the per-connection budget.
//!
//! (The crate root of a test target resolves `mod` paths beside itself, hence the `#[path]`.)

#[path = "app_nbd_server/client.rs"]
#[allow(dead_code)]
mod client;
#[path = "app_nbd_server/structured.rs"]
#[allow(dead_code)]
mod structured;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use client::{Client, TempDir, CMD_READ};
use examples::nbd::{Config, Listen, Server};

/// A TCP server on an 8 MiB image with `config`'s limits, serving on its own thread.
fn start(config: Config, dir: &TempDir) -> (String, SocketAddr, examples::nbd::ShutdownHandle) {
    let image = dir.path("disk.img");
    std::fs::write(&image, vec![0u8; 8 << 20]).unwrap();
    let server = Server::bind(Config {
        file: Some(image),
        listen: Listen::Tcp("127.0.0.1:0".parse().unwrap()),
        iothreads: 2,
        ..config
    })
    .unwrap();
    let uri = server.uri().to_owned();
    let addr = server.tcp_addr().unwrap();
    let stop = server.shutdown_handle();
    std::thread::spawn(move || server.serve());
    (uri, addr, stop)
}

/// `qemu-io` writes a pattern and reads it back through the server, within a bound.
fn well_behaved_client(uri: &str, pattern: u8) {
    let (write, read) = (
        format!("write -P {pattern:#x} 0 64k"),
        format!("read -P {pattern:#x} 0 64k"),
    );
    let out = tests::tools::run(
        "qemu-io",
        &["-f", "raw", "-c", &write, "-c", &read, uri],
        60,
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && !stdout.contains("verification failed") && stderr.is_empty(),
        "qemu-io against {uri} ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// Whether the server closed `stream` within the tests' bound (a read returns end of stream).
fn closed_within_bound(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(tests::BOUND)).unwrap();
    let mut greeting = [0u8; 18];
    let _ = std::io::Read::read_exact(stream, &mut greeting);
    let mut byte = [0u8; 1];
    matches!(std::io::Read::read(stream, &mut byte), Ok(0))
}

#[test]
fn a_client_stalled_in_the_handshake_is_dropped_at_the_limit() {
    let dir = TempDir::new("limit");
    let limit = Duration::from_millis(300);
    let (_uri, addr, stop) = start(
        Config {
            handshake_limit: Some(limit),
            ..Config::default()
        },
        &dir,
    );
    let started = Instant::now();
    let mut stalled = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within_bound(&mut stalled),
        "the stalled client was never dropped"
    );
    assert!(
        started.elapsed() >= limit,
        "dropped before its limit ({:?})",
        started.elapsed()
    );
    stop.shutdown();
}

#[test]
fn connections_over_the_limit_are_closed_at_once() {
    let dir = TempDir::new("maxconn");
    let (uri, addr, stop) = start(
        Config {
            max_connections: Some(2),
            handshake_limit: None,
            ..Config::default()
        },
        &dir,
    );
    let mut held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for s in &mut held {
        let mut greeting = [0u8; 18];
        std::io::Read::read_exact(s, &mut greeting).unwrap();
    }
    let mut third = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within_bound(&mut third),
        "the third connection was served"
    );
    drop(held);
    // Once the two are gone, a client is served again (its accept may race with their cleanup:
    // qemu-io retries nothing, so wait until the slots are free).
    tests::spin_until("the held connections to end", || {
        let mut probe = TcpStream::connect(addr).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut greeting = [0u8; 18];
        let greeted = std::io::Read::read_exact(&mut probe, &mut greeting).is_ok();
        let mut byte = [0u8; 1];
        let open = !matches!(std::io::Read::read(&mut probe, &mut byte), Ok(0));
        greeted && open
    });
    well_behaved_client(&uri, 0x3c);
    stop.shutdown();
}

/// The child process of the fd-limit test: a server under RLIMIT_NOFILE = 256, driven by the parent
/// over stdin/stdout (`rss` reports its resident memory; EOF ends it).
fn fd_limit_child() {
    tests::set_soft_limit(libc::RLIMIT_NOFILE, 256);
    let dir = TempDir::new("fdlimit");
    let (uri, _, stop) = start(
        Config {
            handshake_limit: None,
            ..Config::default()
        },
        &dir,
    );
    println!("URI {uri}");
    let rss_kib = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    println!("RSS {}", rss_kib());
    for line in std::io::stdin().lock().lines() {
        match line.unwrap().as_str() {
            "rss" => println!("RSS {}", rss_kib()),
            _ => break,
        }
    }
    stop.shutdown();
}

/// CPU time (in clock ticks of 10 ms) each thread of process `pid` has used, by thread id and name.
fn thread_cpu_ticks(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        // Fields after the ")" that ends the command name: state is 0, utime 11, stime 12.
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let id = dir.file_name().unwrap().to_string_lossy().into_owned();
        out.push((format!("{}/{id}", name.trim()), ticks(11) + ticks(12)));
    }
    out
}

/// Reads the child's stdout until a line starts with `prefix`, within the bound.
fn expect_line(lines: &mpsc::Receiver<String>, prefix: &str) -> String {
    let line = lines
        .recv_timeout(tests::BOUND)
        .unwrap_or_else(|_| panic!("the child printed no {prefix:?} line"));
    line.strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
        .trim()
        .to_owned()
}

/// Under a 256-fd limit: 200 clients stall in the handshake and a well-behaved client is still
/// served; 1,000 connection attempts beyond the limit make the server pause accepting without
/// spinning, and it accepts again once fds are free; a client pipelining thousands of 1 MiB reads
/// and reading no reply costs at most its budget (64 requests, 64 MiB) in memory.
#[test]
fn at_the_fd_limit_a_good_client_is_served_and_the_server_does_not_spin() {
    const NAME: &str = "at_the_fd_limit_a_good_client_is_served_and_the_server_does_not_spin";
    if tests::child_expectation(NAME).is_some() {
        return fd_limit_child();
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(tests::CHILD, NAME)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (line_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        // libtest may print "test NAME ... " on the same line before the child's first line.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(at) = ["URI ", "RSS "].iter().find_map(|p| line.find(p)) {
                let _ = line_tx.send(line[at..].to_owned());
            }
        }
    });
    let (log_tx, log) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("server: {line}");
            let _ = log_tx.send(line);
        }
    });
    let mut to_child = child.stdin.take().unwrap();
    let uri = expect_line(&lines, "URI ");
    let rss_start: u64 = expect_line(&lines, "RSS ").parse().unwrap();
    let addr: SocketAddr = uri
        .strip_prefix("nbd://")
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .parse()
        .unwrap();

    // 200 clients that connect and say nothing (no handshake limit in this server).
    let stalled: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    well_behaved_client(&uri, 0x11);

    // A client that pipelines 3,000 reads of 1 MiB and never reads a reply.
    let mut greedy = Client::new(Box::new(TcpStream::connect(addr).unwrap()));
    greedy.greeting(true);
    greedy.go("disk").expect("the greedy client negotiates");
    let requests: Vec<u8> = (0..3000u64)
        .flat_map(|i| Client::request_bytes(CMD_READ, 0, i, (i % 8) << 20, 1 << 20))
        .collect();
    // The server stops reading once the connection's budget is spent, so this write blocks there;
    // the thread ends when the connection does (at the latest when the server child exits).
    let writer = std::thread::spawn(move || {
        let _ = greedy.s.write_all(&requests);
    });
    well_behaved_client(&uri, 0x22);
    writeln!(to_child, "rss").unwrap();
    let rss_greedy: u64 = expect_line(&lines, "RSS ").parse().unwrap();
    let grown_mib = rss_greedy.saturating_sub(rss_start) / 1024;
    assert!(
        grown_mib <= 64 + 32,
        "a client reading no replies grew the server by {grown_mib} MiB (budget: 64 MiB)"
    );

    // 1,000 more connection attempts than the fds left: non-blocking, so none of them waits here.
    let flood: Vec<socket2::Socket> = (0..1000)
        .map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&addr.into());
            s
        })
        .collect();
    let deadline = Instant::now() + tests::BOUND;
    loop {
        let line = log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server never reported its fd limit");
        if line.contains("pausing accepts") {
            break;
        }
    }
    // The server may still be finishing legitimate work (the greedy client's reads, the flood's
    // handshakes): wait for a quiet half second, which a server spinning at its fd limit never has.
    let mut windows = Vec::new();
    let quiet = (0..20).any(|_| {
        let before = thread_cpu_ticks(child.id());
        std::thread::sleep(Duration::from_millis(500)); // a measuring window, not a wait
        let after = thread_cpu_ticks(child.id());
        let busy: Vec<_> = after
            .iter()
            .filter_map(|(name, t)| {
                let t0 = before
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0, |(_, t0)| *t0);
                (*t > t0).then(|| (name.clone(), (t - t0) * 10))
            })
            .collect();
        let total_ms: u64 = busy.iter().map(|(_, ms)| ms).sum();
        windows.push((total_ms, busy));
        total_ms < 100
    });
    assert!(
        quiet,
        "at the fd limit the server never had a quiet half second (it spins): {windows:?}"
    );

    // Free the fds: the server accepts again and serves.
    drop(flood);
    drop(stalled);
    drop(writer); // detached: it ends with its connection
    well_behaved_client(&uri, 0x33);
    drop(to_child);
    let status = child.wait().unwrap();
    assert!(status.success(), "the server child failed: {status}");
}
