//! QEMU's tests/unit/test-aio.c and test-nested-aio-poll.c, ported to aioctx and run on every backend.
//!
//! QEMU's glib-source variants (`test_source_*`) drive the same cases through a GSource; aioctx has no glib
//! integration, so each case runs once per fd monitor instead. The coroutine cases (queue chaining, worker
//! thread wake) belong to the executor and live with its tests.

use std::cell::{Cell, OnceCell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aioctx::{AioContext, Bh, EventNotifier, FdHandlers, FdRegistration, PollParams};
use tests::{context, per_backend};

/// Polls non-blocking until no progress, bounded.
fn drain(ctx: &AioContext) {
    for _ in 0..1000 {
        if !ctx.poll(false) {
            return;
        }
    }
    panic!("the loop kept making progress for 1000 iterations");
}

fn counter_bh(ctx: &AioContext) -> (Bh, Rc<Cell<u32>>) {
    let n = Rc::new(Cell::new(0));
    let bh = ctx.bh({
        let n = n.clone();
        move || n.set(n.get() + 1)
    });
    (bh, n)
}

/// A notifier whose handler counts dispatches, clears it, and re-sets it while `auto_set` activations are
/// left (test-aio.c's EventNotifierTestData).
struct NotifierData {
    n: Cell<u32>,
    active: Cell<u32>,
    auto_set: bool,
    e: EventNotifier,
}

fn watched_notifier(
    ctx: &AioContext,
    active: u32,
    auto_set: bool,
) -> (Rc<NotifierData>, FdRegistration) {
    let data = Rc::new(NotifierData {
        n: Cell::new(0),
        active: Cell::new(active),
        auto_set,
        e: EventNotifier::new().unwrap(),
    });
    let reg = ctx
        .set_event_notifier(
            &data.e,
            {
                let data = data.clone();
                move || {
                    data.n.set(data.n.get() + 1);
                    data.e.test_and_clear().unwrap();
                    if data.active.get() > 0 {
                        data.active.set(data.active.get() - 1);
                    }
                    if data.auto_set && data.active.get() > 0 {
                        data.e.set().unwrap();
                    }
                }
            },
            None,
        )
        .unwrap();
    (data, reg)
}

per_backend! {
    /// test_bh_schedule: a scheduled BH runs once at the next poll; then there is no progress.
    fn bh_schedule(backend) {
        let ctx = context(backend);
        let (bh, n) = counter_bh(&ctx);
        bh.schedule();
        assert_eq!(n.get(), 0, "schedule never runs the BH inline");
        assert!(ctx.poll(true));
        assert_eq!(n.get(), 1);
        assert!(!ctx.poll(false));
        assert_eq!(n.get(), 1);
    }

    /// test_bh_schedule10: a BH that reschedules itself runs exactly once per poll.
    fn bh_schedule10(backend) {
        let ctx = context(backend);
        let n = Rc::new(Cell::new(0));
        let me: Rc<OnceCell<aioctx::RemoteBh>> = Rc::new(OnceCell::new());
        let bh = ctx.bh({
            let (n, me) = (n.clone(), me.clone());
            move || {
                n.set(n.get() + 1);
                if n.get() < 10 {
                    me.get().unwrap().schedule();
                }
            }
        });
        me.set(bh.remote()).unwrap();
        bh.schedule();
        assert!(ctx.poll(false));
        assert_eq!(n.get(), 1);
        assert!(ctx.poll(true));
        assert_eq!(n.get(), 2);
        for expected in 3..=10 {
            assert!(ctx.poll(false));
            assert_eq!(n.get(), expected, "one run per poll");
        }
        assert!(!ctx.poll(false));
        assert_eq!(n.get(), 10);
    }

    /// test_bh_cancel: a cancelled BH does not run and is no progress.
    fn bh_cancel(backend) {
        let ctx = context(backend);
        let (bh, n) = counter_bh(&ctx);
        bh.schedule();
        bh.cancel();
        assert!(!bh.is_scheduled());
        assert!(!ctx.poll(false));
        assert_eq!(n.get(), 0);
        // A cancelled BH can be scheduled again.
        bh.schedule();
        assert!(ctx.poll(false));
        assert_eq!(n.get(), 1);
    }

    /// test_bh_delete: a BH dropped while scheduled never runs.
    fn bh_delete(backend) {
        let ctx = context(backend);
        let (bh, n) = counter_bh(&ctx);
        bh.schedule();
        drop(bh);
        assert!(!ctx.poll(false));
        assert_eq!(n.get(), 0);
    }

    /// test_bh_delete_from_cb: a BH may delete itself from its own callback.
    fn bh_delete_from_cb(backend) {
        let ctx = context(backend);
        let n = Rc::new(Cell::new(0));
        let slot: Rc<RefCell<Option<Bh>>> = Rc::new(RefCell::new(None));
        let bh = ctx.bh({
            let (n, slot) = (n.clone(), slot.clone());
            move || {
                n.set(n.get() + 1);
                drop(slot.borrow_mut().take());
            }
        });
        bh.schedule();
        *slot.borrow_mut() = Some(bh);
        assert!(ctx.poll(true));
        assert_eq!(n.get(), 1);
        assert!(slot.borrow().is_none());
        assert!(!ctx.poll(false));
        assert_eq!(n.get(), 1);
    }

    /// test_bh_delete_from_cb_many: several BHs that reschedule themselves and delete themselves after
    /// 1, 2, 3 and 4 runs; each runs exactly that often.
    fn bh_delete_from_cb_many(backend) {
        let ctx = context(backend);
        let counts: Vec<Rc<Cell<u32>>> = (0..4).map(|_| Rc::new(Cell::new(0))).collect();
        let slots: Vec<Rc<RefCell<Option<Bh>>>> = (0..4).map(|_| Rc::new(RefCell::new(None))).collect();
        for max in 1..=4u32 {
            let i = max as usize - 1;
            let (n, slot) = (counts[i].clone(), slots[i].clone());
            let bh = ctx.bh(move || {
                n.set(n.get() + 1);
                if n.get() >= max {
                    drop(slot.borrow_mut().take());
                } else if let Some(bh) = slot.borrow().as_ref() {
                    bh.schedule();
                }
            });
            bh.schedule();
            *slots[i].borrow_mut() = Some(bh);
        }
        let mut polls = 0;
        while slots.iter().any(|s| s.borrow().is_some()) {
            assert!(ctx.poll(false));
            polls += 1;
            assert!(polls <= 4, "every BH must be gone after 4 polls");
        }
        let got: Vec<u32> = counts.iter().map(|c| c.get()).collect();
        assert_eq!(got, [1, 2, 3, 4]);
        assert!(!ctx.poll(false));
    }

    /// test_bh_flush: polling until inactive runs a scheduled BH.
    fn bh_flush(backend) {
        let ctx = context(backend);
        let (bh, n) = counter_bh(&ctx);
        bh.schedule();
        drain(&ctx);
        assert_eq!(n.get(), 1);
    }

    /// test_set_event_notifier: adding and removing a notifier that is not set is silent.
    fn set_event_notifier(backend) {
        let ctx = context(backend);
        let (data, reg) = watched_notifier(&ctx, 0, false);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 0);
        drop(reg);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 0);
    }

    /// test_wait_event_notifier: setting the notifier dispatches its handler exactly once.
    fn wait_event_notifier(backend) {
        let ctx = context(backend);
        let (data, reg) = watched_notifier(&ctx, 1, false);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 0);
        assert_eq!(data.active.get(), 1);
        data.e.set().unwrap();
        assert!(ctx.poll(false));
        assert_eq!(data.n.get(), 1);
        assert_eq!(data.active.get(), 0);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 1);
        drop(reg);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 1);
    }

    /// test_flush_event_notifier: a handler that re-sets its notifier 10 times is drained by polling.
    fn flush_event_notifier(backend) {
        let ctx = context(backend);
        let (data, reg) = watched_notifier(&ctx, 10, true);
        assert!(!ctx.poll(false));
        data.e.set().unwrap();
        assert!(ctx.poll(false));
        assert_eq!(data.n.get(), 1);
        assert_eq!(data.active.get(), 9);
        drain(&ctx);
        assert_eq!(data.n.get(), 10);
        assert_eq!(data.active.get(), 0);
        assert!(!ctx.poll(false));
        drop(reg);
        assert!(!ctx.poll(false));
    }

    /// test_wait_event_notifier_noflush: a blocking poll waits for the notifier even when another,
    /// self-re-setting notifier keeps the loop busy; removing the busy one lets the loop go quiet.
    fn wait_event_notifier_noflush(backend) {
        let ctx = context(backend);
        let (data, reg) = watched_notifier(&ctx, 0, false);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 0);
        // Until there is an active descriptor, aio_poll may or may not call event_notifier_and_clear.
        data.e.set().unwrap();
        ctx.poll(false);
        data.e.set().unwrap();
        assert!(ctx.poll(false));
        assert_eq!(data.n.get(), 2);

        let (dummy, dummy_reg) = watched_notifier(&ctx, 1, true);
        dummy.e.set().unwrap();
        assert!(ctx.poll(false));
        assert_eq!(data.n.get(), 2);
        assert_eq!(dummy.n.get(), 1);
        assert_eq!(dummy.active.get(), 0);

        data.e.set().unwrap();
        assert!(ctx.poll(false));
        assert_eq!(data.n.get(), 3);
        assert!(!ctx.poll(false));

        drop(dummy_reg);
        assert!(!ctx.poll(false));
        drop(reg);
        assert!(!ctx.poll(false));
        assert_eq!(data.n.get(), 3);
    }

    /// test_aio_external_client's basic shape: removing a handler from inside another handler's callback
    /// and from inside its own is safe, and the removed one is not dispatched afterwards even if ready.
    fn remove_handlers_from_callbacks(backend) {
        let ctx = context(backend);
        let a = EventNotifier::new().unwrap();
        let b = EventNotifier::new().unwrap();
        let a_runs = Rc::new(Cell::new(0));
        let b_runs = Rc::new(Cell::new(0));
        let a_reg: Rc<RefCell<Option<FdRegistration>>> = Rc::default();
        let b_reg: Rc<RefCell<Option<FdRegistration>>> = Rc::default();
        // Whichever of a and b runs first removes both registrations, its own included; the other one
        // is then ready in this very iteration but must not be dispatched.
        for (n, runs) in [(&a, &a_runs), (&b, &b_runs)] {
            let reg = ctx
                .set_fd_handler(
                    n.as_raw_fd(),
                    FdHandlers::new().read({
                        let (runs, a_reg, b_reg) = (runs.clone(), a_reg.clone(), b_reg.clone());
                        move || {
                            runs.set(runs.get() + 1);
                            drop(a_reg.borrow_mut().take());
                            drop(b_reg.borrow_mut().take());
                        }
                    }),
                )
                .unwrap();
            if std::ptr::eq(n, &a) {
                *a_reg.borrow_mut() = Some(reg);
            } else {
                *b_reg.borrow_mut() = Some(reg);
            }
        }
        a.set().unwrap();
        b.set().unwrap();
        assert!(ctx.poll(false));
        assert_eq!(a_runs.get() + b_runs.get(), 1, "the second handler was removed before dispatch");
        assert!(!ctx.poll(false), "both are gone though both fds are still set");
    }

    /// A handler added from a callback is dispatched at a later iteration.
    fn add_handler_from_callback(backend) {
        let ctx = Rc::new(context(backend));
        let late = EventNotifier::new().unwrap();
        late.set().unwrap();
        let late_runs = Rc::new(Cell::new(0));
        let late_reg: Rc<RefCell<Option<FdRegistration>>> = Rc::default();
        let bh = ctx.bh({
            let (ctx, late, late_runs, late_reg) =
                (Rc::downgrade(&ctx), late.clone(), late_runs.clone(), late_reg.clone());
            move || {
                let ctx = ctx.upgrade().unwrap();
                let reg = ctx
                    .set_event_notifier(&late, {
                        let (late, runs) = (late.clone(), late_runs.clone());
                        move || {
                            late.test_and_clear().unwrap();
                            runs.set(runs.get() + 1);
                        }
                    }, None)
                    .unwrap();
                *late_reg.borrow_mut() = Some(reg);
            }
        });
        bh.schedule();
        assert!(ctx.poll(false));
        drain(&ctx);
        assert_eq!(late_runs.get(), 1);
        drop(late_reg.borrow_mut().take());
    }

    /// The slice rule: a BH scheduled by a BH (or remotely) while BHs run waits for the next poll.
    fn bh_scheduled_during_bh_poll_runs_next_time(backend) {
        let ctx = context(backend);
        let (second, second_runs) = counter_bh(&ctx);
        let second_remote = second.remote();
        let first = ctx.bh(move || second_remote.schedule());
        first.schedule();
        assert!(ctx.poll(false));
        assert_eq!(second_runs.get(), 0);
        assert!(ctx.poll(false));
        assert_eq!(second_runs.get(), 1);
    }

    /// Idle BHs run but do not count as progress. (Their 10 ms bound on a blocking wait is checked by a
    /// unit test of `compute_timeout`: scheduling always notifies, so a blocking poll right after a
    /// schedule never sleeps, here as in QEMU.)
    fn idle_bh(backend) {
        let ctx = context(backend);
        let (bh, n) = counter_bh(&ctx);
        bh.schedule_idle();
        assert!(bh.is_scheduled());
        assert!(!ctx.poll(false), "an idle BH is not progress");
        assert_eq!(n.get(), 1);
        bh.schedule_idle();
        ctx.poll(true);
        assert_eq!(n.get(), 2);
        assert!(!ctx.poll(false));
    }

    /// A nested poll from a BH first finishes the outer slice (QEMU's bh_slice_list).
    fn nested_poll_drains_outer_slice_first(backend) {
        let ctx = Rc::new(context(backend));
        let order = Rc::new(RefCell::new(Vec::new()));
        let (later, later_runs) = counter_bh(&ctx);
        let later_remote = later.remote();
        let nester = ctx.bh({
            let (ctx, order) = (Rc::downgrade(&ctx), order.clone());
            move || {
                order.borrow_mut().push("nester");
                later_remote.schedule();
                let ctx = ctx.upgrade().unwrap();
                ctx.poll(false);
            }
        });
        let sibling = ctx.bh({
            let order = order.clone();
            move || order.borrow_mut().push("sibling")
        });
        nester.schedule();
        sibling.schedule();
        assert!(ctx.poll(false));
        assert_eq!(*order.borrow(), ["nester", "sibling"], "each ran exactly once");
        // `later` was scheduled during the outer slice: the nested poll took it as a new slice.
        assert_eq!(later_runs.get(), 1);
        assert!(!ctx.poll(false));
    }

    /// A BH scheduled from a worker thread runs on the home thread.
    fn remote_bh_runs_on_home_thread(backend) {
        let ctx = context(backend);
        let home = std::thread::current().id();
        let ran_on = Rc::new(Cell::new(None));
        let bh = ctx.bh({
            let ran_on = ran_on.clone();
            move || ran_on.set(Some(std::thread::current().id()))
        });
        let remote = bh.remote();
        let worker = std::thread::spawn(move || remote.schedule());
        while ran_on.get().is_none() {
            ctx.poll(true);
        }
        worker.join().unwrap();
        assert_eq!(ran_on.get(), Some(home));
    }

    /// Remote one-shots run once each, on the home thread; after the context is dropped they are dropped
    /// without running.
    fn remote_oneshot_and_closed_context(backend) {
        let ctx = context(backend);
        let remote = ctx.remote();
        let runs = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let runs = runs.clone();
            remote.schedule_oneshot(move || {
                runs.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert!(ctx.poll(false));
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(!ctx.poll(false));

        let (bh, _n) = counter_bh(&ctx);
        let bh_remote = bh.remote();
        drop(ctx);
        assert!(remote.is_closed());
        // Neither may touch freed memory or run anything.
        let dropped = Arc::new(AtomicUsize::new(0));
        struct CountDrop(Arc<AtomicUsize>);
        impl Drop for CountDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let guard = CountDrop(dropped.clone());
        let r = runs.clone();
        remote.schedule_oneshot(move || {
            let _g = guard;
            r.fetch_add(100, Ordering::SeqCst);
        });
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "the closure is dropped, not kept");
        bh_remote.schedule();
        remote.notify();
        drop(bh);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    /// Dropping a context with scheduled BHs, armed timers and registered handlers drops every callback
    /// on the home thread (nothing leaks, nothing runs).
    fn drop_context_with_pending_work(backend) {
        struct Witness(Rc<Cell<u32>>);
        impl Drop for Witness {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let drops = Rc::new(Cell::new(0));
        let ctx = context(backend);
        let w = Witness(drops.clone());
        let bh = ctx.bh(move || { let _ = &w; });
        bh.schedule();
        let w = Witness(drops.clone());
        ctx.bh_oneshot(move || drop(w));
        let w = Witness(drops.clone());
        let timer = ctx.timer(aioctx::time::Clock::Realtime, move || { let _ = &w; });
        timer.arm_after(Duration::from_secs(3600));
        let n = EventNotifier::new().unwrap();
        let w = Witness(drops.clone());
        let reg = ctx.set_event_notifier(&n, move || { let _ = &w; }, None).unwrap();
        drop(ctx);
        assert_eq!(drops.get(), 4, "every callback was dropped with the context");
        // Handles that outlive the context are inert.
        bh.schedule();
        timer.arm_after(Duration::from_millis(1));
        assert!(!timer.is_pending());
        assert!(reg.update(FdHandlers::new()).is_err());
    }
}

per_backend! {
    /// QEMU's test-nested-aio-poll.c: a poll_ready callback that runs a nested blocking poll must not
    /// be re-entered by it, even though its poll function keeps returning true.
    fn nested_aio_poll_does_not_reenter_poll_ready(backend) {
        let ctx = Rc::new(
            AioContext::builder()
                .backend(backend)
                .poll_params(PollParams {
                    // Wide enough that no stall of a loaded machine makes the first event shrink it to 0.
                    max_ns: 100_000_000,
                    grow: 2,
                    shrink: 2,
                    weight: 0,
                    min_hit_percent: 0,
                })
                .build()
                .unwrap(),
        );
        let guard = tests::Guard::new(&ctx);
        let poll_notifier = EventNotifier::new().unwrap();
        let dummy = EventNotifier::new().unwrap();
        let nested = Rc::new(Cell::new(false));
        let ready_calls = Rc::new(Cell::new(0));
        let dummy_reads = Rc::new(Cell::new(0));

        let _poll_reg = ctx
            .set_fd_handler(
                poll_notifier.as_raw_fd(),
                FdHandlers::new()
                    .read({
                        let n = poll_notifier.clone();
                        move || {
                            n.test_and_clear().unwrap();
                        }
                    })
                    .poll(|| true, {
                        let (ctx, nested, ready_calls, dummy) = (
                            Rc::downgrade(&ctx),
                            nested.clone(),
                            ready_calls.clone(),
                            dummy.clone(),
                        );
                        move || {
                            assert!(!nested.get(), "poll_ready re-entered by a nested poll");
                            nested.set(true);
                            ready_calls.set(ready_calls.get() + 1);
                            dummy.set().unwrap();
                            let ctx = ctx.upgrade().unwrap();
                            let mut rounds = 0;
                            while !ctx.poll(true) {
                                rounds += 1;
                                assert!(
                                    rounds < 1000,
                                    "the nested poll never saw the dummy notifier"
                                );
                            }
                            nested.set(false);
                        }
                    }),
            )
            .unwrap();
        let _dummy_reg = ctx
            .set_fd_handler(
                dummy.as_raw_fd(),
                FdHandlers::new()
                    .read({
                        let (dummy, reads) = (dummy.clone(), dummy_reads.clone());
                        move || {
                            dummy.test_and_clear().unwrap();
                            reads.set(reads.get() + 1);
                        }
                    })
                    .poll(|| false, || {}),
            )
            .unwrap();

        // Polling windows start at 0: a first fd event grows the window so the loop starts busy-polling.
        // (Kicking again would not help on io_uring: a kick made before the iteration is a completion
        // already, which makes the loop skip polling.) The guard turns a lost window into a failure.
        poll_notifier.set().unwrap();
        let mut iterations = 0;
        while ready_calls.get() < 3 {
            assert!(!guard.expired(), "the loop slept instead of polling");
            ctx.poll(true);
            iterations += 1;
            assert!(
                iterations < 1000,
                "poll_ready was never reached through busy-polling"
            );
        }
        assert!(!nested.get());
        assert_eq!(
            dummy_reads.get(),
            ready_calls.get(),
            "each nested poll was ended by the dummy notifier"
        );
    }
}
