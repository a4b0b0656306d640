//! Real-guest tests: a Linux guest under QEMU (TCG; these machines have no working KVM) drives a block
//! backend through virtio-blk, and reports what it saw on its serial console.
//!
//! The pieces, in the order a test uses them:
//!
//! - [`image()`]: the guest, built once and cached under the target dir (`target/guest-image/KEY/`,
//!   or `$AIOCTX_GUEST_CACHE/KEY/`): `vmlinuz` from Debian's cloud kernel package (downloaded with
//!   `apt-get download`, unpacked with `dpkg-deb -x`, never installed) and `initrd.gz`, a gzip'd newc
//!   cpio holding busybox-static, the virtio modules, fio, util-linux's blkdiscard and fallocate with
//!   their libraries, and `tests/guest/init.sh` as `/init`. `tests/guest/build-image.sh` does the
//!   work; KEY stamps its inputs (the two scripts, the kernel package `apt-cache depends
//!   linux-image-cloud-amd64` names, the size and mtime of every host file copied), so a change of
//!   any of them builds a new image. Builders take a lock file and build in a temp dir renamed into
//!   place: two test binaries never see a half-built image. About 15 s and 48 MB here.
//! - [`StorageDaemon`]: QEMU's reference backend, `qemu-storage-daemon` exporting a raw image as
//!   vhost-user-blk on a Unix socket, served from one IOThread.
//! - [`Guest`]: boots `qemu-system-x86_64 -accel tcg` on the image with [`Disk`]s (a vhost-user-blk
//!   front end on a socket, or QEMU's built-in virtio-blk on an IOThread) and a [`Job`], reads the
//!   serial console, enforces a timeout ([`TIMEOUT`] by default: QEMU is killed and the test fails
//!   with the console's tail), and returns an [`Outcome`]: the job's values, sections (fio's JSON,
//!   parsed by [`Outcome::fio`]) and exit code. [`Guest::start`] gives a [`Running`] guest that can be
//!   killed on purpose ([`Running::kill`], e.g. after [`Running::wait_for_mark`]) for the partial
//!   console, or whose timeout a test expects ([`Running::wait_or_time_out`]).
//!
//! # Jobs
//!
//! The guest's `/init` mounts proc, sysfs and devtmpfs, loads the virtio modules, waits for its disks,
//! prints facts about each (`vda.bytes`, `vda.ro`, `vda.hw_queues` (blk-mq queues in use),
//! `vda.discard_max_bytes`, `vda.write_zeroes_max_bytes`, `vda.features` (virtio feature bits),
//! `kernel`, `cpus`), runs the job named by `aioctx.job=NAME`, prints `done job=NAME rc=N` and
//! powers off. Parameters are `aioctx.KEY=VALUE` on the kernel command line ([`Job::param`]); fio
//! runs with `--direct=1`. Common parameters: `dev` (the disks, colon-separated as fio's
//! `--filename`: `vda` by default, `vda:vdb` for two), `engine` (`libaio`; or `io_uring`), `bs`
//! (`4k`), `iodepth` (16), `numjobs` (1), `size` (bytes of each disk a job uses; by default the
//! smallest disk split between the jobs).
//!
//! | job | what it does | results |
//! |---|---|---|
//! | `none` | nothing (boot and disk facts) | values only |
//! | `randrw` | fio randrw, `rwmixread` (50), every written block verified (`--verify=crc32c`); `numjobs` jobs each in its own region, spread over the vCPUs (so over the blk-mq queues) | section `randrw` |
//! | `seqverify` | fio sequential write of the disk (`bs` 256k, `iodepth` 4), then a read-back verifying every block | section `seqverify` |
//! | `discard` | fills MiB 0..4 with 0xaa, then BLKDISCARD MiB 0 (`blkdiscard`), BLKZEROOUT MiB 1 (`blkdiscard -z`), `fallocate --zero-range` MiB 2; MiB 3 must keep its pattern | values `STEP.rc`, `STEP.msg`, `STEP.write_ios`, `STEP.discard_ios`, `STEP.zeroed` for `discard`, `zeroout`, `zero_range`; `untouched.intact` |
//! | `pattern` | a known pattern (fio, crc32c headers carrying each block's offset) at `offset` (0) of `size` (16 MiB) bytes, `bs` 64k: `phase=write` writes and flushes it, prints `mark written`, then `hold=none` (power off), `idle` (sleep until killed) or `io` (random writes after the region until killed; `mark holding` once 64 of them completed), a hold failing the job after `hold_max` s (600) so that an orphaned guest ends; `phase=verify` checks it; `both` (default) does both | sections `pattern.write`, `pattern.verify` |
//! | `readonly` | a 4 KiB O_DIRECT write that must fail, then a read that must not | values `write.rc`, `write.error` (`EPERM`, `EROFS`, `EIO`, `EACCES`, `other`, `none`), `write.msg`, `read.rc` |
//! | `bench` | fio benchmarks, `runs=RW:IODEPTH:NUMJOBS,...` (default `randread:1:1,randread:32:1,randwrite:32:1,randread:32:4`), each `runtime` s (5) after 1 s of ramp | sections `bench.RW.qdIODEPTH.jNUMJOBS` |
//!
//! A job's exit code is 0 when every step did what it should (fio found no error and no verify
//! failure; the discard job's zeroing steps zeroed; the read-only write failed). Warnings and errors of
//! the guest kernel come last, in section `dmesg`.
//!
//! # Costs and rules
//!
//! Under TCG the guest's vCPU is the bottleneck (about one host core per vCPU): a boot takes about 6 s
//! here (3 s of it unpacking the initramfs), a 64 MiB randrw with verification 5 to 15 s. Tests take
//! [`one_at_a_time`] so that the guests of a test binary run one after another and each stays well
//! inside its timeout on a shared 2-core machine. A guest's vCPUs take turns on one host thread
//! (`-accel tcg,thread=single`; see [`Guest::multi_threaded_tcg`] for what the default
//! multi-threaded TCG did to 4-vCPU guests here). A guest that runs past its timeout fails with the
//! console's tail, what QEMU's monitor says of each vCPU (where it is, whether it halted, its local
//! APIC's in-service and pending vectors) and the host's threads: every thread of QEMU and of the
//! test process, its state, its kernel wait and (gdb) its stack. The tools are `qemu-system-x86_64`,
//! `qemu-storage-daemon` (qemu-system-x86 and qemu-utils 10 from bookworm-backports), busybox-static,
//! fio, util-linux, dpkg and apt; `scripts/test` installs them. A missing tool fails the test with
//! the package to install: nothing is skipped.
//!
//! Disk images live in a [`Scratch`] dir under the cache (QEMU opens them with O_DIRECT, which a
//! tmpfs /tmp would refuse); sockets in a short dir under the temp dir (`sun_path` is 108 bytes).

mod boot;
mod image;
mod monitor;
mod results;
mod stacks;
mod storage_daemon;

pub use boot::{Disk, Guest, Job, Running, TIMEOUT};
pub use image::{cache_root, image, Image};
pub use results::{Fio, FioDirection, Outcome, Section};
pub use storage_daemon::{Export, StorageDaemon};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// Serialises the guests of one test binary: a test holds the guard while its guests run. Guests are
/// CPU-bound (TCG), so two at once on a 2-core machine would each take twice as long and press
/// against their timeouts. A test that needs two guests at once takes it once.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that failed while holding the guard poisons it; the next test still runs alone.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Panics, naming the package to install, unless `tool` runs (`tool --version`).
pub fn require(tool: &str, package: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{tool} is missing or broken: this test needs it (install {package}; scripts/test does)"
    );
}

/// The package hint for the QEMU binaries: never the emulator from plain bookworm (7.2), which
/// removes qemu-utils 10.
pub(crate) const QEMU_PACKAGES: &str =
    "qemu-system-x86 and qemu-utils together from bookworm-backports: `apt-get install -t bookworm-backports qemu-system-x86 qemu-utils`";

/// A scratch dir for one test: disk images under the cache dir (a real file system, so O_DIRECT
/// works), sockets under the temp dir (short paths). Both are removed on drop.
pub struct Scratch {
    images: tempfile::TempDir,
    sockets: tempfile::TempDir,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let parent = cache_root().join("scratch");
        std::fs::create_dir_all(&parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        let images = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir_in(&parent)
            .unwrap_or_else(|e| panic!("cannot create a scratch dir in {}: {e}", parent.display()));
        let sockets = tempfile::Builder::new()
            .prefix("aioctx-guest-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a socket dir in the temp dir: {e}"));
        Scratch { images, sockets }
    }

    /// A sparse raw image of `bytes` bytes (created, or truncated to that size).
    pub fn raw_image(&self, name: &str, bytes: u64) -> PathBuf {
        let path = self.images.path().join(name);
        let file = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        file.set_len(bytes)
            .unwrap_or_else(|e| panic!("cannot size {}: {e}", path.display()));
        path
    }

    /// A path for a Unix socket (nothing is created).
    pub fn socket(&self, name: &str) -> PathBuf {
        self.sockets.path().join(name)
    }

    /// The dir of the images.
    pub fn dir(&self) -> &Path {
        self.images.path()
    }
}

/// The lines of `text` that start with one of `prefixes`, each cut to `max_chars`, one per line: what
/// a failure message keeps of a tool's output (gdb's frames, QEMU's monitor).
pub(crate) fn lines_starting_with(text: &str, prefixes: &[&str], max_chars: usize) -> String {
    text.lines()
        .filter(|line| prefixes.iter().any(|p| line.starts_with(p)))
        .map(|line| {
            format!(
                "{}\n",
                line.trim_end().chars().take(max_chars).collect::<String>()
            )
        })
        .collect()
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
