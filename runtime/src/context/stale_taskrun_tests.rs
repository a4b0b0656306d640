//! A stale TASKRUN flag must not make the loop spin.
//!
//! With `DEFER_TASKRUN | TASKRUN_FLAG`, the kernel publishes a completion as task work and only then
//! raises `IORING_SQ_TASKRUN`. If the home thread's enter runs (and empties) the work list in between,
//! the flag stays raised with nothing behind it until the next task work runs. CI once caught the loop
//! taking that flag for "completions are ready, do not sleep": it spun on zero-timeout enters, which do
//! not clear the flag, until another completion happened to arrive. The race cannot be forced, so these
//! tests put the ring in the same state by raising the flag through a second mapping of the SQ ring,
//! as the kernel would have left it.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::timers::Clock;
use crate::{AioContext, Backend};

/// `IORING_SQ_TASKRUN` in the SQ ring's flags word.
const SQ_TASKRUN: u32 = 1 << 2;

/// `struct io_uring_params` (120 bytes), of which only `sq_off.flags` is read.
#[repr(C)]
#[derive(Default)]
struct SetupParams {
    head: [u32; 10],
    /// `struct io_sqring_offsets`: head, tail, ring_mask, ring_entries, flags, dropped, array, resv1,
    /// user_addr (u64).
    sq_off: [u32; 10],
    cq_off: [u32; 10],
}

/// The offset of the flags word in an SQ ring mapping. It is fixed per kernel, so a throwaway ring
/// reports it.
fn sq_flags_offset() -> usize {
    let mut params = SetupParams::default();
    // SAFETY: `params` is a writable, zeroed struct of the size of `io_uring_params`, which the kernel
    // reads and fills; the fd it returns is ours and closed below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            1u32,
            &mut params as *mut SetupParams,
        )
    };
    assert!(
        fd >= 0,
        "io_uring_setup: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just returned to us and nothing else owns it.
    unsafe { libc::close(fd as RawFd) };
    params.sq_off[4] as usize
}

/// Raises `IORING_SQ_TASKRUN` in the ring behind `ring_fd` and returns whether the bit reads back set.
fn raise_stale_taskrun(ring_fd: RawFd) -> bool {
    let offset = sq_flags_offset();
    let len = offset + std::mem::size_of::<u32>();
    // SAFETY: a shared read-write mapping of the live ring's SQ ring (offset 0 is IORING_OFF_SQ_RING),
    // as liburing maps it; `len` stays within that ring because the flags word is part of it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            ring_fd,
            0,
        )
    };
    assert_ne!(
        base,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `offset` is inside the mapping and 4-byte aligned (the kernel's `atomic_t sq_flags`); the
    // kernel updates the word atomically, so it is only touched through an atomic here.
    let flags = unsafe { &*(base.cast::<u8>().add(offset).cast::<AtomicU32>()) };
    flags.fetch_or(SQ_TASKRUN, Ordering::SeqCst);
    let raised = flags.load(Ordering::SeqCst) & SQ_TASKRUN != 0;
    // SAFETY: `base`/`len` are the mapping made above; `flags` is not used after this.
    unsafe { libc::munmap(base, len) };
    raised
}

/// Raises a stale flag, then polls until a timer 20 ms away fires. Returns whether one of the
/// blocking iterations slept; fails if the loop spun.
fn sleeps_until_a_timer_fires(ctx: &AioContext) -> bool {
    let waits = ctx.stats().blocking_waits;
    let fired = Rc::new(Cell::new(false));
    let f = fired.clone();
    let timer = ctx.timer(Clock::Realtime, move || f.set(true));
    timer.arm_after(Duration::from_millis(20));
    let ring_fd = ctx
        .home()
        .monitor
        .borrow()
        .uring_fd()
        .expect("an io_uring monitor");
    assert!(
        raise_stale_taskrun(ring_fd),
        "the TASKRUN flag did not stick"
    );
    let mut iterations = 0;
    while !fired.get() && iterations < 1_000 {
        ctx.poll(true);
        iterations += 1;
    }
    assert!(
        fired.get(),
        "the timer did not fire in {iterations} blocking polls: the loop spun"
    );
    // One sleep until the deadline; a signal or an early kernel return may add one or two.
    assert!(iterations <= 4, "{iterations} iterations for one timer");
    ctx.stats().blocking_waits > waits
}

/// The loop sleeps despite a stale flag. A round whose timer was due before the first poll (a
/// stalled test thread) legitimately does not sleep, so it is retried.
fn sleeps_despite_a_stale_flag(ctx: &AioContext) {
    let slept = (0..5).any(|_| sleeps_until_a_timer_fires(ctx));
    assert!(slept, "no round slept");
}

#[test]
fn a_stale_taskrun_flag_does_not_make_an_idle_loop_spin() {
    let ctx = AioContext::builder()
        .backend(Backend::IoUring)
        .build()
        .unwrap();
    sleeps_despite_a_stale_flag(&ctx);
}

#[test]
fn a_stale_taskrun_flag_does_not_make_a_polling_loop_spin() {
    let ctx = AioContext::builder()
        .backend(Backend::IoUring)
        .poll_max_ns(32_768)
        .build()
        .unwrap();
    sleeps_despite_a_stale_flag(&ctx);
}
