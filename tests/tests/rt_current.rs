//! `aioctx::with_current` / `try_with_current`: code running on a context's thread reaches that
//! context's callback API (QEMU's `qemu_get_current_aio_context()`), on an IoThread too, and a nested
//! context is the current one while it runs.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use aioctx::io_uring::opcode;
use aioctx::time::Clock;
use aioctx::{AioContext, EventNotifier, FdHandlers, IoThread};
use tests::per_backend;

per_backend! {
    /// A task on an IoThread creates a BH, a timer, an fd handler, an event notifier registration and
    /// a user SQE on its own loop through `with_current`, and each of them fires there.
    fn a_task_on_an_iothread_creates_every_kind_of_source_on_its_own_loop(backend) {
        let io = IoThread::builder()
            .name("current")
            .backend(backend)
            .spawn()
            .unwrap();
        let io_thread = io.thread_id();
        let report = io.remote().spawn_local_with(move || async move {
            let fired = Rc::new(Cell::new(0u32));
            let bump = |fired: &Rc<Cell<u32>>| {
                let fired = fired.clone();
                move || fired.set(fired.get() + 1)
            };
            let (tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
            let kick = EventNotifier::new().unwrap();
            let sqe_done = Rc::new(Cell::new(None));
            let (bh, timer, _fd_reg, _kick_reg, remote) = aioctx::with_current(|ctx| {
                assert_eq!(ctx.backend(), backend, "the current context is the IoThread's");
                let bh = ctx.bh(bump(&fired));
                let timer = ctx.timer(Clock::Realtime, bump(&fired));
                let fd_reg = ctx
                    .set_fd_handler(rx.as_raw_fd(), FdHandlers::new().read({
                        let (fired, rx) = (fired.clone(), rx.try_clone().unwrap());
                        move || {
                            let mut byte = [0u8; 1];
                            if std::io::Read::read(&mut &rx, &mut byte).unwrap_or(0) == 1 {
                                fired.set(fired.get() + 1);
                            }
                        }
                    }))
                    .unwrap();
                let kick_reg = ctx
                    .set_event_notifier(&kick, {
                        let (fired, kick) = (fired.clone(), kick.clone());
                        move || {
                            if kick.test_and_clear().unwrap() {
                                fired.set(fired.get() + 1);
                            }
                        }
                    }, None)
                    .unwrap();
                // SAFETY: a NOP points at no memory.
                unsafe {
                    ctx.add_sqe(opcode::Nop::new().build(), {
                        let done = sqe_done.clone();
                        move |c| done.set(Some(c.result))
                    })
                }
                .unwrap();
                (bh, timer, fd_reg, kick_reg, ctx.remote())
            });
            bh.schedule();
            timer.arm_after(Duration::from_micros(100));
            std::io::Write::write_all(&mut &tx, b"x").unwrap();
            kick.set().unwrap();
            while fired.get() < 4 || sqe_done.get().is_none() {
                aioctx::time::sleep(Duration::from_micros(50)).await;
            }
            // SAFETY: gettid takes no arguments and cannot fail.
            let tid = unsafe { libc::gettid() };
            (fired.get(), sqe_done.get(), remote.is_home_thread(), tid, remote.stats().bhs_run)
        });
        let (fired, sqe, home, tid, bhs_run) = report.join_blocking().unwrap();
        assert_eq!(fired, 4, "BH, timer, fd handler and notifier each ran once");
        assert_eq!(sqe, Some(0), "the NOP completed on that loop");
        assert!(home, "its remote is the IoThread's");
        assert_eq!(tid, io_thread, "all of it ran on the IoThread");
        assert!(bhs_run >= 1);
    }

    /// `block_on` inside a callback of another context: the inner one is current until it returns,
    /// then the outer one again.
    fn a_nested_context_is_current_while_it_runs(backend) {
        let outer = tests::context(backend);
        let outer_remote = outer.remote();
        let seen = Rc::new(Cell::new((false, false, false)));
        outer.bh_oneshot({
            let seen = seen.clone();
            move || {
                let before = aioctx::with_current(|ctx| same_context(ctx, &outer_remote));
                let inner = tests::context(backend);
                let during = inner.block_on(async {
                    aioctx::with_current(|ctx| same_context(ctx, &outer_remote))
                });
                let after = aioctx::with_current(|ctx| same_context(ctx, &outer_remote));
                seen.set((before, !during, after));
            }
        });
        outer.poll(false);
        assert_eq!(seen.get(), (true, true, true), "outer, then inner, then outer again");
    }
}

/// Whether `ctx` is the context behind `remote`: a one-shot scheduled through the remote runs when
/// `ctx` polls.
fn same_context(ctx: &AioContext, remote: &aioctx::Remote) -> bool {
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    remote.schedule_oneshot({
        let ran = ran.clone();
        move || ran.store(true, std::sync::atomic::Ordering::SeqCst)
    });
    ctx.poll(false);
    ran.load(std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn outside_a_context_try_with_current_is_none_and_with_current_says_what_to_do() {
    assert!(aioctx::try_with_current(|_| ()).is_none());
    let panic = std::panic::catch_unwind(|| aioctx::with_current(|_| ())).unwrap_err();
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap();
    assert!(
        message.contains("outside an aioctx context") && message.contains("try_with_current"),
        "{message}"
    );
}
