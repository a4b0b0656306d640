//! Writes the kernel refuses: EFBIG past RLIMIT_FSIZE (with SIGXFSZ ignored, as a VMM does) and ENOSPC
//! on a full file system (a 64 KiB tmpfs in a private mount namespace), each in a child process, on every
//! block I/O engine. The error reaches the caller of `aioctx::fs::File`'s write as an `io::Error`; a
//! short write is reported as short; the data written before the limit is intact and the context serves.

use std::ffi::CString;
use std::io;

use aioctx::fs::{File, IoEngine};
use aioctx::Backend;
use tests::{child_expectation, run_in_child};

use crate::common::assert_context_serves;
use tests::{set_soft_limit, TempPath};

/// Every engine, on the backends where it runs differently.
const ENGINES: [(Backend, IoEngine); 4] = [
    (Backend::IoUring, IoEngine::IoUring),
    (Backend::Epoll, IoEngine::IoUring),
    (Backend::Epoll, IoEngine::ThreadPool),
    (Backend::IoUring, IoEngine::ThreadPool),
];

const LIMIT: u64 = 64 * 1024;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

async fn open(path: &std::path::Path, engine: IoEngine) -> File {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .engine(engine)
        .open(path)
        .await
        .unwrap();
    assert_eq!(f.engine(), engine);
    f
}

fn assert_errno(res: io::Result<impl std::fmt::Debug>, errno: i32, what: &str) {
    let err = res.expect_err(what);
    assert_eq!(err.raw_os_error(), Some(errno), "{what}: {err}");
}

#[test]
fn efbig_past_rlimit_fsize_reaches_the_writer() {
    const NAME: &str = "write_limits::efbig_past_rlimit_fsize_reaches_the_writer";
    if child_expectation(NAME).is_none() {
        // A child: the file size limit and SIGXFSZ's disposition are process-wide.
        return run_in_child(NAME, &[]);
    }
    // SAFETY: setting a signal to SIG_IGN installs no handler code.
    assert_ne!(
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) },
        libc::SIG_ERR
    );
    set_soft_limit(libc::RLIMIT_FSIZE, LIMIT);
    for (backend, engine) in ENGINES {
        let what = format!("{backend:?}/{engine:?}");
        let ctx = tests::context(backend);
        let path = TempPath::new("efbig");
        ctx.block_on(async {
            let f = open(&path.0, engine).await;
            let head = pattern(1, LIMIT as usize - 4096);
            let (res, _) = f.write_all_at(head.clone(), 0).await;
            res.unwrap();

            let (res, _) = f.write_at(vec![9u8; 4096], LIMIT).await;
            assert_errno(res, libc::EFBIG, &format!("{what}: write at the limit"));
            let (res, _) = f.writev_at(vec![vec![9u8; 512]; 2], LIMIT + 4096).await;
            assert_errno(res, libc::EFBIG, &format!("{what}: writev past the limit"));
            // Straddling the limit: the part below it is written and the write is short.
            let tail = pattern(7, 8192);
            let (res, _) = f.write_at(tail.clone(), LIMIT - 4096).await;
            assert_eq!(res.unwrap(), 4096, "{what}: short write up to the limit");
            // write_all_at goes on with the rest and reports the error.
            let (res, _) = f.write_all_at(tail.clone(), LIMIT - 4096).await;
            assert_errno(
                res,
                libc::EFBIG,
                &format!("{what}: write_all_at across the limit"),
            );

            let (res, data) = f.read_exact_at(vec![0u8; LIMIT as usize], 0).await;
            res.unwrap();
            assert_eq!(
                &data[..head.len()],
                &head[..],
                "{what}: data below the limit"
            );
            assert_eq!(
                &data[head.len()..],
                &tail[..4096],
                "{what}: the short write's part"
            );
            assert_eq!(f.len().unwrap(), LIMIT);
        });
        assert_context_serves(&ctx);
    }
}

fn check(ret: libc::c_int, what: &str) {
    assert_eq!(ret, 0, "{what}: {}", io::Error::last_os_error());
}

/// A tmpfs mounted in this thread's private mount namespace; unmounted and its (empty) mount point
/// removed on drop, so no directory is left behind in the temp dir.
struct PrivateTmpfs(std::path::PathBuf);

impl Drop for PrivateTmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: umount2 reads the NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Mounts a tmpfs of `size` at `dir` in a new mount namespace of the calling thread (and the threads it
/// starts from now on), invisible to the rest of the system.
fn private_tmpfs(dir: &std::path::Path, size: &str) -> PrivateTmpfs {
    std::fs::create_dir_all(dir).unwrap();
    let c = |s: &str| CString::new(s).unwrap();
    let (target, opts) = (c(dir.to_str().unwrap()), c(&format!("size={size}")));
    // SAFETY: unshare takes flags only.
    check(
        unsafe { libc::unshare(libc::CLONE_NEWNS) },
        "unshare(CLONE_NEWNS)",
    );
    // SAFETY: mount reads the NUL-terminated strings we pass, all alive for the call.
    unsafe {
        check(
            libc::mount(
                std::ptr::null(),
                c("/").as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "making / private",
        );
        check(
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                opts.as_ptr().cast(),
            ),
            "mounting the tmpfs",
        );
    }
    PrivateTmpfs(dir.to_owned())
}

#[test]
fn enospc_on_a_full_file_system_reaches_the_writer() {
    const NAME: &str = "write_limits::enospc_on_a_full_file_system_reaches_the_writer";
    if child_expectation(NAME).is_none() {
        // A child: it enters its own mount namespace (we run as root in CI and here).
        return run_in_child(NAME, &[]);
    }
    let dir = std::env::temp_dir().join(format!("aioctx-faults-tmpfs-{}", std::process::id()));
    let _tmpfs = private_tmpfs(&dir, "64k");
    for (backend, engine) in ENGINES {
        let what = format!("{backend:?}/{engine:?}");
        let ctx = tests::context(backend);
        let path = TempPath::in_dir(&dir, "enospc");
        ctx.block_on(async {
            let f = open(&path.0, engine).await;
            // Fill the file system 4 KiB at a time until the kernel refuses.
            let mut written = 0u64;
            let err = loop {
                // Each 4 KiB chunk its own seed, so a chunk in the wrong place shows.
                let seed = (written / 4096) as u8;
                let (res, _) = f.write_at(pattern(seed, 4096), written).await;
                match res {
                    Ok(0) => panic!("{what}: a write of 0 bytes at {written}"),
                    Ok(n) => written += n as u64,
                    Err(err) => break err,
                }
                assert!(
                    written <= 4 * LIMIT,
                    "{what}: the 64 KiB tmpfs took {written} bytes"
                );
            };
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{what}: {err}");
            assert!(
                written > 0 && written <= LIMIT,
                "{what}: {written} bytes fit"
            );
            let (res, _) = f.write_all_at(vec![1u8; 4096], written).await;
            assert_errno(
                res,
                libc::ENOSPC,
                &format!("{what}: write_all_at on a full fs"),
            );

            // What fit is intact; freeing space makes writes work again.
            let (res, data) = f.read_exact_at(vec![0u8; written as usize], 0).await;
            res.unwrap();
            for (i, chunk) in data.chunks(4096).enumerate() {
                assert_eq!(chunk, &pattern(i as u8, chunk.len())[..], "{what}");
            }
            f.set_len(0).await.unwrap();
            let (res, _) = f.write_all_at(vec![2u8; 8192], 0).await;
            res.unwrap();
        });
        drop(path);
        assert_context_serves(&ctx);
    }
}
