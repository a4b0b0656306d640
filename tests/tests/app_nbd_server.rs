//! The nbd-server example (`examples::nbd`) against real NBD clients: qemu-io, qemu-img (from
//! qemu-utils; a missing tool fails the test), and a Rust client that sends malformed and random
//! request sequences (see `app_nbd_server/hostile.rs`, `app_nbd_server/model.rs`).

#[path = "app_nbd_server/client.rs"]
mod client;
#[path = "app_nbd_server/hostile.rs"]
mod hostile;
#[path = "app_nbd_server/model.rs"]
mod model;
#[path = "app_nbd_server/negotiated.rs"]
mod negotiated;
#[path = "app_nbd_server/parsers.rs"]
mod parsers;
#[path = "app_nbd_server/structured.rs"]
mod structured;

use client::{Kind, Setup, TestServer};

/// Runs a qemu tool under `timeout` (a hung server fails the test instead of hanging it); panics if
/// the tool is missing or fails, returns its stdout and stderr.
fn qemu(tool: &str, args: &[&str]) -> String {
    let out = tests::tools::run(tool, args, 120);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{tool} {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// qemu-io commands; fails on any command error or pattern mismatch.
fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let out = qemu("qemu-io", &args);
    for bad in ["Pattern verification failed", "failed", "error", "Error"] {
        assert!(!out.contains(bad), "qemu-io reported {bad:?}:\n{out}");
    }
    out
}

const MIB: usize = 1 << 20;

/// Writes, FUA writes, write-zeroes, discard, flush and concurrent AIO writes through qemu-io, read back
/// through qemu-io on other connections (other IOThreads), then checked in the file itself.
fn qemu_io_round_trip(kind: Kind) {
    let mut server = TestServer::start(Setup {
        kind,
        iothreads: 3,
        ..Setup::default()
    });
    let out = qemu_io(
        &server.uri,
        &[
            "write -P 0xa5 0 1M",
            "read -P 0xa5 0 1M",
            "write -f -P 0x5a 1M 64k",
            "read -P 0x5a 1M 64k",
            "write -z 2M 1M",
            "read -P 0 2M 1M",
            "discard 3M 1M",
            "aio_write -P 0x11 4M 64k",
            "aio_write -P 0x22 5M 64k",
            "aio_write -f -P 0x33 6M 64k",
            "aio_flush",
            "flush",
        ],
    );
    assert_eq!(out.matches("wrote ").count(), 6, "{out}");
    // Fresh connections land on the other IOThreads (round-robin) and see the same data.
    for _ in 0..2 {
        qemu_io(
            &server.uri,
            &[
                "read -P 0xa5 0 1M",
                "read -P 0x5a 1M 64k",
                "read -P 0 2M 1M",
                "read -P 0x11 4M 64k",
                "read -P 0x22 5M 64k",
                "read -P 0x33 6M 64k",
                "read -P 0xee 7M 1M",
            ],
        );
    }
    let image = server.image.clone();
    server.stop().expect("graceful stop");
    let file = std::fs::read(image).unwrap();
    assert!(file[..MIB].iter().all(|&b| b == 0xa5));
    assert!(file[MIB..MIB + 65536].iter().all(|&b| b == 0x5a));
    assert!(file[MIB + 65536..2 * MIB].iter().all(|&b| b == 0xee));
    assert!(file[2 * MIB..3 * MIB].iter().all(|&b| b == 0));
    // Discarded blocks of a regular file read back as zeroes (hole punched).
    assert!(file[3 * MIB..4 * MIB].iter().all(|&b| b == 0));
    assert!(file[4 * MIB..4 * MIB + 65536].iter().all(|&b| b == 0x11));
    assert!(file[7 * MIB..].iter().all(|&b| b == 0xee));
}

#[test]
fn qemu_io_over_unix_socket() {
    qemu_io_round_trip(Kind::Unix);
}

#[test]
fn qemu_io_over_tcp() {
    qemu_io_round_trip(Kind::Tcp);
}

#[test]
fn qemu_io_with_o_direct() {
    let server = TestServer::start(Setup {
        direct: true,
        ..Setup::default()
    });
    qemu_io(
        &server.uri,
        &[
            "write -P 0x77 4k 8k",
            "read -P 0x77 4k 8k",
            "write -P 0x78 512 512",
            "read -P 0x78 512 512",
            "read -P 0xee 0 512",
            "write -f -z 64k 64k",
            "read -P 0 64k 64k",
        ],
    );
}

fn bench(uri: &str, depth: &str, write: bool) {
    let mut args = vec!["bench", "-f", "raw", "-c", "1000", "-d", depth, "-s", "4k"];
    if write {
        args.extend(["-w", "--pattern", "66", "--flush-interval", "100"]);
    }
    args.push(uri);
    let out = qemu("qemu-img", &args);
    assert!(out.contains("Run completed"), "{out}");
}

#[test]
fn qemu_img_bench_depth_1_and_64() {
    for kind in [Kind::Unix, Kind::Tcp] {
        let mut server = TestServer::start(Setup {
            kind,
            iothreads: 2,
            ..Setup::default()
        });
        for depth in ["1", "64"] {
            bench(&server.uri, depth, true);
            bench(&server.uri, depth, false);
        }
        // The writes went through (1000 blocks of 4 KiB with pattern 66 = 0x42), and nothing else.
        qemu_io(
            &server.uri,
            &["read -P 0x42 0 4000k", "read -P 0xee 4000k 1M"],
        );
        server.stop().unwrap();
    }
}

#[test]
fn qemu_img_convert_copies_the_export() {
    // Pseudo-random contents with some zero runs, so both data and zero detection are exercised.
    let mut contents = vec![0u8; 6 * MIB + 4096];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for (i, chunk) in contents.chunks_mut(4096).enumerate() {
        if i % 5 == 3 {
            continue;
        }
        for b in chunk {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    let mut server = TestServer::start(Setup {
        read_only: true,
        contents: contents.clone(),
        ..Setup::default()
    });
    let copy = server.dir.path("copy.img");
    qemu(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &server.uri,
            copy.to_str().unwrap(),
        ],
    );
    let copied = std::fs::read(&copy).unwrap();
    assert_eq!(copied.len(), contents.len());
    assert!(copied == contents, "the copy differs from the export");
    server.stop().unwrap();
}

#[test]
fn without_a_file_a_temporary_one_is_served_and_removed() {
    use examples::nbd::{Config, Listen, Server};
    let dir = client::TempDir::new("temp");
    let socket = dir.path("nbd.sock");
    let server = Server::bind(Config {
        size: 3 << 20,
        listen: Listen::Unix(socket.clone()),
        iothreads: 1,
        ..Config::default()
    })
    .unwrap();
    let temp = server.temp_file().expect("a temporary file").to_owned();
    assert_eq!(std::fs::metadata(&temp).unwrap().len(), 3 << 20);
    assert_eq!(server.size(), 3 << 20);
    let uri = server.uri().to_owned();
    let stop = server.shutdown_handle();
    let thread = std::thread::spawn(move || server.serve());
    qemu_io(
        &uri,
        &[
            "write -P 0x3c 1M 4k",
            "read -P 0x3c 1M 4k",
            "read -P 0 0 1M",
        ],
    );
    stop.shutdown();
    thread.join().unwrap().unwrap();
    assert!(
        !temp.exists(),
        "the temporary file is removed with the server"
    );
    assert!(!socket.exists(), "the socket is removed");
}
