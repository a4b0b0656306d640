//! The time futures (sleep, timeout, interval, Instant) and virtual time, on every backend. Manual polls
//! use tokio-test's mock task: `assert_pending!`/`assert_ready!` show exactly when a future completes.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use aioctx::time::{
    self, interval, sleep, sleep_on, sleep_until, timeout, Clock, Instant, MissedTickBehavior,
};
use aioctx::{AioContext, Backend};
use tests::{context, per_backend};
use tokio_test::task;
use tokio_test::{assert_pending, assert_ready, assert_ready_eq};

fn paused(backend: Backend) -> AioContext {
    AioContext::builder()
        .backend(backend)
        .start_paused(true)
        .build()
        .unwrap()
}

/// Polls the loop until the mock task was woken, bounded.
fn poll_until_woken<T: std::future::Future>(ctx: &AioContext, t: &task::Spawn<T>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !t.is_woken() {
        assert!(std::time::Instant::now() < deadline, "never woken");
        ctx.poll(true);
    }
}

per_backend! {
    fn sleep_is_pending_before_and_ready_after_its_deadline(backend) {
        let ctx = context(backend);
        let _g = ctx.enter();
        // Only a first poll that finished before the deadline can be judged: a test thread stalled
        // for 200 ms (valgrind, a loaded machine) legitimately finds the sleep over, so retry.
        let (start, mut s) = (0..5)
            .find_map(|_| {
                let start = Instant::now();
                let mut s = task::spawn(sleep(Duration::from_millis(200)));
                let first = s.poll();
                (Instant::now() - start < Duration::from_millis(200)).then(|| {
                    assert_pending!(first);
                    (start, s)
                })
            })
            .expect("every first poll came after the deadline");
        assert!(!s.is_woken());
        poll_until_woken(&ctx, &s);
        assert!(Instant::now() - start >= Duration::from_millis(200));
        assert_ready!(s.poll());
    }

    fn zero_and_past_sleeps_are_ready_at_once(backend) {
        let ctx = context(backend);
        let _g = ctx.enter();
        assert_ready!(task::spawn(sleep(Duration::ZERO)).poll());
        assert_ready!(task::spawn(sleep_until(Instant::now() - Duration::from_secs(1))).poll());
    }

    fn dropping_a_pending_sleep_removes_its_timer(backend) {
        let ctx = context(backend);
        let _g = ctx.enter();
        let mut s = task::spawn(sleep(Duration::from_secs(3600)));
        assert_pending!(s.poll());
        drop(s);
        // Nothing is armed any more: a blocking poll with a short timer returns for that timer only.
        let fired = Rc::new(Cell::new(false));
        let t = ctx.timer(Clock::Realtime, { let f = fired.clone(); move || f.set(true) });
        t.arm_after(Duration::from_micros(100));
        while !fired.get() {
            ctx.poll(true);
        }
        assert_eq!(ctx.stats().timers_fired, 1, "the dropped sleep never fired");
    }

    fn reset_moves_a_sleep(backend) {
        let ctx = paused(backend);
        ctx.block_on(async {
            let start = Instant::now();
            let mut s = sleep(Duration::from_secs(10));
            s.reset(start + Duration::from_secs(2));
            (&mut s).await;
            assert_eq!(Instant::now() - start, Duration::from_secs(2));
        });
    }

    // On paused time, so that a slow machine (valgrind) cannot let the deadline pass before the
    // first poll.
    fn timeout_ok_and_elapsed(backend) {
        let ctx = paused(backend);
        let _g = ctx.enter();
        let mut quick = task::spawn(timeout(Duration::from_secs(1), async { 3 }));
        assert_ready_eq!(quick.poll(), Ok(3));

        let mut slow = task::spawn(timeout(Duration::from_millis(1), std::future::pending::<()>()));
        assert_pending!(slow.poll());
        time::advance(Duration::from_millis(1));
        poll_until_woken(&ctx, &slow);
        let err = assert_ready!(slow.poll()).unwrap_err();
        assert_eq!(err.to_string(), "deadline has elapsed");
    }

    fn join_handle_after_abort_is_cancelled(backend) {
        let ctx = context(backend);
        let _g = ctx.enter();
        let h = ctx.spawn_local(std::future::pending::<()>());
        let mut join = task::spawn(h);
        assert_pending!(join.poll());
        join.abort();
        poll_until_woken(&ctx, &join);
        assert!(assert_ready!(join.poll()).unwrap_err().is_cancelled());
    }

    /// Virtual time: a paused clock stops sleeps on it; advancing fires them; auto-advance makes an hour
    /// of sleeping instant.
    fn virtual_sleeps_stop_while_paused(backend) {
        let ctx = context(backend);
        let _g = ctx.enter();
        let clock = ctx.virtual_clock();
        clock.pause();
        let mut s = task::spawn(sleep_on(Clock::Virtual, Duration::from_micros(100)));
        assert_pending!(s.poll());
        // Real time passes far beyond the deadline; the guest's does not.
        let until = std::time::Instant::now() + Duration::from_millis(2);
        while std::time::Instant::now() < until {
            ctx.poll(false);
        }
        assert!(!s.is_woken());
        assert_pending!(s.poll());
        clock.advance(Duration::from_micros(100));
        poll_until_woken(&ctx, &s);
        assert_ready!(s.poll());
    }

    fn start_paused_auto_advances(backend) {
        let ctx = paused(backend);
        let real = std::time::Instant::now();
        let virt = ctx.block_on(async {
            let t0 = Instant::now();
            sleep(Duration::from_secs(3600)).await;
            let a = Instant::now() - t0;
            // Two sleeps racing: the earlier wins, and time stops there.
            let r = timeout(Duration::from_secs(5), sleep(Duration::from_secs(60))).await;
            assert!(r.is_err());
            (a, Instant::now() - t0)
        });
        assert_eq!(virt.0, Duration::from_secs(3600));
        assert_eq!(virt.1, Duration::from_secs(3605));
        assert!(real.elapsed() < Duration::from_secs(5), "virtual hours took {:?}", real.elapsed());
    }

    fn pause_advance_resume_from_a_task(backend) {
        let ctx = context(backend);
        ctx.block_on(async {
            time::pause();
            let t0 = Instant::now();
            let woke = Rc::new(Cell::new(false));
            let sleeper = aioctx::spawn_local({
                let woke = woke.clone();
                async move {
                    sleep(Duration::from_secs(30)).await;
                    woke.set(true);
                }
            });
            aioctx::yield_now().await;
            time::advance(Duration::from_secs(29));
            aioctx::yield_now().await;
            assert!(!woke.get());
            time::advance(Duration::from_secs(1));
            sleeper.await.unwrap();
            assert!(woke.get());
            assert_eq!(Instant::now() - t0, Duration::from_secs(30));
            time::resume();
            let before = Instant::now();
            sleep(Duration::from_micros(200)).await;
            assert!(Instant::now() - before >= Duration::from_micros(200), "resumed time runs");
        });
    }

    fn interval_ticks_and_missed_tick_behaviours(backend) {
        let ctx = paused(backend);
        ctx.block_on(async {
            let period = Duration::from_millis(10);
            // Burst (default): missed ticks fire back to back on the original grid.
            let mut burst = interval(period);
            let t0 = burst.tick().await; // the first tick is immediate
            assert_eq!(burst.missed_tick_behavior(), MissedTickBehavior::Burst);
            time::advance(Duration::from_millis(35));
            assert_eq!(burst.tick().await - t0, Duration::from_millis(10));
            assert_eq!(burst.tick().await - t0, Duration::from_millis(20));
            assert_eq!(burst.tick().await - t0, Duration::from_millis(30));
            let t4 = burst.tick().await;
            assert_eq!(t4 - t0, Duration::from_millis(40), "caught up: back on the grid");

            // Delay: after a late tick the grid restarts one period from then.
            let mut delay = interval(period);
            delay.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let d0 = delay.tick().await;
            time::advance(Duration::from_millis(25));
            let late = delay.tick().await;
            assert_eq!(late - d0, Duration::from_millis(10));
            let next = delay.tick().await;
            assert_eq!(next - d0, Duration::from_millis(35), "25 ms (when it fired) + 10 ms");

            // Skip: the missed ticks are dropped, the grid is kept.
            let mut skip = interval(period);
            skip.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let s0 = skip.tick().await;
            time::advance(Duration::from_millis(25));
            assert_eq!(skip.tick().await - s0, Duration::from_millis(10));
            assert_eq!(skip.tick().await - s0, Duration::from_millis(30));
        });
    }

    fn sleeps_in_send_tasks_spawned_remotely(backend) {
        let ctx = context(backend);
        let remote = ctx.remote();
        let h = std::thread::spawn(move || {
            remote.spawn(async {
                let t0 = Instant::now();
                sleep(Duration::from_micros(300)).await;
                Instant::now() - t0
            })
        })
        .join()
        .unwrap();
        let slept = ctx.block_on(h).unwrap();
        assert!(slept >= Duration::from_micros(300), "{slept:?}");
    }
}

#[test]
#[should_panic(expected = "outside an aioctx context")]
fn polling_a_sleep_outside_a_context_panics_clearly() {
    let mut s = task::spawn(sleep(Duration::from_millis(1)));
    let _ = s.poll();
}
