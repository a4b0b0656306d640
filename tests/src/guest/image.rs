//! Building and caching the guest image (`tests/guest/build-image.sh` does the work; this decides
//! when, where, and keeps concurrent builders apart).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The build script and the guest's init, compiled in: the cache key hashes what will run.
const BUILD_SCRIPT: &str = include_str!("../../guest/build-image.sh");
const INIT: &str = include_str!("../../guest/init.sh");

/// The meta-package whose dependency names the current cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";

/// How long a build may take (a 27 MB download, unpacking, packing ~90 MB): then it is killed.
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// A built guest: boot it with `-kernel vmlinuz -initrd initrd`.
#[derive(Debug, Clone)]
pub struct Image {
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    /// The kernel release (`uname -r` in the guest).
    pub kernel: String,
    /// What the build recorded: package, kernel, sizes, fio and busybox versions.
    pub manifest: String,
}

/// The guest image, built on first use in this process (or found in the cache). Panics with the
/// build's log if it cannot be built.
pub fn image() -> &'static Image {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    match IMAGE.get_or_init(build_or_find) {
        Ok(image) => image,
        Err(e) => panic!("the guest image cannot be built: {e}"),
    }
}

/// Where images are cached: `$AIOCTX_GUEST_CACHE`, else `guest-image` in the cargo target dir of this
/// test binary (the ancestor holding cargo's `CACHEDIR.TAG`).
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("AIOCTX_GUEST_CACHE") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("guest-image")
}

fn build_or_find() -> Result<Image, String> {
    let root = cache_root();
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let key = cache_key()?;
    let dir = root.join(&key);
    if !dir.join("manifest").is_file() {
        let _lock = Lock::take(&root.join("lock"), BUILD_TIMEOUT + Duration::from_secs(60))?;
        // Another process may have built it while we waited.
        if !dir.join("manifest").is_file() {
            build(&root, &key)?;
        }
    }
    let manifest = std::fs::read_to_string(dir.join("manifest"))
        .map_err(|e| format!("reading {}/manifest: {e}", dir.display()))?;
    let kernel = manifest
        .lines()
        .find_map(|l| l.strip_prefix("kernel="))
        .unwrap_or("?")
        .to_string();
    Ok(Image {
        vmlinuz: dir.join("vmlinuz"),
        initrd: dir.join("initrd.gz"),
        kernel,
        manifest,
    })
}

/// The cache key: a hash of the scripts, the kernel package and the host files the image copies.
fn cache_key() -> Result<String, String> {
    let mut hash = Fnv::new();
    hash.add(BUILD_SCRIPT.as_bytes());
    hash.add(INIT.as_bytes());
    hash.add(kernel_package()?.as_bytes());
    // The script lists the host files it copies (and fails, naming the package, if one is missing).
    // It is read from stdin: no file that a concurrent build's clean-up could remove.
    let mut child = Command::new("bash")
        .args(["-s", "inputs"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running bash: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(BUILD_SCRIPT.as_bytes())
        .map_err(|e| format!("writing the script to bash: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running bash: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    for path in String::from_utf8_lossy(&out.stdout).lines() {
        let meta = std::fs::metadata(path).map_err(|e| format!("the image's input {path}: {e}"))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        hash.add(format!("{path} {} {mtime}\n", meta.len()).as_bytes());
    }
    Ok(format!("{:016x}", hash.0))
}

/// The kernel package `apt-cache depends linux-image-cloud-amd64` names (no network needed).
fn kernel_package() -> Result<String, String> {
    let out = Command::new("apt-cache")
        .args(["depends", KERNEL_META])
        .output()
        .map_err(|e| format!("apt-cache (from apt) cannot run: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "`apt-cache depends {KERNEL_META}` names no kernel package (run `apt-get update`; \
                 scripts/test does): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Builds into a temp dir and renames it to `root/key`. The caller holds the lock.
fn build(root: &Path, key: &str) -> Result<(), String> {
    let package = kernel_package()?;
    let work = root.join(format!(".build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let script = work.join("build-image.sh");
    let init = work.join("init.sh");
    std::fs::write(&script, BUILD_SCRIPT).map_err(|e| format!("writing the script: {e}"))?;
    std::fs::write(&init, INIT).map_err(|e| format!("writing init: {e}"))?;
    let out = work.join("out");
    let log_path = work.join("build.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("creating the log: {e}"))?;
    eprintln!(
        "building the guest image ({package}) in {} (log: {})",
        root.display(),
        log_path.display()
    );
    let started = Instant::now();
    let status = Command::new("timeout")
        .args(["-k", "10", &BUILD_TIMEOUT.as_secs().to_string(), "bash"])
        .arg(&script)
        .arg("build")
        .arg(&out)
        .arg(&package)
        .arg(root.join("debs"))
        .arg(&init)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .status()
        .map_err(|e| format!("running the build (bash, timeout): {e}"))?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let kept = root.join("last-failure.log");
        let _ = std::fs::copy(&log_path, &kept);
        let _ = std::fs::remove_dir_all(&work);
        let why = if status.code() == Some(124) {
            format!("timed out after {BUILD_TIMEOUT:?}")
        } else {
            status.to_string()
        };
        return Err(format!(
            "tests/guest/build-image.sh failed ({why}; log kept in {}):\n{}",
            kept.display(),
            super::tail(&text, 40)
        ));
    }
    let _ = std::fs::rename(&log_path, out.join("build.log"));
    let _ = writeln!(
        std::fs::OpenOptions::new()
            .append(true)
            .open(out.join("manifest"))
            .map_err(|e| e.to_string())?,
        "build_seconds={:.1}",
        started.elapsed().as_secs_f64()
    );
    let dest = root.join(key);
    std::fs::rename(&out, &dest)
        .map_err(|e| format!("renaming {} to {}: {e}", out.display(), dest.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    // Older images and leftovers of killed builds (the lock says no build is running).
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale_image =
            name.len() == 16 && name != key && name.bytes().all(|b| b.is_ascii_hexdigit());
        if stale_image || name.starts_with(".build-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    eprintln!(
        "built the guest image in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// An exclusive `flock` on a lock file, released when the file closes (on drop, or when the process
/// dies).
struct Lock {
    _file: std::fs::File,
}

impl Lock {
    fn take(path: &Path, bound: Duration) -> Result<Lock, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let give_up = Instant::now() + bound;
        loop {
            // SAFETY: flock takes an fd we own and no pointers.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Lock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(format!("flock {}: {err}", path.display()));
            }
            if Instant::now() > give_up {
                return Err(format!(
                    "another process held {} for {bound:?} (a build hung?)",
                    path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// FNV-1a, 64 bits: stable across Rust releases (the cache key must not change with the compiler).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
}
