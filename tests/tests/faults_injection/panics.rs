//! A panic in a callback propagates out of `poll`/`block_on` (a task's panic is contained in its
//! JoinHandle instead); the context stays consistent: the work that was due and had not run yet runs at the
//! next iteration, which does not sleep while such work is pending; the panicking BH, timer or handler
//! can be used again; nothing is left borrowed, locked or announced.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use aioctx::io_uring::opcode;
use aioctx::time::Clock;
use aioctx::{EventNotifier, FdHandlers, PollParams};
use tests::{counting_notifier, per_backend, Guard};

use crate::common::{assert_context_serves, counter};

/// Runs `f`, which must panic with `message`.
fn expect_panic<R>(message: &str, f: impl FnOnce() -> R) {
    let payload = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(_) => panic!("expected a panic with {message:?}, got none"),
        Err(payload) => payload,
    };
    let got = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<not a string>");
    assert_eq!(got, message, "the callback's own panic propagates");
}

/// A callback that panics with `message` the first time it runs and counts every run.
fn panics_once(message: &'static str) -> (impl Fn() + 'static, Rc<Cell<u32>>) {
    let runs = Rc::new(Cell::new(0));
    let r = runs.clone();
    let f = move || {
        r.set(r.get() + 1);
        if r.get() == 1 {
            panic!("{message}");
        }
    };
    (f, runs)
}

per_backend! {
    fn panic_in_a_bh_keeps_the_rest_of_its_slice(backend) {
        let ctx = tests::context(backend);
        let guard = Guard::new(&ctx);
        let log = Rc::new(RefCell::new(Vec::new()));
        let logger = |name: &'static str| {
            let log = log.clone();
            move || log.borrow_mut().push(name)
        };
        let first = ctx.bh(logger("first"));
        let (bad_fn, bad_runs) = panics_once("bh boom");
        let bad = ctx.bh(bad_fn);
        let last = ctx.bh(logger("last"));
        ctx.bh_oneshot(logger("oneshot"));
        first.schedule();
        bad.schedule();
        last.schedule();
        let remote_ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = remote_ran.clone();
        ctx.remote().schedule_oneshot(move || r.store(true, std::sync::atomic::Ordering::SeqCst));

        expect_panic("bh boom", || ctx.poll(false));
        assert_eq!(bad_runs.get(), 1);
        // The rest of the slice runs at the next iteration, even a blocking one: it must not sleep.
        ctx.poll(true);
        assert!(!guard.expired(), "a blocking poll slept with BHs of the slice pending");
        let mut ran = log.borrow().clone();
        ran.sort_unstable();
        assert_eq!(ran, ["first", "last", "oneshot"], "each BH of the slice ran exactly once");
        assert!(remote_ran.load(std::sync::atomic::Ordering::SeqCst));

        // The panicking BH is intact and can run again.
        bad.schedule();
        assert!(ctx.poll(false));
        assert_eq!(bad_runs.get(), 2);
        assert!(!ctx.poll(false), "nothing left over");
        assert_context_serves(&ctx);
    }

    fn panic_in_a_timer_keeps_later_timers_in_order(backend) {
        let ctx = tests::context(backend);
        let fired = Rc::new(RefCell::new(Vec::new()));
        let now = ctx.now_ns(Clock::Realtime);
        let timers: Vec<_> = (0..5u32)
            .map(|i| {
                let fired = fired.clone();
                let t = ctx.timer(Clock::Realtime, move || {
                    fired.borrow_mut().push(i);
                    if i == 2 && fired.borrow().iter().filter(|&&x| x == 2).count() == 1 {
                        panic!("timer boom");
                    }
                });
                t.arm_ns(now + 1_000 * i64::from(i + 1));
                t
            })
            .collect();
        let last_deadline = now + 5_000;
        tests::spin_until("all five deadlines pass", || ctx.now_ns(Clock::Realtime) > last_deadline);

        expect_panic("timer boom", || ctx.poll(false));
        assert_eq!(*fired.borrow(), [0, 1, 2], "timers fire in deadline order up to the panic");
        ctx.poll(false);
        assert_eq!(*fired.borrow(), [0, 1, 2, 3, 4], "the later timers fire next, in order");
        let guard = Guard::new(&ctx);
        assert!(timers.iter().all(|t| !t.is_pending()));

        // The panicking timer can be armed again.
        timers[2].arm_after(Duration::from_micros(50));
        guard.poll_until(&ctx, "the re-armed timer", || fired.borrow().len() == 6);
        assert_eq!(fired.borrow()[5], 2);
        assert_context_serves(&ctx);
    }

    fn panic_in_an_fd_handler_keeps_the_handler_list(backend) {
        let ctx = tests::context(backend);
        let guard = Guard::new(&ctx);
        let bad = EventNotifier::new().unwrap();
        let (bad_fn, bad_runs) = panics_once("handler boom");
        let bad_reg = ctx
            .set_event_notifier(&bad, {
                let bad = bad.clone();
                move || {
                    bad.test_and_clear().unwrap();
                    bad_fn();
                }
            }, None)
            .unwrap();
        let good: Vec<_> = (0..4).map(|_| counting_notifier(&ctx)).collect();
        bad.set().unwrap();
        for (n, _, _) in &good {
            n.set().unwrap();
        }

        expect_panic("handler boom", || {
            for _ in 0..100 {
                ctx.poll(true);
            }
        });
        // Handlers ready in the same iteration but not dispatched yet are reported again (readiness is
        // level-triggered on every backend) and run at the next iterations.
        guard.poll_until(&ctx, "the other ready handlers", || {
            good.iter().all(|(_, _, kicks)| kicks.get() == 1)
        });
        assert_eq!(bad_runs.get(), 1);

        // The panicking handler is still registered and works; removing it works too.
        bad.set().unwrap();
        guard.poll_until(&ctx, "the panicking handler again", || bad_runs.get() == 2);
        drop(bad_reg);
        bad.set().unwrap();
        for (n, _, _) in &good {
            n.set().unwrap();
        }
        guard.poll_until(&ctx, "the remaining handlers", || {
            good.iter().all(|(_, _, kicks)| kicks.get() == 2)
        });
        assert_eq!(bad_runs.get(), 2, "a removed handler does not run");
        drop(good);
        assert_context_serves(&ctx);
    }

    fn panic_in_poll_callbacks_leaves_polling_consistent(backend) {
        let ctx = tests::context(backend);
        ctx.set_poll_params(PollParams { max_ns: 1_000_000, grow: 0, shrink: 0, weight: 0, min_hit_percent: 0 }).unwrap();
        let n = EventNotifier::new().unwrap();
        let work = Rc::new(Cell::new(0u32));
        let (ready_fn, ready_runs) = panics_once("poll_ready boom");
        let (end_fn, end_runs) = panics_once("poll_end boom");
        let (begin_fn, _) = counter();
        let handlers = FdHandlers::new()
            .read({
                let n = n.clone();
                move || {
                    n.test_and_clear().unwrap();
                }
            })
            .poll(
                {
                    let work = work.clone();
                    move || work.get() > 0
                },
                {
                    let work = work.clone();
                    move || {
                        work.set(work.get() - 1);
                        ready_fn();
                    }
                },
            )
            .poll_begin_end(begin_fn, end_fn);
        let _reg = ctx.set_fd_handler(std::os::fd::AsRawFd::as_raw_fd(&n), handlers).unwrap();

        // poll_ready panics: in_poll_ready must be cleared, or the handler would never be polled again.
        work.set(1);
        expect_panic("poll_ready boom", || {
            for _ in 0..100 {
                ctx.poll(false);
            }
        });
        work.set(1);
        for _ in 0..100 {
            if ready_runs.get() == 2 {
                break;
            }
            ctx.poll(false);
        }
        assert_eq!(ready_runs.get(), 2, "the handler is polled again after its panic");

        // Quick fd wakeups grow the handler's poll window until the loop polls before blocking; poll_end
        // then runs when it leaves poll mode to block, after it announced the wait, and panics.
        let timer = ctx.timer(Clock::Realtime, || {});
        expect_panic("poll_end boom", || {
            for _ in 0..100 {
                n.set().unwrap();
                ctx.poll(true);
                // Nothing ready (io_uring does not poll in userspace while a CQE waits): poll, then block.
                timer.arm_after(Duration::from_millis(2));
                ctx.poll(true);
            }
        });
        assert_eq!(end_runs.get(), 1);
        ctx.set_poll_params(PollParams::default()).unwrap();
        assert_context_serves(&ctx);
    }

    fn panic_in_a_completion_callback_keeps_the_other_completions(backend) {
        let ctx = tests::context(backend);
        let guard = Guard::new(&ctx);
        let (ok_fn, ok_runs) = counter();
        for i in 0..4 {
            let ok_fn = ok_fn.clone();
            // SAFETY: a NOP points at no memory.
            unsafe {
                ctx.add_sqe(opcode::Nop::new().build(), move |c| {
                    assert_eq!(c.result, 0);
                    if i == 1 {
                        panic!("completion boom");
                    }
                    ok_fn();
                })
            }
            .unwrap();
        }
        expect_panic("completion boom", || {
            for _ in 0..100 {
                ctx.poll(true);
            }
        });
        // The completions reaped with the panicking one are dispatched next, without sleeping.
        guard.poll_until(&ctx, "the completions after the panicking one", || ok_runs.get() == 3);
        assert!(!guard.expired());
        assert_context_serves(&ctx);
    }

    fn panic_in_a_task_or_block_on_future_is_contained(backend) {
        let ctx = tests::context(backend);
        let (tick, ticks) = counter();
        let survivors: Vec<_> = (0..3)
            .map(|i| {
                let tick = tick.clone();
                ctx.spawn_local(async move {
                    aioctx::yield_now().await;
                    tick();
                    aioctx::time::sleep(Duration::from_micros(100)).await;
                    i
                })
            })
            .collect();
        let bad = ctx.spawn_local(async {
            aioctx::yield_now().await;
            panic!("task boom")
        });
        // A task's panic is caught: it becomes its JoinHandle's error, not a panic out of the loop.
        let err = ctx.block_on(bad).unwrap_err();
        assert!(err.is_panic());
        // A panic in the block_on future itself propagates to block_on's caller.
        expect_panic("block_on boom", || {
            ctx.block_on(async {
                aioctx::yield_now().await;
                panic!("block_on boom")
            })
        });
        let outputs: Vec<_> = ctx
            .block_on(futures::future::join_all(survivors))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(outputs, [0, 1, 2]);
        assert_eq!(ticks.get(), 3);
        assert_context_serves(&ctx);
    }
}

/// On an IOThread nobody catches a callback's panic: it ends that IOThread's loop (its context is
/// dropped, cancelling what was pending), callers see the context gone, and other IOThreads go on.
#[test]
fn panic_in_an_iothread_callback_ends_that_iothread_only() {
    let doomed = aioctx::IoThread::spawn("doomed").unwrap();
    let other = aioctx::IoThread::spawn("other").unwrap();
    doomed.remote().schedule_oneshot(|| panic!("iothread boom"));
    let err = doomed.remote().call(|| 1).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected, "{err}");
    assert!(doomed.remote().is_closed());
    let late = doomed.remote().spawn(async { 2 });
    assert!(late.join_blocking().unwrap_err().is_cancelled());
    doomed.stop();
    assert_eq!(other.remote().call(|| 3).unwrap(), 3);
}
