//! The nbd-server example against real clients that use structured replies, extended headers and
//! `base:allocation`: libnbd's `nbdinfo` and `nbdcopy` (1.14: structured replies, no extended headers)
//! and QEMU 10's `qemu-img` and `qemu-io` (extended headers). On a sparse file made here, the holes
//! they see must be the holes qemu-nbd shows them for the same file, copies must stay sparse, and reads
//! across holes must verify. A missing tool fails the test (install libnbd-bin and qemu-utils); every
//! tool runs under `timeout`.

#[allow(dead_code)]
#[path = "app_nbd_server/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "app_nbd_server/structured.rs"]
mod structured;

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::{Setup, TempDir, TestServer};
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// The export: 16 MiB.
const SIZE: u64 = 16 * MIB;
/// Where the sparse image has data: (offset, length); holes elsewhere.
const DATA: &[(u64, u64)] = &[
    (0, 4096),
    (400 << 10, 64 << 10),
    (4000 << 10, 4096),
    (8 * MIB, MIB),
    (SIZE - 8192, 8192),
];

/// Runs `tool` under `timeout 120`; panics if it is not installed or fails; returns stdout.
fn run(tool: &str, args: &[&str]) -> String {
    let out = tests::tools::run(tool, args, 120);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed ({}):\n{stderr}",
        out.status
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Pseudo-random bytes with no zero byte, so that no block of data is all zeroes.
fn data(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

/// The image's contents: [`DATA`] filled, zeroes elsewhere (left as holes in the file).
fn contents() -> Vec<u8> {
    let mut out = vec![0; SIZE as usize];
    for (i, &(at, len)) in DATA.iter().enumerate() {
        out[at as usize..(at + len) as usize].copy_from_slice(&data(len, i as u64 + 7));
    }
    out
}

/// The file's own allocation map, from `lseek(SEEK_DATA/SEEK_HOLE)`: (offset, length, hole).
fn file_map(path: &Path) -> Vec<(u64, u64, bool)> {
    let file = std::fs::File::open(path).unwrap();
    let size = file.metadata().unwrap().len();
    let seek = |at: u64, whence| {
        // SAFETY: lseek on a descriptor `file` keeps open; it touches no memory.
        let found = unsafe { libc::lseek(file.as_raw_fd(), at as libc::off_t, whence) };
        u64::try_from(found).unwrap_or(size)
    };
    let mut map = Vec::new();
    let mut at = 0;
    while at < size {
        let data = seek(at, libc::SEEK_DATA);
        if data > at {
            map.push((at, data - at, true));
            at = data;
            continue;
        }
        let hole = seek(at, libc::SEEK_HOLE);
        map.push((at, hole - at, false));
        at = hole;
    }
    map
}

/// qemu-nbd serving `image` on a Unix socket (with its defaults: `--discard=ignore`); killed on drop.
struct QemuNbd {
    child: Child,
    uri: String,
}

impl QemuNbd {
    fn start(image: &Path, dir: &TempDir, read_only: bool) -> QemuNbd {
        run("qemu-nbd", &["--version"]);
        let socket = dir.path("qemu-nbd.sock");
        let child = Command::new("qemu-nbd")
            .args(["-f", "raw", "-x", "disk", "-t", "--shared=8"])
            .args(read_only.then_some("-r"))
            .arg("-k")
            .arg(&socket)
            .arg(image)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting qemu-nbd");
        let mut qemu = QemuNbd {
            child,
            uri: format!("nbd+unix:///disk?socket={}", socket.display()),
        };
        let give_up = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            let exited = qemu.child.try_wait().unwrap();
            assert!(exited.is_none(), "qemu-nbd exited: {exited:?}");
            assert!(Instant::now() < give_up, "qemu-nbd did not listen in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        qemu
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nbd-server and qemu-nbd exporting the same sparse image, read-only.
fn both() -> (TestServer, QemuNbd) {
    let server = TestServer::start(Setup {
        read_only: true,
        contents: contents(),
        sparse: true,
        iothreads: 2,
        ..Setup::default()
    });
    // The file really is sparse here (else there is nothing to compare).
    let map = file_map(&server.image);
    assert!(
        map.iter().any(|e| e.2),
        "the test file system keeps no holes"
    );
    let qemu = QemuNbd::start(&server.image, &server.dir, true);
    (server, qemu)
}

/// `nbdinfo --map --json`: (offset, length, type) of each extent.
fn nbdinfo_map(uri: &str) -> Vec<(u64, u64, u64)> {
    let json: Value = serde_json::from_str(&run("nbdinfo", &["--map", "--json", uri])).unwrap();
    let entries = json.as_array().expect("a JSON array");
    let field = |e: &Value, k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{k} in {e}"));
    let map = entries
        .iter()
        .map(|e| (field(e, "offset"), field(e, "length"), field(e, "type")));
    map.collect()
}

#[test]
fn nbdinfo_map_matches_qemu_nbd_and_the_file() {
    let (server, qemu) = both();
    let ours = nbdinfo_map(&server.uri);
    let theirs = nbdinfo_map(&qemu.uri);
    assert_eq!(ours, theirs, "nbdinfo --map: nbd-server vs qemu-nbd");
    // Type 3 is hole|zero, 0 data; the extents are the file's own map.
    let file: Vec<_> = file_map(&server.image)
        .into_iter()
        .map(|(at, len, hole)| (at, len, if hole { 3 } else { 0 }))
        .collect();
    assert_eq!(ours, file, "nbdinfo --map vs SEEK_DATA/SEEK_HOLE");
    let info = run("nbdinfo", &[&server.uri]);
    for line in ["base:allocation", "can_cache: true", "can_df: true"] {
        assert!(
            info.contains(line),
            "nbdinfo does not say {line:?}:\n{info}"
        );
    }
}

/// `qemu-img map --output=json`: each extent's fields.
fn qemu_img_map(uri: &str) -> Vec<Value> {
    let out = run("qemu-img", &["map", "--output=json", "-f", "raw", uri]);
    let json: Value = serde_json::from_str(&out).unwrap();
    json.as_array().expect("a JSON array").clone()
}

#[test]
fn qemu_img_map_matches_qemu_nbd() {
    let (server, qemu) = both();
    let ours = qemu_img_map(&server.uri);
    let theirs = qemu_img_map(&qemu.uri);
    // Every field (start, length, depth, present, zero, data, compressed, offset) agrees: none
    // differs between the two servers, so none is left out.
    assert_eq!(ours, theirs, "qemu-img map: nbd-server vs qemu-nbd");
    let holes = ours
        .iter()
        .filter(|e| e["zero"] == true && e["data"] == false);
    assert_eq!(holes.count(), DATA.len() - 1, "holes between the data runs");
}

/// The bytes a copy allocates on disk.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Copies the export of `uri` to `dir/name` with `tool` and `args`, checks it is the image, returns the
/// bytes it allocates.
fn copy(dir: &TempDir, name: &str, tool: &str, args: &[&str], uri: &str) -> u64 {
    let out: PathBuf = dir.path(name);
    let mut argv = args.to_vec();
    argv.extend([uri, out.to_str().unwrap()]);
    run(tool, &argv);
    let copied = std::fs::read(&out).unwrap();
    assert!(
        copied == contents(),
        "{tool} {args:?}: the copy differs from the image"
    );
    allocated(&out)
}

#[test]
fn copies_from_nbd_server_are_identical_and_stay_sparse() {
    let (server, qemu) = both();
    let dir = TempDir::new("copies");
    let data: u64 = DATA.iter().map(|d| d.1).sum();
    // ext4 allocates 4 KiB blocks; a copy may hold an extent-tree block or a few blocks more where a
    // write was not block-aligned. 64 KiB of slack covers that and is far below a hole's size.
    let slack = 64 << 10;
    let cases: [(&str, &[&str]); 4] = [
        ("nbdcopy", &[]),
        // Zero detection off: only the extents can keep the copy sparse.
        ("nbdcopy", &["-S", "0"]),
        ("qemu-img", &["convert", "-f", "raw", "-O", "raw"]),
        ("qemu-img", &["convert", "-W", "-f", "raw", "-O", "raw"]),
    ];
    for (i, (tool, args)) in cases.iter().enumerate() {
        let ours = copy(&dir, &format!("ours-{i}.img"), tool, args, &server.uri);
        let theirs = copy(&dir, &format!("theirs-{i}.img"), tool, args, &qemu.uri);
        assert!(
            ours.abs_diff(theirs) <= slack,
            "{tool} {args:?}: {ours} bytes allocated from nbd-server, {theirs} from qemu-nbd"
        );
        assert!(
            ours >= data,
            "{tool} {args:?}: {ours} bytes hold {data} of data?"
        );
        assert!(
            ours <= SIZE / 4,
            "{tool} {args:?}: {ours} of {SIZE} bytes allocated: not sparse"
        );
    }
    // Without the extents nbdcopy -S 0 writes everything: the sparseness above came from them.
    let dense = copy(
        &dir,
        "dense.img",
        "nbdcopy",
        &["-S", "0", "--no-extents"],
        &server.uri,
    );
    assert!(
        dense >= SIZE - slack,
        "nbdcopy --no-extents allocated only {dense}"
    );
}

#[test]
fn qemu_img_convert_into_nbd_server_leaves_what_qemu_nbd_leaves() {
    // A writable export of zeroes (a hole) receives the sparse image: qemu-img 10 (traced with
    // --trace nbd_send_request) writes the data runs and WRITE_ZEROES the holes, without NO_HOLE and
    // without FAST_ZERO. Both servers zero with FALLOC_FL_ZERO_RANGE (qemu-nbd's default
    // --discard=ignore), which allocates unwritten extents that SEEK_DATA reports as holes: the
    // allocation and the map must come out the same from both.
    let server = TestServer::start(Setup {
        contents: vec![0; SIZE as usize],
        sparse: true,
        ..Setup::default()
    });
    let dir = TempDir::new("convert-in");
    let source = dir.path("source.img");
    client::write_image(&source, &contents(), true);
    let target = dir.path("qemu-target.img");
    client::write_image(&target, &vec![0; SIZE as usize], true);
    let qemu = QemuNbd::start(&target, &dir, false);
    let source_arg = source.to_str().unwrap();
    for uri in [&server.uri, &qemu.uri] {
        run(
            "qemu-img",
            &["convert", "-n", "-f", "raw", "-O", "raw", source_arg, uri],
        );
    }
    drop(qemu);
    // The maps first: reading an unwritten extent puts zero pages in the page cache, and SEEK_DATA
    // then reports them as data.
    let source_map = file_map(&source);
    assert_eq!(file_map(&server.image), source_map, "nbd-server's target");
    assert_eq!(file_map(&target), source_map, "qemu-nbd's target");
    for image in [&server.image, &target] {
        let written = std::fs::read(image).unwrap();
        let name = image.display();
        assert!(written == contents(), "{name} differs from the source");
    }
    let (ours, theirs) = (allocated(&server.image), allocated(&target));
    assert!(
        ours.abs_diff(theirs) <= 64 << 10,
        "{ours} bytes allocated, qemu-nbd {theirs}"
    );
}

#[test]
fn qemu_io_reads_across_holes_verify_with_extended_headers() {
    let server = TestServer::start(Setup {
        contents: vec![0; 8 << 20],
        sparse: true,
        ..Setup::default()
    });
    let mut commands = vec![
        "write -P 0xa5 64k 4k".to_string(),
        "write -P 0x5a 1M 64k".to_string(),
        "write -z -u 1056k 8k".to_string(),
        "flush".to_string(),
    ];
    // One READ over hole, data, hole (several chunks), each part verified by a sub-range pattern.
    for (pattern, at, len) in [
        (0, 0, 64 << 10),
        (0xa5, 64 << 10, 4096),
        (0, 68 << 10, 956 << 10),
    ] {
        commands.push(format!("read -P {pattern:#x} -s {at} -l {len} 0 1M"));
    }
    for (pattern, at, len) in [
        (0x5a, 0, 32 << 10),
        (0, 32 << 10, 8192),
        (0x5a, 40 << 10, 24 << 10),
    ] {
        commands.push(format!("read -P {pattern:#x} -s {at} -l {len} 1M 64k"));
    }
    commands.push("read -P 0 2M 6M".into());
    let mut args = vec!["-f", "raw"];
    for c in &commands {
        args.extend(["-c", c.as_str()]);
    }
    args.push(&server.uri);
    let out = run("qemu-io", &args);
    for bad in ["Pattern verification failed", "failed", "error"] {
        assert!(!out.contains(bad), "qemu-io reported {bad:?}:\n{out}");
    }
    assert_eq!(out.matches("read ").count(), 7, "{out}");
}
