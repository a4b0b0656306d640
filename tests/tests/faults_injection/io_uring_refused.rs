//! io_uring unavailable at start: the probe forced to fail, and a real seccomp filter that makes
//! `io_uring_setup` fail with EPERM (as container runtimes' default profiles do). `Backend::Auto` falls back
//! to epoll, visibly; forcing io_uring (the backend or the block I/O engine) is an error that says why;
//! the fallback context serves BHs, timers, fds, tasks and block I/O.

use std::io;

use aioctx::fs::{File, IoEngine};
use aioctx::{AioContext, Backend};
use tests::{child_expectation, os_error, run_in_child};

use crate::common::assert_context_serves;
use tests::TempPath;

/// What a context whose io_uring was refused with `errno` must still do.
fn assert_falls_back(ctx: AioContext, errno: i32) {
    assert_eq!(ctx.backend(), Backend::Epoll, "the fallback is visible");
    assert_context_serves(&ctx);

    let path = TempPath::new("refused");
    ctx.block_on(async {
        // Auto picks the thread pool where there is no ring (not even a user-SQE ring).
        let f = File::create(&path.0).await.unwrap();
        assert_eq!(f.engine(), IoEngine::ThreadPool);
        let (res, _) = f.write_all_at(vec![0x5a; 8192], 4096).await;
        res.unwrap();
        let (res, buf) = f.read_exact_at(vec![0u8; 8192], 4096).await;
        res.unwrap();
        assert!(buf.iter().all(|&b| b == 0x5a));

        let err = File::options()
            .read(true)
            .engine(IoEngine::IoUring)
            .open(&path.0)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
    });

    let err = AioContext::builder()
        .backend(Backend::IoUring)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("io_uring unavailable"), "{err}");
    assert_eq!(os_error(&err), Some(errno), "{err}");
}

#[test]
fn probe_forced_to_fail_falls_back_to_epoll_and_serves() {
    for errno in [libc::EPERM, libc::ENOSYS, libc::ENOMEM] {
        let ctx = AioContext::builder()
            .simulate_io_uring_unavailable(errno)
            .build()
            .unwrap();
        assert_eq!(ctx.backend(), Backend::Epoll);
        assert_context_serves(&ctx);
        let err = AioContext::builder()
            .backend(Backend::IoUring)
            .simulate_io_uring_unavailable(errno)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("io_uring unavailable"), "{err}");
    }
}

/// The x86_64 audit architecture (`AUDIT_ARCH_X86_64` in linux/audit.h).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Set on syscall numbers of the x32 ABI, which shares the x86_64 audit architecture.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[cfg(target_arch = "x86_64")]
fn bpf(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Installs, on every thread of this process, a seccomp filter under which `io_uring_setup` fails with
/// EPERM and every other syscall is allowed.
#[cfg(target_arch = "x86_64")]
fn refuse_io_uring_setup() {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let setup = libc::SYS_io_uring_setup as u32;
    // Offsets into struct seccomp_data: nr at 0, arch at 4.
    let mut filter = [
        bpf(BPF_LD | BPF_W | BPF_ABS, 0, 0, 4),
        // Another architecture's numbers mean other syscalls: allow (jump to the last-but-one).
        bpf(BPF_JMP | BPF_JEQ | BPF_K, 0, 3, AUDIT_ARCH_X86_64),
        bpf(BPF_LD | BPF_W | BPF_ABS, 0, 0, 0),
        bpf(BPF_JMP | BPF_JEQ | BPF_K, 2, 0, setup),
        bpf(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, setup | X32_SYSCALL_BIT),
        bpf(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        bpf(
            BPF_RET | BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA),
        ),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_NO_NEW_PRIVS: {}", io::Error::last_os_error());
    // SAFETY: `prog` points at `filter`, both alive for the call; the kernel copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &prog as *const libc::sock_fprog,
        )
    };
    assert_eq!(r, 0, "seccomp: {}", io::Error::last_os_error());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn seccomp_refusing_io_uring_setup_falls_back_to_epoll() {
    const NAME: &str = "io_uring_refused::seccomp_refusing_io_uring_setup_falls_back_to_epoll";
    if child_expectation(NAME).is_none() {
        // A child: a seccomp filter cannot be removed again.
        return run_in_child(NAME, &[]);
    }
    refuse_io_uring_setup();
    // The filter really is there: a raw io_uring_setup fails with EPERM.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes a struct io_uring_params (120 bytes) we own.
    let r = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
    assert_eq!(r, -1);
    assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EPERM));

    assert_falls_back(AioContext::new().unwrap(), libc::EPERM);
    // An IOThread (Auto as well) comes up on the fallback and runs tasks and timers.
    let io = aioctx::IoThread::spawn("refused").unwrap();
    let out = io
        .remote()
        .spawn(async {
            aioctx::time::sleep(std::time::Duration::from_micros(100)).await;
            5
        })
        .join_blocking();
    assert_eq!(out.unwrap(), 5);
}
