//! Timers and clocks: deadlines, ordering, re-arming, cancelling and dropping timers, the three clocks
//! (including a virtual clock driven from another thread), QEMU's test_timer_schedule, and the 1 ns timer
//! slack of a loop's thread.
//!
//! Waiting is done by spinning on a clock or by blocking in the loop itself, never by sleeping: these
//! tests are about when the loop wakes, so the loop must be the only thing that waits.

use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aioctx::time::{Clock, Timer, TimerHandle};
use aioctx::{AioContext, EventNotifier};
use tests::per_backend;

/// How long any wait may take before the test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(10);
const MS: i64 = 1_000_000;
const HOUR: i64 = 3_600_000 * MS;

/// Spins until `clock` (as `ctx` reads it) reaches `target`.
fn spin_until_clock(ctx: &AioContext, clock: Clock, target: i64) {
    let give_up = Instant::now() + BOUND;
    while ctx.now_ns(clock) < target {
        assert!(Instant::now() < give_up, "{clock:?} never reached {target}");
        std::hint::spin_loop();
    }
}

/// Runs blocking iterations until `done()`. A guard timer makes even a lost wakeup return from `poll`, so
/// a broken loop fails the test after `BOUND` instead of hanging it.
fn poll_until(ctx: &AioContext, what: &str, done: impl Fn() -> bool) {
    let expired = Rc::new(Cell::new(false));
    let guard = ctx.timer(Clock::Realtime, {
        let expired = expired.clone();
        move || expired.set(true)
    });
    guard.arm_after(BOUND);
    for _ in 0..100_000 {
        if done() {
            return;
        }
        assert!(!expired.get(), "{what}: not done after {BOUND:?}");
        ctx.poll(true);
    }
    panic!("{what}: not done after 100000 iterations");
}

/// A timer that counts its runs.
fn counting_timer(ctx: &AioContext, clock: Clock) -> (Timer, Rc<Cell<u32>>) {
    let runs = Rc::new(Cell::new(0));
    let timer = ctx.timer(clock, {
        let runs = runs.clone();
        move || runs.set(runs.get() + 1)
    });
    (timer, runs)
}

/// A timer that appends `id` to `log` when it runs.
fn logging_timer(ctx: &AioContext, log: &Rc<RefCell<Vec<u32>>>, id: u32) -> Timer {
    let log = log.clone();
    ctx.timer(Clock::Realtime, move || log.borrow_mut().push(id))
}

/// A timer on `clock` that records, when it runs, whether `clock` had reached `deadline`, which the
/// test sets once it knows it (the timer is disarmed before its callback, so it cannot read its own).
struct DeadlineCheck {
    timer: Timer,
    deadline: Rc<Cell<i64>>,
    /// `None` until the timer ran, then whether it ran on time.
    verdict: Rc<Cell<Option<bool>>>,
}

impl DeadlineCheck {
    fn new(ctx: &Rc<AioContext>, clock: Clock) -> DeadlineCheck {
        let deadline = Rc::new(Cell::new(i64::MAX));
        let verdict = Rc::new(Cell::new(None));
        let timer = ctx.timer(clock, {
            let (ctx, deadline, verdict) = (Rc::downgrade(ctx), deadline.clone(), verdict.clone());
            move || {
                let ctx = ctx.upgrade().expect("the context outlives its timers here");
                verdict.set(Some(ctx.now_ns(clock) >= deadline.get()));
            }
        });
        DeadlineCheck {
            timer,
            deadline,
            verdict,
        }
    }
}

per_backend! {
    fn fires_only_after_its_deadline_and_blocking_poll_waits_for_it(backend) {
        let ctx = Rc::new(tests::context(backend));
        let DeadlineCheck {
            timer,
            deadline,
            verdict,
        } = DeadlineCheck::new(&ctx, Clock::Realtime);
        let before = ctx.now_ns(Clock::Realtime);
        timer.arm_after(Duration::from_millis(20));
        let after = ctx.now_ns(Clock::Realtime);
        let armed_for = timer.expire_time_ns().expect("armed");
        assert!((before + 20 * MS..=after + 20 * MS).contains(&armed_for));
        deadline.set(armed_for);

        // Only passes that finished before the deadline can be judged: a descheduled test thread may
        // legitimately cross it.
        for _ in 0..100 {
            let progressed = ctx.poll(false);
            if ctx.now_ns(Clock::Realtime) < armed_for {
                assert!(!progressed, "a non-blocking pass before the deadline made progress");
                assert_eq!(verdict.get(), None, "the timer ran before its deadline");
            }
        }

        if verdict.get().is_none() {
            assert!(ctx.poll(true), "one blocking poll must run the timer");
        }
        assert_eq!(verdict.get(), Some(true), "the callback saw a clock before the deadline");
        assert!(!timer.is_pending());
        assert_eq!(timer.expire_time_ns(), None);
        assert!(!ctx.poll(false), "a timer fires once per arming");

        // The blocking poll sleeps rather than spins. A round whose deadline passed before the poll
        // computed its timeout (a stalled test thread) may legitimately not sleep, so it is retried.
        let slept = (0..5).any(|_| {
            let waits = ctx.stats().blocking_waits;
            timer.arm_after(Duration::from_millis(20));
            while timer.is_pending() {
                ctx.poll(true);
            }
            ctx.stats().blocking_waits > waits
        });
        assert!(slept, "no blocking poll slept until its timer in 5 rounds");
    }

    fn equal_deadlines_fire_in_arming_order(backend) {
        let ctx = tests::context(backend);
        let log = Rc::new(RefCell::new(Vec::new()));
        let timers: Vec<Timer> = (0..4).map(|i| logging_timer(&ctx, &log, i)).collect();
        let deadline = ctx.now_ns(Clock::Realtime) + 2 * MS;
        for i in [2, 0, 3, 1] {
            timers[i].arm_ns(deadline);
        }
        // Re-arming is a new arming: it goes behind the others with the same deadline, as in QEMU.
        timers[2].arm_ns(deadline);
        poll_until(&ctx, "four timers", || log.borrow().len() == 4);
        assert_eq!(*log.borrow(), [0, 3, 1, 2]);
    }

    fn different_deadlines_fire_in_deadline_order(backend) {
        let ctx = tests::context(backend);
        let log = Rc::new(RefCell::new(Vec::new()));
        let timers: Vec<Timer> = (0..4).map(|i| logging_timer(&ctx, &log, i)).collect();
        let now = ctx.now_ns(Clock::Realtime);
        timers[0].arm_ns(now + 3 * MS);
        timers[1].arm_ns(now + MS);
        timers[2].arm_ns(now + 2 * MS);
        timers[3].arm_ns(now - MS);
        poll_until(&ctx, "four timers", || log.borrow().len() == 4);
        assert_eq!(*log.borrow(), [3, 1, 2, 0]);
    }

    fn callback_rearms_through_a_handle(backend) {
        let ctx = tests::context(backend);
        let runs = Rc::new(Cell::new(0));
        let pending_in_callback = Rc::new(Cell::new(false));
        let slot = Rc::new(OnceCell::<TimerHandle>::new());
        let timer = ctx.timer(Clock::Realtime, {
            let (runs, pending, slot) = (runs.clone(), pending_in_callback.clone(), slot.clone());
            move || {
                let me = slot.get().expect("handle stored before arming");
                // QEMU disarms a timer before running it: its callback sees it idle.
                pending.set(pending.get() | me.is_pending());
                runs.set(runs.get() + 1);
                if runs.get() < 3 {
                    me.arm_after(Duration::from_micros(200));
                    assert!(me.is_pending());
                }
            }
        });
        slot.set(timer.handle()).unwrap();
        timer.arm_after(Duration::from_micros(200));
        poll_until(&ctx, "three runs", || runs.get() == 3);
        assert!(!pending_in_callback.get(), "a timer looked armed inside its own callback");
        assert!(!timer.is_pending());
        assert!(!ctx.poll(false));
        assert_eq!(runs.get(), 3);
    }

    fn cancel_is_idempotent_and_a_cancelled_timer_never_fires(backend) {
        let ctx = tests::context(backend);
        let (timer, runs) = counting_timer(&ctx, Clock::Realtime);
        timer.cancel(); // never armed
        assert!(!timer.is_pending());
        let deadline = ctx.now_ns(Clock::Realtime) + 5 * MS;
        timer.arm_ns(deadline);
        assert!(timer.is_pending());
        assert_eq!(timer.expire_time_ns(), Some(deadline));
        timer.cancel();
        timer.cancel();
        timer.handle().cancel();
        assert!(!timer.is_pending());
        assert_eq!(timer.expire_time_ns(), None);

        // A later timer proves the loop ran past the cancelled deadline.
        let (witness, witness_runs) = counting_timer(&ctx, Clock::Realtime);
        witness.arm_ns(deadline + 10 * MS);
        poll_until(&ctx, "the witness timer", || witness_runs.get() == 1);
        assert!(ctx.now_ns(Clock::Realtime) >= deadline);
        assert_eq!(runs.get(), 0);

        // Cancelled, it can be armed again as usual.
        timer.arm_ns(ctx.now_ns(Clock::Realtime));
        assert!(ctx.poll(false));
        assert_eq!(runs.get(), 1);
    }

    fn rearming_replaces_the_deadline(backend) {
        let ctx = tests::context(backend);
        let (timer, runs) = counting_timer(&ctx, Clock::Realtime);
        let now = ctx.now_ns(Clock::Realtime);
        assert_eq!(timer.expire_time_ns(), None);
        timer.arm_ns(now + HOUR);
        assert_eq!(timer.expire_time_ns(), Some(now + HOUR));
        timer.arm_ns(now + 2 * MS);
        assert_eq!(timer.expire_time_ns(), Some(now + 2 * MS));
        poll_until(&ctx, "the moved-earlier timer", || runs.get() == 1);
        assert!(!timer.is_pending(), "the replaced deadline lingered");

        // Moving it later must drop the earlier deadline too.
        let now = ctx.now_ns(Clock::Realtime);
        timer.arm_ns(now + 2 * MS);
        timer.arm_ns(now + HOUR);
        let (witness, witness_runs) = counting_timer(&ctx, Clock::Realtime);
        witness.arm_ns(now + 10 * MS);
        poll_until(&ctx, "the witness timer", || witness_runs.get() == 1);
        assert_eq!(runs.get(), 1, "the timer fired at its replaced deadline");
        assert_eq!(timer.expire_time_ns(), Some(now + HOUR));
    }

    fn arm_anticipate_only_moves_earlier(backend) {
        let ctx = tests::context(backend);
        let (timer, runs) = counting_timer(&ctx, Clock::Realtime);
        let base = ctx.now_ns(Clock::Realtime) + HOUR;
        timer.arm_ns_anticipate(base); // disarmed: anticipating arms it
        assert_eq!(timer.expire_time_ns(), Some(base));
        timer.arm_ns_anticipate(base + 1);
        assert_eq!(timer.expire_time_ns(), Some(base));
        timer.arm_ns_anticipate(base);
        assert_eq!(timer.expire_time_ns(), Some(base));
        timer.arm_ns_anticipate(base - MS);
        assert_eq!(timer.expire_time_ns(), Some(base - MS));

        let soon = ctx.now_ns(Clock::Realtime) + MS;
        timer.arm_ns_anticipate(soon);
        assert_eq!(timer.expire_time_ns(), Some(soon));
        poll_until(&ctx, "the anticipated timer", || runs.get() == 1);
        assert!(!timer.is_pending());
    }

    fn timer_may_drop_itself_in_its_callback(backend) {
        let ctx = tests::context(backend);
        let slot: Rc<RefCell<Option<Timer>>> = Rc::default();
        let runs = Rc::new(Cell::new(0));
        let timer = ctx.timer(Clock::Realtime, {
            let (slot, runs) = (slot.clone(), runs.clone());
            move || {
                runs.set(runs.get() + 1);
                let me = slot.borrow_mut().take().expect("runs once");
                // Re-armed in the past, it would run again in this very pass unless the drop removes it.
                me.arm_ns(0);
                drop(me);
            }
        });
        let handle = timer.handle();
        timer.arm_ns(ctx.now_ns(Clock::Realtime));
        *slot.borrow_mut() = Some(timer);
        assert!(ctx.poll(false));
        assert_eq!(runs.get(), 1);
        assert!(slot.borrow().is_none());

        // The handle outlives the timer and does nothing.
        assert!(!handle.is_pending());
        handle.arm_after(Duration::ZERO);
        handle.arm_ns_anticipate(0);
        assert!(!handle.is_pending());
        assert_eq!(handle.expire_time_ns(), None);
        handle.cancel();
        assert!(!ctx.poll(false));
        assert_eq!(runs.get(), 1);
    }

    fn timer_may_drop_another_expired_timer(backend) {
        let ctx = tests::context(backend);
        let log = Rc::new(RefCell::new(Vec::new()));
        let victim_slot: Rc<RefCell<Option<Timer>>> = Rc::default();
        let killer = ctx.timer(Clock::Realtime, {
            let (log, slot) = (log.clone(), victim_slot.clone());
            move || {
                log.borrow_mut().push(0);
                let victim = slot.borrow_mut().take();
                drop(victim);
            }
        });
        let victim = logging_timer(&ctx, &log, 1);
        let bystander = logging_timer(&ctx, &log, 2);
        // All three are due in the same pass; the victim is dropped before its turn comes.
        let deadline = ctx.now_ns(Clock::Realtime);
        killer.arm_ns(deadline);
        victim.arm_ns(deadline);
        bystander.arm_ns(deadline);
        *victim_slot.borrow_mut() = Some(victim);
        assert!(ctx.poll(false));
        assert_eq!(*log.borrow(), [0, 2]);
        assert!(!ctx.poll(false));
        assert_eq!(*log.borrow(), [0, 2]);
    }

    fn stale_handle_does_not_touch_a_timer_reusing_its_slot(backend) {
        let ctx = tests::context(backend);
        let log = Rc::new(RefCell::new(Vec::new()));
        let first = logging_timer(&ctx, &log, 1);
        let stale = first.handle();
        drop(first);
        stale.arm_ns(0);
        assert!(!stale.is_pending());

        // Likely to take the freed slot: the stale handle must neither arm nor cancel it.
        let second = logging_timer(&ctx, &log, 2);
        stale.arm_ns(0);
        assert!(!second.is_pending());
        second.arm_ns(0);
        stale.cancel();
        assert!(second.is_pending());
        assert_eq!(stale.expire_time_ns(), None);
        assert!(ctx.poll(false));
        assert_eq!(*log.borrow(), [2]);
    }

    fn timers_and_handles_outlive_their_context(backend) {
        let ctx = tests::context(backend);
        let (timer, runs) = counting_timer(&ctx, Clock::Realtime);
        let handle = timer.handle();
        timer.arm_after(Duration::from_millis(1));
        drop(ctx);
        assert!(!handle.is_pending());
        handle.arm_after(Duration::ZERO);
        timer.arm_ns(0);
        timer.cancel();
        assert_eq!(timer.expire_time_ns(), None);
        drop(timer);
        handle.cancel();
        assert_eq!(runs.get(), 0);
    }

    fn host_clock_timer_fires(backend) {
        let ctx = Rc::new(tests::context(backend));
        let DeadlineCheck {
            timer,
            deadline,
            verdict,
        } = DeadlineCheck::new(&ctx, Clock::Host);
        assert_eq!(timer.clock(), Clock::Host);
        timer.arm_after(Duration::from_millis(2));
        deadline.set(timer.expire_time_ns().unwrap());
        poll_until(&ctx, "the host-clock timer", || verdict.get().is_some());
        assert_eq!(verdict.get(), Some(true));
    }

    fn paused_virtual_clock_holds_timers_until_advanced(backend) {
        let ctx = tests::context(backend);
        let clock = ctx.virtual_clock();
        clock.pause();
        let frozen = clock.now_ns();
        let (timer, runs) = counting_timer(&ctx, Clock::Virtual);
        let deadline = frozen + 5 * MS;
        timer.arm_ns(deadline);

        // Real time passes the virtual deadline; paused guest time does not.
        spin_until_clock(&ctx, Clock::Realtime, ctx.now_ns(Clock::Realtime) + 10 * MS);
        for _ in 0..3 {
            assert!(!ctx.poll(false), "a timer on a paused clock ran");
        }
        assert_eq!(runs.get(), 0);
        assert_eq!(ctx.now_ns(Clock::Virtual), frozen);

        clock.advance(Duration::from_millis(4));
        assert!(!ctx.poll(false), "the timer ran 1 ms of guest time early");
        assert_eq!(runs.get(), 0);
        // Reaching the deadline exactly is enough (QEMU: expire_time <= now).
        clock.advance(Duration::from_millis(1));
        assert_eq!(ctx.now_ns(Clock::Virtual), deadline);
        assert!(ctx.poll(false));
        assert_eq!(runs.get(), 1);
        assert!(clock.is_paused(), "advancing does not resume");
    }

    fn resumed_virtual_clock_runs_on_real_time_again(backend) {
        let ctx = tests::context(backend);
        let clock = ctx.virtual_clock();
        clock.pause();
        let (timer, runs) = counting_timer(&ctx, Clock::Virtual);
        let deadline = clock.now_ns() + 5 * MS;
        timer.arm_ns(deadline);
        spin_until_clock(&ctx, Clock::Realtime, ctx.now_ns(Clock::Realtime) + 10 * MS);
        assert!(!ctx.poll(false));

        let resumed_at = ctx.now_ns(Clock::Realtime);
        clock.resume();
        assert!(!clock.is_paused());
        poll_until(&ctx, "the virtual timer after resume", || runs.get() == 1);
        // Guest time continued from where it froze, so the timer still had its 5 ms to go.
        assert!(ctx.now_ns(Clock::Realtime) - resumed_at >= 5 * MS);
        assert!(ctx.now_ns(Clock::Virtual) >= deadline);
        assert!(
            ctx.now_ns(Clock::Virtual) <= ctx.now_ns(Clock::Realtime) - 10 * MS,
            "guest time caught up with the time it spent paused"
        );
    }

    fn clock_control_from_another_thread_wakes_a_blocked_loop(backend) {
        fn assert_send_sync<T: Send + Sync + 'static>(_: &T) {}

        let ctx = tests::context(backend);
        let clock = ctx.virtual_clock();
        assert_send_sync(&clock);
        let (timer, runs) = counting_timer(&ctx, Clock::Virtual);
        timer.arm_ns(clock.now_ns() + HOUR);
        // Without the controller the loop would sleep until this guard: a lost wakeup fails, not hangs.
        let (guard, guard_runs) = counting_timer(&ctx, Clock::Realtime);
        guard.arm_after(BOUND);
        ctx.poll(false); // takes the notifications the arming left behind

        let step = Arc::new(AtomicU32::new(0));
        let baseline = Arc::new(AtomicU64::new(0));
        let controller = std::thread::spawn({
            let (clock, remote) = (clock.clone(), ctx.remote());
            let (step, baseline) = (step.clone(), baseline.clone());
            move || {
                for k in 1..=3 {
                    // Act only once the loop is asleep (or committed to sleeping) in step k.
                    let give_up = Instant::now() + BOUND;
                    while step.load(Ordering::Acquire) != k
                        || remote.stats().blocking_waits <= baseline.load(Ordering::Acquire)
                    {
                        assert!(Instant::now() < give_up, "the loop never blocked in step {k}");
                        std::hint::spin_loop();
                    }
                    match k {
                        1 => clock.pause(),
                        2 => clock.advance(Duration::from_nanos(HOUR as u64)),
                        _ => clock.resume(),
                    }
                }
            }
        });
        let block_until = |k: u32, what: &str, done: &dyn Fn() -> bool| {
            baseline.store(ctx.stats().blocking_waits, Ordering::Release);
            step.store(k, Ordering::Release);
            for _ in 0..1_000 {
                if done() {
                    return;
                }
                assert_eq!(guard_runs.get(), 0, "{what} from another thread did not wake the loop");
                ctx.poll(true);
            }
            panic!("{what}: the loop kept returning without it");
        };
        block_until(1, "pause", &|| clock.is_paused());
        assert_eq!(runs.get(), 0);
        block_until(2, "advance", &|| runs.get() == 1);
        assert!(clock.is_paused());
        block_until(3, "resume", &|| !clock.is_paused());
        controller.join().unwrap();
        assert_eq!(guard_runs.get(), 0);
        assert_eq!(runs.get(), 1);
    }

    /// QEMU's tests/unit/test-aio.c test_timer_schedule, with 50 ms instead of 750 ms.
    fn qemu_test_timer_schedule(backend) {
        const NS: i64 = 50 * MS;
        const MAX: u32 = 2;
        let ctx = tests::context(backend);
        // QEMU needs an fd before aio_poll blocks for timers; kept to mirror the original.
        let e = EventNotifier::new().unwrap();
        let reg = ctx.set_event_notifier(&e, || {}, None).unwrap();
        ctx.poll(false);

        let n = Rc::new(Cell::new(0u32));
        let slot = Rc::new(OnceCell::<TimerHandle>::new());
        let timer = ctx.timer(Clock::Realtime, {
            let (n, slot) = (n.clone(), slot.clone());
            move || {
                n.set(n.get() + 1);
                if n.get() < MAX {
                    slot.get().unwrap().arm_after(Duration::from_nanos(NS as u64));
                }
            }
        });
        slot.set(timer.handle()).unwrap();
        let expiry = ctx.now_ns(Clock::Realtime) + NS;
        timer.arm_ns(expiry);
        assert_eq!(n.get(), 0);

        spin_until_clock(&ctx, Clock::Realtime, expiry + MS);
        assert_eq!(n.get(), 0, "a timer runs only inside poll");

        assert!(ctx.poll(false));
        assert_eq!(n.get(), 1);
        let second = timer.expire_time_ns().expect("re-armed by its callback");

        // Drains the notification of the re-arming; the re-armed timer is 50 ms away.
        let mut drained = 0;
        while ctx.poll(false) {
            drained += 1;
            assert!(drained < 100, "non-blocking polls kept making progress");
        }
        let progressed = ctx.poll(false);
        if ctx.now_ns(Clock::Realtime) < second {
            assert!(!progressed);
            assert_eq!(n.get(), 1);
        }

        if n.get() < 2 {
            assert!(ctx.poll(true));
        }
        assert_eq!(n.get(), 2);

        // MAX reached: the callback did not re-arm, so nothing is left to do.
        assert!(!ctx.poll(false));
        assert_eq!(n.get(), 2);
        assert!(!timer.is_pending());

        drop(reg);
        timer.cancel();
    }

    fn context_thread_gets_1ns_timer_slack(backend) {
        // A fresh thread, so its slack does not depend on what other tests did to theirs.
        std::thread::spawn(move || {
            let zero: libc::c_ulong = 0;
            // SAFETY: PR_{GET,SET}_TIMERSLACK take integers and affect only the calling thread.
            let slack = || unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, zero, zero, zero, zero) };
            let default: libc::c_ulong = 50_000;
            // SAFETY: as above.
            let set = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, default, zero, zero, zero) };
            assert_eq!(set, 0);
            assert_eq!(slack(), 50_000);
            let ctx = tests::context(backend);
            assert_eq!(slack(), 1, "QEMU sets 1 ns slack on a loop's thread; aioctx must too");
            drop(ctx);
        })
        .join()
        .unwrap();
    }
}

per_backend! {
    /// "A deadline in the past fires at the next iteration" must hold for any i64, not just recent
    /// ones. (The loop once computed `deadline - now` unchecked: a deadline near i64::MIN overflowed,
    /// a panic in debug builds and a ~292-year wait in release builds.)
    fn deadline_far_in_the_past_fires_at_the_next_blocking_poll(backend) {
        let ctx = tests::context(backend);
        // On another clock, so that it still bounds the wait if the Realtime timeout is computed wrong.
        let (guard, guard_runs) = counting_timer(&ctx, Clock::Host);
        guard.arm_after(BOUND);
        let (timer, runs) = counting_timer(&ctx, Clock::Realtime);
        timer.arm_ns(i64::MIN);
        assert!(ctx.poll(true));
        assert_eq!(runs.get(), 1);
        assert_eq!(guard_runs.get(), 0);
    }
}
