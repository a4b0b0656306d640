//! The io_uring fd monitor: user SQEs (QEMU's aio_add_sqe), batching, handler removal with a POLL_ADD in
//! flight, the probe and its fallback, and the statistics it adds.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use aioctx::io_uring::{opcode, types};
use aioctx::{AioContext, Backend, EventNotifier, FdHandlers, PollParams, SqeCompletion};
use tests::per_backend;

fn uring() -> AioContext {
    AioContext::builder()
        .backend(Backend::IoUring)
        .build()
        .expect("io_uring must be available here")
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(ret, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both fds are fresh and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Polls until `done` or a generous deadline; a hang is a lost completion.
fn poll_until(ctx: &AioContext, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for completions"
        );
        ctx.poll(true);
    }
}

#[test]
fn auto_picks_io_uring_here_and_forced_backend_is_reported() {
    let ctx = AioContext::builder()
        .backend(Backend::Auto)
        .build()
        .unwrap();
    // This machine's kernel allows io_uring (CI runs on the same kind), unless AIOCTX_BACKEND says otherwise.
    if std::env::var_os("AIOCTX_BACKEND").is_none() {
        assert_eq!(ctx.backend(), Backend::IoUring);
    }
    assert_eq!(uring().backend(), Backend::IoUring);
}

#[test]
fn nop_completes_in_dispatch_not_inline() {
    let ctx = uring();
    let got: Rc<Cell<Option<SqeCompletion>>> = Rc::default();
    // SAFETY: NOP references no memory.
    unsafe {
        ctx.add_sqe(opcode::Nop::new().build(), {
            let g = got.clone();
            move |c| g.set(Some(c))
        })
    }
    .unwrap();
    assert!(
        got.get().is_none(),
        "the callback never runs inside add_sqe"
    );
    assert!(ctx.poll(true), "a completion is progress");
    assert_eq!(got.get().map(|c| c.result), Some(0));
    assert!(!ctx.poll(false));
    let s = ctx.stats();
    assert!(
        s.sqes_submitted >= 1 && s.cqes_reaped >= 1 && s.uring_enters >= 1,
        "{s:?}"
    );
}

#[test]
fn completion_callbacks_run_before_bhs() {
    let ctx = uring();
    let order = Rc::new(RefCell::new(Vec::new()));
    let bh = ctx.bh({
        let o = order.clone();
        move || o.borrow_mut().push("bh")
    });
    // SAFETY: NOP references no memory.
    unsafe {
        ctx.add_sqe(opcode::Nop::new().build(), {
            let o = order.clone();
            move |_| o.borrow_mut().push("cqe")
        })
    }
    .unwrap();
    // Let the NOP complete in the kernel before the BH is scheduled, so both are due in one iteration.
    let n = EventNotifier::new().unwrap();
    let _r = ctx.set_event_notifier(&n, || {}, None).unwrap();
    while ctx.stats().cqes_reaped == 0 {
        ctx.poll(false);
    }
    assert_eq!(*order.borrow(), ["cqe"]);
    order.borrow_mut().clear();
    // SAFETY: NOP references no memory.
    unsafe {
        ctx.add_sqe(opcode::Nop::new().build(), {
            let o = order.clone();
            move |_| o.borrow_mut().push("cqe")
        })
    }
    .unwrap();
    ctx.poll(false); // submits; the NOP's CQE is posted inline by the kernel
    bh.schedule();
    poll_until(&ctx, || order.borrow().len() == 2);
    assert_eq!(*order.borrow(), ["cqe", "bh"]);
}

#[test]
fn read_on_a_pipe_completes_when_data_arrives() {
    let ctx = uring();
    let (rd, wr) = pipe();
    let buf = vec![0u8; 16].into_boxed_slice();
    let ptr = buf.as_ptr() as *mut u8;
    type ReadResult = Option<(i32, Box<[u8]>)>;
    let got: Rc<RefCell<ReadResult>> = Rc::default();
    let sqe = opcode::Read::new(types::Fd(rd.as_raw_fd()), ptr, 16).build();
    // SAFETY: the buffer moves into the callback, which the context keeps until the CQE arrives.
    unsafe {
        ctx.add_sqe(sqe, {
            let got = got.clone();
            move |c| *got.borrow_mut() = Some((c.result, buf))
        })
    }
    .unwrap();
    assert!(!ctx.poll(false), "nothing to read yet");
    // SAFETY: writes 5 bytes from a static string to the pipe.
    let n = unsafe { libc::write(wr.as_raw_fd(), b"hello".as_ptr().cast(), 5) };
    assert_eq!(n, 5);
    poll_until(&ctx, || got.borrow().is_some());
    let (res, buf) = got.borrow_mut().take().unwrap();
    assert_eq!(res, 5);
    assert_eq!(&buf[..5], b"hello");
}

#[test]
fn timeout_sqe_and_sqes_queued_from_completion_callbacks() {
    let ctx = Rc::new(uring());
    let results = Rc::new(RefCell::new(Vec::new()));
    let ts = Box::new(types::Timespec::new().nsec(200_000));
    let ts_ptr: *const types::Timespec = &*ts;
    let start = Instant::now();
    let sqe = opcode::Timeout::new(ts_ptr).build();
    // SAFETY: the timespec moves into the callback and lives until the CQE.
    unsafe {
        ctx.add_sqe(sqe, {
            let (ctx, results) = (Rc::downgrade(&ctx), results.clone());
            move |c| {
                let _keep = ts;
                results.borrow_mut().push(c.result);
                // Chain a NOP from inside the completion callback.
                let ctx = ctx.upgrade().unwrap();
                let results = results.clone();
                // SAFETY (covered by the enclosing block): NOP references no memory.
                ctx.add_sqe(opcode::Nop::new().build(), move |c| {
                    results.borrow_mut().push(c.result)
                })
                .unwrap();
            }
        })
    }
    .unwrap();
    poll_until(&ctx, || results.borrow().len() == 2);
    assert_eq!(*results.borrow(), [-libc::ETIME, 0]);
    assert!(start.elapsed() >= Duration::from_micros(200));
}

#[test]
fn more_sqes_than_the_ring_holds_all_complete() {
    let ctx = AioContext::builder()
        .backend(Backend::IoUring)
        .ring_entries(8)
        .build()
        .unwrap();
    let done = Rc::new(Cell::new(0u32));
    const N: u32 = 1000;
    for _ in 0..N {
        // SAFETY: NOP references no memory.
        unsafe {
            ctx.add_sqe(opcode::Nop::new().build(), {
                let d = done.clone();
                move |_| d.set(d.get() + 1)
            })
        }
        .unwrap();
    }
    poll_until(&ctx, || done.get() == N);
    assert!(!ctx.poll(false));
    assert!(ctx.stats().sqes_submitted >= u64::from(N));
}

#[test]
fn max_batch_submits_early() {
    let ctx = AioContext::builder()
        .backend(Backend::IoUring)
        .max_batch(4)
        .build()
        .unwrap();
    let before = ctx.stats().uring_enters;
    for _ in 0..8 {
        // SAFETY: NOP references no memory.
        unsafe { ctx.add_sqe(opcode::Nop::new().build(), |_| {}) }.unwrap();
    }
    assert_eq!(
        ctx.stats().uring_enters - before,
        2,
        "one io_uring_enter per 4 SQEs, before any wait"
    );
    let s = ctx.stats();
    assert!(s.sqes_submitted >= 8, "{s:?}");
}

#[test]
fn sqes_batch_into_one_enter_at_the_next_wait() {
    let ctx = uring();
    ctx.poll(false);
    let before = ctx.stats();
    let done = Rc::new(Cell::new(0));
    for _ in 0..16 {
        // SAFETY: NOP references no memory.
        unsafe {
            ctx.add_sqe(opcode::Nop::new().build(), {
                let d = done.clone();
                move |_| d.set(d.get() + 1)
            })
        }
        .unwrap();
    }
    assert_eq!(
        ctx.stats().uring_enters,
        before.uring_enters,
        "nothing is submitted until the loop waits"
    );
    ctx.poll(true);
    let after = ctx.stats();
    assert_eq!(
        after.uring_enters - before.uring_enters,
        1,
        "one enter submits all 16 and waits"
    );
    assert_eq!(done.get(), 16);
}

per_backend! {
    #[backends(epoll, poll)]
    /// On epoll and poll, user SQEs go on a user-SQE ring watched by the context; they fail only when the
    /// kernel refuses io_uring. (On io_uring they go on the context's own ring: the tests above.)
    fn add_sqe_on_epoll_and_poll_uses_a_user_sqe_ring(backend) {
        let ctx = AioContext::builder().backend(backend).build().unwrap();
        let done = Rc::new(Cell::new(0));
        for _ in 0..3 {
            // SAFETY: NOP references no memory.
            unsafe {
                ctx.add_sqe(opcode::Nop::new().build(), {
                    let d = done.clone();
                    move |c| {
                        assert_eq!(c.result, 0);
                        d.set(d.get() + 1)
                    }
                })
            }
            .unwrap();
        }
        poll_until(&ctx, || done.get() == 3);
        assert_eq!(ctx.backend(), backend, "the fd monitor stays what it was");

        let (rd, wr) = pipe();
        let got = Rc::new(Cell::new(None));
        let buf = vec![0u8; 8].into_boxed_slice();
        let sqe = opcode::Read::new(types::Fd(rd.as_raw_fd()), buf.as_ptr() as *mut u8, 8).build();
        // SAFETY: the buffer moves into the callback.
        unsafe {
            ctx.add_sqe(sqe, {
                let got = got.clone();
                move |c| {
                    got.set(Some(c.result));
                    drop(buf)
                }
            })
        }
        .unwrap();
        ctx.poll(false);
        // SAFETY: writes 3 bytes from a static string.
        assert_eq!(
            unsafe { libc::write(wr.as_raw_fd(), b"abc".as_ptr().cast(), 3) },
            3
        );
        poll_until(&ctx, || got.get().is_some());
        assert_eq!(got.get(), Some(3));

        let refused = AioContext::builder()
            .backend(backend)
            .simulate_io_uring_unavailable(libc::EPERM)
            .build()
            .unwrap();
        // SAFETY: NOP references no memory.
        let err = unsafe { refused.add_sqe(opcode::Nop::new().build(), |_| panic!("never runs")) }
            .unwrap_err();
        assert!(err.to_string().contains("io_uring unavailable"), "{err}");
        assert!(!refused.poll(false));
    }
}

#[test]
fn handler_removed_while_its_poll_add_is_in_flight() {
    let ctx = uring();
    let n = EventNotifier::new().unwrap();
    let runs = Rc::new(Cell::new(0));
    let reg = ctx
        .set_fd_handler(
            n.as_raw_fd(),
            FdHandlers::new().read({
                let r = runs.clone();
                move || r.set(r.get() + 1)
            }),
        )
        .unwrap();
    // The POLL_ADD goes to the kernel and stays armed.
    assert!(!ctx.poll(false));
    drop(reg);
    // The fd becomes ready after removal was queued: its handler must not run, the slot is freed when the
    // POLL_ADD completes, and a new registration of the same fd works.
    n.set().unwrap();
    for _ in 0..5 {
        ctx.poll(false);
    }
    assert_eq!(runs.get(), 0);
    let again = Rc::new(Cell::new(0));
    let _reg = ctx
        .set_fd_handler(
            n.as_raw_fd(),
            FdHandlers::new().read({
                let (n, a) = (n.clone(), again.clone());
                move || {
                    n.test_and_clear().unwrap();
                    a.set(a.get() + 1)
                }
            }),
        )
        .unwrap();
    poll_until(&ctx, || again.get() == 1);
    assert_eq!(runs.get(), 0);
}

#[test]
fn level_triggered_readiness_is_reported_again_until_consumed() {
    let ctx = uring();
    let n = EventNotifier::new().unwrap();
    let runs = Rc::new(Cell::new(0));
    let _reg = ctx
        .set_fd_handler(
            n.as_raw_fd(),
            FdHandlers::new().read({
                let r = runs.clone();
                move || r.set(r.get() + 1)
            }),
        )
        .unwrap();
    n.set().unwrap();
    poll_until(&ctx, || runs.get() == 3); // not consumed: the re-armed POLL_ADD fires again
    n.test_and_clear().unwrap();
    let settled = runs.get();
    for _ in 0..3 {
        ctx.poll(false);
    }
    assert!(
        runs.get() <= settled + 1,
        "at most the poll already in flight fires after consuming"
    );
}

#[test]
fn polling_submits_queued_sqes_and_peeks_the_cq_without_sleeping() {
    let ctx = Rc::new(
        AioContext::builder()
            .backend(Backend::IoUring)
            .poll_params(PollParams {
                max_ns: 10_000_000_000,
                grow: 0,
                shrink: 0,
                weight: 0,
                min_hit_percent: 0,
            })
            .build()
            .unwrap(),
    );
    // A polled handler whose window grows after a few quick wakeups.
    let n = EventNotifier::new().unwrap();
    let _reg = ctx
        .set_fd_handler(
            n.as_raw_fd(),
            FdHandlers::new()
                .read({
                    let n = n.clone();
                    move || {
                        n.test_and_clear().unwrap();
                    }
                })
                .poll(|| false, || {}),
        )
        .unwrap();
    for _ in 0..4 {
        n.set().unwrap();
        ctx.poll(true);
    }
    // Now queue a NOP and poll: the SQE must go out before polling, and its CQE be found by peeking.
    let before = ctx.stats();
    let done = Rc::new(Cell::new(false));
    // SAFETY: NOP references no memory.
    unsafe {
        ctx.add_sqe(opcode::Nop::new().build(), {
            let d = done.clone();
            move |_| d.set(true)
        })
    }
    .unwrap();
    poll_until(&ctx, || done.get());
    let after = ctx.stats();
    assert!(
        after.cq_peek_hits > before.cq_peek_hits,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after.blocking_waits, before.blocking_waits,
        "the loop never slept for the NOP"
    );
}

#[test]
fn dropping_the_context_with_reads_in_flight_waits_for_their_cqes() {
    let (rd, _wr) = pipe();
    let dropped = Rc::new(Cell::new(0));
    struct Owner(Box<[u8]>, Rc<Cell<i32>>);
    impl Drop for Owner {
        fn drop(&mut self) {
            self.1.set(self.1.get() + 1);
        }
    }
    let ctx = uring();
    for _ in 0..4 {
        let owner = Owner(vec![0u8; 64].into_boxed_slice(), dropped.clone());
        let ptr = owner.0.as_ptr() as *mut u8;
        let sqe = opcode::Read::new(types::Fd(rd.as_raw_fd()), ptr, 64).build();
        // SAFETY: the buffer's owner moves into the callback.
        unsafe { ctx.add_sqe(sqe, move |_| drop(owner)) }.unwrap();
    }
    ctx.poll(false); // the reads are in the kernel now, blocked on the empty pipe
    drop(ctx); // cancels them and waits for their CQEs before dropping the buffers
    assert_eq!(dropped.get(), 4);
}

#[test]
fn max_batch_set_on_a_running_iothread_submits_early() {
    let io = aioctx::IoThread::builder()
        .backend(Backend::IoUring)
        .spawn()
        .unwrap();
    // Eight NOPs queued in one go (one call on the IOThread, no wait in between): how many
    // io_uring_enter calls they cost before the loop waits again.
    let enters_for_eight = |io: &aioctx::IoThread| {
        io.remote()
            .call(|| {
                aioctx::with_current(|ctx| {
                    let before = ctx.stats().uring_enters;
                    for _ in 0..8 {
                        // SAFETY: NOP references no memory.
                        unsafe { ctx.add_sqe(opcode::Nop::new().build(), |_| {}) }.unwrap();
                    }
                    ctx.stats().uring_enters - before
                })
            })
            .unwrap()
    };
    assert_eq!(io.max_batch().unwrap(), 0);
    assert_eq!(
        enters_for_eight(&io),
        0,
        "max_batch 0: submitted at the next wait"
    );
    io.set_max_batch(4).unwrap();
    assert_eq!(io.max_batch().unwrap(), 4);
    assert_eq!(enters_for_eight(&io), 2, "one io_uring_enter per 4 SQEs");
    io.set_max_batch(0).unwrap();
    assert_eq!(enters_for_eight(&io), 0);
    io.stop();
}
