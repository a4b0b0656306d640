//! Adaptive busy-polling (QEMU's poll window sized from per-handler weighted averages of block time,
//! `poll_begin`/`poll_end`, run-time poll parameters) and the notify_me protocol. The window rule's
//! decisions are unit-tested on scripted block times next to it (`runtime/src/context/poll_params.rs`);
//! here the real loop runs it.
//!
//! The polling tests do not race another thread against the poll window. All their work is made by the
//! loop's own thread: the test queues a request that the device's poll function sees from a chosen
//! instant on, and arms the device's fd (a timerfd) to fire at or after that instant, as the guest's kick.
//! The kernel's timer and the loop's own clock reads decide which path finds the request, and every
//! timing has a wide margin (windows of tens of ms catch requests due in 2 ms). Where descheduling the
//! loop thread can still legitimately change an outcome (a wait longer than `max_ns` shrinks the window;
//! a polling loop preempted past its window leaves the request to the final poll), the test repeats
//! the round, a bounded number of times, instead of asserting on it.
//!
//! Nothing here sleeps: waits block in the loop, with a guard timer so that a lost wakeup fails the test
//! instead of hanging it, or spin on a condition with a deadline.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aioctx::io_uring::{opcode, types};
use aioctx::{AioContext, Backend, EventNotifier, FdHandlers, FdRegistration, PollParams, Stats};
use tests::{per_backend, spin_until, Guard, BOUND};

/// What the polling tests run with: the window grows x100 per step (or straight to the block-time
/// average, whichever is larger) up to 100 ms, so a few dispatches make it far wider than the requests
/// it is to catch, and only waits averaging 100 ms (a thread descheduled for that long) reset it.
const PARAMS: PollParams = PollParams {
    max_ns: 100_000_000,
    grow: 100,
    shrink: 0,
    weight: 0,
    min_hit_percent: 0,
};
/// A request in a growth round is visible to polling this long after it is queued...
const ARRIVES: Duration = Duration::from_millis(2);
/// ...and the fd is kicked this long after it is queued: a loop that did not poll that long sleeps until
/// then, and that wait (shorter than `max_ns`, longer than its window) grows the window. Far after
/// `ARRIVES`, so that the kick is not pending yet when a poll hit is dispatched.
const KICK: Duration = Duration::from_millis(20);
/// Growth rounds allowed before polling must have caught a request (a few are needed).
const ROUNDS: u32 = 200;
/// Fires the fd at once (a timerfd armed with 0 would be disarmed instead).
const NOW: Duration = Duration::from_nanos(1);

/// Which way the loop found a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// The fd fired and the read handler ran.
    Read,
    /// The poll function saw it and `poll_ready` ran.
    Poll,
}

/// One blocking iteration of `ctx` that a plain thread notifies once it sees the loop blocked; returns
/// the stats before and after. The iteration must not count as progress.
fn notify_from_another_thread_while_blocked(ctx: &AioContext) -> (Stats, Stats) {
    let (before, remote) = (ctx.stats(), ctx.remote());
    let waker = std::thread::spawn(move || {
        let waits = || remote.stats().blocking_waits;
        spin_until("the loop to block", || waits() > before.blocking_waits);
        remote.notify();
    });
    assert!(!ctx.poll(true));
    waker.join().unwrap();
    (before, ctx.stats())
}

/// A timerfd on the monotonic clock (the clock of `Instant`), non-blocking.
fn timerfd() -> OwnedFd {
    // SAFETY: timerfd_create takes no pointers.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    assert!(fd >= 0, "timerfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Makes the timerfd fire once `after` from now; `Duration::ZERO` disarms it.
fn arm(fd: RawFd, after: Duration) {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: after.subsec_nanos().into(),
        },
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
    let r = unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) };
    assert_eq!(r, 0, "timerfd_settime: {}", io::Error::last_os_error());
}

/// Takes a pending expiration, if any, so the fd is no longer readable.
fn drain(fd: RawFd) {
    let mut ticks = 0u64;
    // SAFETY: reads at most 8 bytes into `ticks`; the fd is non-blocking.
    let n = unsafe { libc::read(fd, (&mut ticks as *mut u64).cast(), 8) };
    let eagain = n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
    assert!(
        n == 8 || eagain,
        "reading the timerfd: {}",
        io::Error::last_os_error()
    );
}

/// What the device's callbacks see and record.
struct State {
    kick: OwnedFd,
    /// The queued request, visible to the poll function from this instant on.
    request: Cell<Option<Instant>>,
    poll_calls: Cell<u64>,
    by_read: Cell<u32>,
    by_poll: Cell<u32>,
    /// "begin" and "end", as the loop enters and leaves poll mode.
    phases: RefCell<Vec<&'static str>>,
    poll_calls_at_end: Cell<u64>,
}

impl State {
    fn poll(&self) -> bool {
        self.poll_calls.set(self.poll_calls.get() + 1);
        self.request.get().is_some_and(|at| Instant::now() >= at)
    }

    /// Takes the queued request (the read handler may also run for a kick that fired after the poll path
    /// took it) and counts it in `path`. Either path cancels the kick.
    fn serve(&self, path: &Cell<u32>) {
        arm(self.kick.as_raw_fd(), Duration::ZERO);
        drain(self.kick.as_raw_fd());
        if self.request.take().is_some() {
            path.set(path.get() + 1);
        }
    }
}

/// A virtqueue-like device: a request queue its poll function checks, and a kick fd (the ioeventfd).
struct Device {
    _reg: FdRegistration,
    state: Rc<State>,
}

impl Device {
    fn new(ctx: &AioContext) -> Device {
        let state = Rc::new(State {
            kick: timerfd(),
            request: Cell::new(None),
            poll_calls: Cell::new(0),
            by_read: Cell::new(0),
            by_poll: Cell::new(0),
            phases: RefCell::default(),
            poll_calls_at_end: Cell::new(0),
        });
        let on = |f: fn(&State)| {
            let s = state.clone();
            move || f(&s)
        };
        let s = state.clone();
        let handlers = FdHandlers::new()
            .read(on(|s| s.serve(&s.by_read)))
            .poll(move || s.poll(), on(|s| s.serve(&s.by_poll)))
            .poll_begin_end(
                on(|s| s.phases.borrow_mut().push("begin")),
                on(|s| {
                    s.phases.borrow_mut().push("end");
                    s.poll_calls_at_end.set(s.poll_calls.get());
                }),
            );
        let reg = ctx
            .set_fd_handler(state.kick.as_raw_fd(), handlers)
            .unwrap();
        Device { _reg: reg, state }
    }

    fn poll_calls(&self) -> u64 {
        self.state.poll_calls.get()
    }

    fn served(&self) -> (u32, u32) {
        (self.state.by_read.get(), self.state.by_poll.get())
    }

    /// Queues a request visible to polling `arrives` from now, kicks the fd `kick` from now (not
    /// earlier), and runs the loop until the request is served. Returns the path that served it.
    fn serve_one(
        &self,
        ctx: &AioContext,
        guard: &Guard,
        arrives: Duration,
        kick: Duration,
    ) -> Path {
        assert!(kick >= arrives && kick > Duration::ZERO);
        self.serve_visible_at(ctx, guard, Instant::now() + arrives, kick)
    }

    /// [`serve_one`](Self::serve_one) for a request the poll function sees from `visible` on.
    fn serve_visible_at(
        &self,
        ctx: &AioContext,
        guard: &Guard,
        visible: Instant,
        kick: Duration,
    ) -> Path {
        let (read0, poll0) = self.served();
        self.state.request.set(Some(visible));
        arm(self.state.kick.as_raw_fd(), kick);
        let total = || self.served().0 + self.served().1;
        guard.poll_until(ctx, "a request", || total() > read0 + poll0);
        assert_eq!(total(), read0 + poll0 + 1, "one request served twice");
        if self.served().1 > poll0 {
            Path::Poll
        } else {
            Path::Read
        }
    }

    /// A request that is visible at once and kicked at once: found by whichever path looks first.
    fn serve_now(&self, ctx: &AioContext, guard: &Guard) -> Path {
        self.serve_one(ctx, guard, Duration::ZERO, NOW)
    }

    /// A request that is visible at once but kicked only 1 ms later: a loop that busy-polls at all finds
    /// it by polling, before the kick is pending (which would stop polling on io_uring).
    fn serve_visible_before_kick(&self, ctx: &AioContext, guard: &Guard) -> Path {
        self.serve_one(ctx, guard, Duration::ZERO, Duration::from_millis(1))
    }

    /// Runs growth rounds until busy-polling catches a request inside its window (a poll hit). While
    /// the window is shorter than `ARRIVES` the loop polls in vain and sleeps until the kick; that wait
    /// grows the window. A round that a descheduled thread spoiled (a wait over `max_ns` resets the
    /// window; a polling loop preempted past its window leaves the request to the final poll after
    /// `poll_end`, which is not a hit) is repeated.
    fn poll_until_hit(&self, ctx: &AioContext, guard: &Guard) {
        for _ in 0..ROUNDS {
            let hits = ctx.stats().poll_hits;
            let path = self.serve_one(ctx, guard, ARRIVES, KICK);
            if path == Path::Poll && ctx.stats().poll_hits > hits {
                return;
            }
        }
        let ((r, p), s) = (self.served(), ctx.stats());
        panic!("the poll window never caught a request: {r} by read, {p} by poll, {s:?}");
    }

    fn phases(&self) -> std::cell::Ref<'_, Vec<&'static str>> {
        self.state.phases.borrow()
    }

    fn count(&self, phase: &str) -> usize {
        self.phases().iter().filter(|p| **p == phase).count()
    }
}

/// Polls `ctx` until it has slept once, woken by another thread as soon as it is asleep. (A timer would
/// not do: a descheduled loop can spin its whole timeout away.)
fn sleep_until_woken(ctx: &AioContext, guard: &Guard) {
    let waits = ctx.stats().blocking_waits;
    let waker = std::thread::spawn({
        let remote = ctx.remote();
        move || {
            spin_until("the loop to sleep", || {
                remote.stats().blocking_waits > waits
            });
            remote.notify();
        }
    });
    guard.poll_until(ctx, "a sleep", || ctx.stats().blocking_waits > waits);
    waker.join().unwrap();
}

fn polling_context(backend: Backend, params: PollParams) -> AioContext {
    let ctx = AioContext::builder()
        .backend(backend)
        .poll_params(params)
        .build()
        .unwrap();
    assert_eq!(ctx.poll_params(), params);
    ctx
}

fn no_polling_since(ctx: &AioContext, before: &Stats) {
    let now = ctx.stats();
    let polling = |s: &Stats| (s.poll_hits, s.poll_misses, s.poll_ns);
    assert_eq!(polling(&now), polling(before), "{now:?}");
}

/// The `poll-weight` tests: a 10 ms cap, growth x100, reset when averages pass the cap, and the
/// default weight (the newest block counts 1/8).
const WEIGHTED: PollParams = PollParams {
    max_ns: 10_000_000,
    grow: 100,
    shrink: 0,
    weight: 0,
    min_hit_percent: 0,
};

impl Device {
    /// Short rounds (visible after 1 ms, kicked after 5 ms: waits far under `WEIGHTED.max_ns`) until
    /// polling catches one. A round that a descheduled thread stretched past the cap is repeated.
    fn short_rounds_until_hit(&self, ctx: &AioContext, guard: &Guard) {
        for _ in 0..ROUNDS {
            let hits = ctx.stats().poll_hits;
            let path = self.serve_one(
                ctx,
                guard,
                Duration::from_millis(1),
                Duration::from_millis(5),
            );
            if path == Path::Poll && ctx.stats().poll_hits > hits {
                return;
            }
        }
        panic!("the poll window never caught a request: {:?}", ctx.stats());
    }

    /// A request the poll function never sees (it shows up only with the kick, `kick` from now):
    /// a polling phase in this round can only run out its window or be cut short by the kick.
    fn serve_by_kick_only(&self, ctx: &AioContext, guard: &Guard, kick: Duration) {
        let never = Instant::now() + Duration::from_secs(3600);
        let path = self.serve_visible_at(ctx, guard, never, kick);
        assert_eq!(path, Path::Read, "served by polling");
    }

    /// A round in which the loop blocks `long` (the request shows up only with the kick).
    fn long_round(&self, ctx: &AioContext, guard: &Guard, long: Duration) {
        self.serve_one(ctx, guard, long, long);
    }
}

/// The hit-rate gate's tests: the window follows the block-time average exactly (grow 1), up to
/// 100 ms, and the loop polls at every chance only while 75% of recent phases found work.
const GATED: PollParams = PollParams {
    max_ns: 100_000_000,
    grow: 1,
    shrink: 0,
    weight: 0,
    min_hit_percent: 75,
};

/// The kick of a round polling cannot catch: 20 ms, past a window opened by 5 ms rounds; the window
/// follows the block-time average, which approaches 20 ms from below, so it stays short of the kick
/// and every phase misses.
const MISS_KICK: Duration = Duration::from_millis(20);

per_backend! {
    /// aioctx's hit-rate gate in the real loop: once polling keeps missing, the loop spins in one
    /// round in 8 (then 16, 32...) and sleeps at once in the others (with `min_hit_percent` 0, QEMU's
    /// rule, it spins in every one); phases that find work again open the gate.
    fn polling_that_keeps_missing_spins_at_one_chance_in_8(backend) {
        for gated in [true, false] {
            let params = if gated {
                GATED
            } else {
                PollParams { min_hit_percent: 0, ..GATED }
            };
            let ctx = polling_context(backend, params);
            let dev = Device::new(&ctx);
            let guard = Guard::new(&ctx);
            dev.short_rounds_until_hit(&ctx, &guard);
            let phases =
                phases_in_16_after_3_misses(&ctx, || dev.serve_by_kick_only(&ctx, &guard, MISS_KICK));
            if !gated {
                assert!(phases >= 16, "{phases} polling phases in 16 rounds, {:?}", ctx.stats());
                continue;
            }
            assert!((1..=4).contains(&phases), "{phases} polling phases in 16 rounds: {:?}", ctx.stats());
            // Requests polling can catch (visible after 1 ms, kicked after 10 ms): the sampled phases
            // hit, and once the rate is back over 75% every round is served by polling.
            let mut polled_in_a_row = 0;
            for _ in 0..ROUNDS {
                let hits = ctx.stats().poll_hits;
                let path = dev.serve_one(&ctx, &guard, Duration::from_millis(1), Duration::from_millis(10));
                let hit = path == Path::Poll && ctx.stats().poll_hits > hits;
                polled_in_a_row = if hit { polled_in_a_row + 1 } else { 0 };
                if polled_in_a_row == 4 {
                    break;
                }
            }
            assert_eq!(polled_in_a_row, 4, "the gate never opened again: {:?}", ctx.stats());
        }
    }

    /// The gate keeps the phases that wait for the context's own I/O apart from the others: I/O that
    /// polling does not catch (a 20 ms io_uring timeout, like writes a kernel worker completes late)
    /// closes the gate for I/O waits only, and the device's next requests are still caught by polling.
    /// (On epoll and poll the user SQEs go on a ring of their own whose fd is a polled handler: its
    /// completions size the window like any event, which then covers them, and those waits hit.)
    fn io_waits_that_miss_leave_polling_for_events_open(backend) {
        let ctx = polling_context(backend, GATED);
        let dev = Device::new(&ctx);
        let guard = Guard::new(&ctx);
        dev.short_rounds_until_hit(&ctx, &guard);
        let io_round = || {
            let done = Rc::new(Cell::new(false));
            let timespec = Box::new(types::Timespec::new().nsec(MISS_KICK.as_nanos() as u32));
            let sqe = opcode::Timeout::new(&*timespec).build();
            let on_complete = {
                let done = done.clone();
                move |_| {
                    drop(timespec);
                    done.set(true);
                }
            };
            // SAFETY: the timespec the SQE points at moves into the completion callback, which the
            // context keeps until the CQE has arrived.
            unsafe { ctx.add_sqe(sqe, on_complete) }.unwrap();
            guard.poll_until(&ctx, "the timeout", || done.get());
        };
        // Missed I/O waits close the gate for I/O waits...
        let phases = phases_in_16_after_3_misses(&ctx, io_round);
        if backend == Backend::IoUring {
            assert!(phases <= 4, "{phases} polling phases in 16 I/O rounds: {:?}", ctx.stats());
        }
        // ...and not for the device: every one of its next rounds polls (whether a phase catches
        // its request depends on the window, which a descheduled thread can outrun).
        for round in 0..5 {
            let phases = polling_phases(&ctx);
            dev.serve_one(&ctx, &guard, Duration::from_millis(1), Duration::from_millis(10));
            assert!(
                polling_phases(&ctx) > phases,
                "round {round} did not poll: {:?}",
                ctx.stats()
            );
        }
    }

    /// QEMU's `poll-weight` rule in the real loop: waits that keep exceeding `max_ns` close the window
    /// (no polling phase at all while they last), and short waits open it again.
    fn a_loop_that_keeps_blocking_long_stops_polling(backend) {
        let ctx = polling_context(backend, WEIGHTED);
        let dev = Device::new(&ctx);
        let guard = Guard::new(&ctx);
        dev.short_rounds_until_hit(&ctx, &guard);
        // 100 ms moves an average of at most 10 ms past the cap: the window resets.
        dev.long_round(&ctx, &guard, Duration::from_millis(100));
        let before = ctx.stats();
        for _ in 0..2 {
            dev.long_round(&ctx, &guard, Duration::from_millis(30));
        }
        no_polling_since(&ctx, &before);
        dev.short_rounds_until_hit(&ctx, &guard);
    }

    /// One wait past `max_ns` among short ones moves the handler's average by 1/8 of itself, so the
    /// window stays open and the next short request is caught by polling (the rule before
    /// `poll-weight` reset the window on any wait over `max_ns`). A descheduled thread can stretch
    /// the outlier far enough to reset the average: the sequence is retried.
    fn one_long_wait_does_not_close_the_window(backend) {
        let ctx = polling_context(backend, WEIGHTED);
        let dev = Device::new(&ctx);
        let guard = Guard::new(&ctx);
        let caught = (0..20).any(|_| {
            dev.short_rounds_until_hit(&ctx, &guard);
            dev.long_round(&ctx, &guard, Duration::from_millis(20));
            let hits = ctx.stats().poll_hits;
            let path = dev.serve_one(&ctx, &guard, Duration::from_millis(1), Duration::from_millis(5));
            path == Path::Poll && ctx.stats().poll_hits > hits
        });
        assert!(caught, "the window closed after every outlier: {:?}", ctx.stats());
    }
}

per_backend! {
    fn adaptive_polling_grows_and_then_finds_kicks_by_polling(backend) {
        let ctx = polling_context(backend, PARAMS);
        let dev = Device::new(&ctx);
        // The guard's poll takes the notifications that creating the context and registering the device
        // left: the context's own notifier is dispatched once and the window opens to that short block.
        let guard = Guard::new(&ctx);
        let before = ctx.stats();
        // The device has no block-time average yet: a request that arrives in 50 ms can only come in
        // through the fd. That wait is shorter than max_ns: the window grows toward it.
        let late = Duration::from_millis(50);
        assert_eq!(dev.serve_one(&ctx, &guard, late, late), Path::Read);
        assert_eq!(ctx.stats().poll_hits, before.poll_hits, "{:?}", ctx.stats());
        dev.poll_until_hit(&ctx, &guard);
        let after = ctx.stats();
        assert!(after.poll_hits > before.poll_hits, "{after:?}");
        // The hit polled until the request arrived, ARRIVES after it was queued.
        assert!(after.poll_ns > before.poll_ns, "{after:?}");
        assert!(dev.served().0 >= 1);
    }

    fn poll_max_ns_zero_never_polls(backend) {
        let ctx = polling_context(backend, PollParams::default());
        let guard = Guard::new(&ctx);
        let dev = Device::new(&ctx);
        for _ in 0..30 {
            assert_eq!(dev.serve_visible_before_kick(&ctx, &guard), Path::Read);
        }
        let stats = ctx.stats();
        assert_eq!((stats.poll_hits, stats.poll_misses, stats.poll_ns), (0, 0, 0), "{stats:?}");
        assert_eq!(dev.served(), (30, 0));
        assert_eq!(dev.poll_calls(), 0);
        assert_eq!(dev.count("begin") + dev.count("end"), 0);
    }

    fn a_handler_without_poll_fn_disables_polling_until_dropped(backend) {
        let ctx = polling_context(backend, PARAMS);
        let guard = Guard::new(&ctx);
        let dev = Device::new(&ctx);
        let plain = EventNotifier::new().unwrap();
        let plain_reg = ctx.set_event_notifier(&plain, || {}, None).unwrap();
        let before = ctx.stats();
        for _ in 0..40 {
            let path = dev.serve_visible_before_kick(&ctx, &guard);
            assert_eq!(path, Path::Read, "polled while a handler cannot poll");
        }
        no_polling_since(&ctx, &before);
        assert_eq!(dev.poll_calls(), 0);
        assert_eq!(dev.count("begin") + dev.count("end"), 0);

        drop(plain_reg);
        dev.poll_until_hit(&ctx, &guard);
        assert!(ctx.stats().poll_hits > before.poll_hits);
    }

    fn poll_begin_and_end_bracket_poll_mode_with_a_final_poll(backend) {
        let ctx = polling_context(backend, PARAMS);
        let guard = Guard::new(&ctx);
        let dev = Device::new(&ctx);
        dev.poll_until_hit(&ctx, &guard);
        // A hit does not leave poll mode: QEMU leaves it only right before sleeping. (The kick is
        // KICK - ARRIVES away, so io_uring has no completion pending that would make the loop wait.)
        assert_eq!(dev.phases().last(), Some(&"begin"), "{:?}", dev.phases());
        assert_eq!(dev.count("begin"), dev.count("end") + 1);

        // Nothing arrives now: the loop polls its window, leaves poll mode and sleeps until another
        // thread wakes it.
        let ends = dev.count("end");
        sleep_until_woken(&ctx, &guard);
        assert!(dev.count("end") > ends);
        assert_eq!(dev.phases().last(), Some(&"end"));
        assert_eq!(
            dev.poll_calls(),
            dev.state.poll_calls_at_end.get() + 1,
            "after poll_end the poll fn runs exactly once more before the loop sleeps"
        );
        let phases = dev.phases();
        assert_eq!(phases.first(), Some(&"begin"));
        for pair in phases.windows(2) {
            assert_ne!(pair[0], pair[1], "begin/end do not alternate: {phases:?}");
        }
    }

    fn set_poll_params_at_run_time(backend) {
        let ctx = polling_context(backend, PARAMS);
        let guard = Guard::new(&ctx);
        let dev = Device::new(&ctx);
        dev.poll_until_hit(&ctx, &guard);

        let off = PollParams { max_ns: 0, grow: 0, shrink: 0, weight: 0, min_hit_percent: 0 };
        ctx.set_poll_params(off).unwrap();
        assert_eq!(ctx.poll_params(), off);
        let before = ctx.stats();
        // The loop is still in poll mode from the hit. Leaving it, right before it next sleeps, calls
        // the poll fn once more (QEMU's poll_set_started), which may catch a request: serve requests
        // until it left.
        for _ in 0..10 {
            if dev.phases().last() == Some(&"end") {
                break;
            }
            dev.serve_now(&ctx, &guard);
        }
        assert_eq!(dev.phases().last(), Some(&"end"), "poll mode never ended");
        let (calls, begins) = (dev.poll_calls(), dev.count("begin"));
        for _ in 0..30 {
            let path = dev.serve_visible_before_kick(&ctx, &guard);
            assert_eq!(path, Path::Read, "polled after max_ns was set to 0");
        }
        assert_eq!(dev.poll_calls(), calls, "the poll fn ran with polling off");
        assert_eq!(dev.count("begin"), begins, "poll mode entered with polling off");
        no_polling_since(&ctx, &before);

        for bad in [
            PollParams { max_ns: u64::MAX, ..off },
            PollParams { max_ns: i64::MAX as u64 + 1, ..off },
            PollParams { max_ns: 32_768, grow: u64::MAX, ..off },
            PollParams { max_ns: 32_768, weight: 63, ..off },
            PollParams { max_ns: 32_768, min_hit_percent: 101, ..off },
        ] {
            let err = ctx.set_poll_params(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}: {err}");
            assert_eq!(ctx.poll_params(), off, "a rejected change was applied");
        }

        ctx.set_poll_params(PARAMS).unwrap();
        let hits = ctx.stats().poll_hits;
        dev.poll_until_hit(&ctx, &guard);
        assert!(ctx.stats().poll_hits > hits);
    }

    fn notify_writes_the_eventfd_only_for_a_sleeping_loop(backend) {
        let ctx = tests::context(backend);
        let guard = Guard::new(&ctx);
        // On the home thread, while the loop is not waiting: a flag, no write, still delivered.
        let before = ctx.stats();
        (0..3).for_each(|_| ctx.notify());
        let after = ctx.stats();
        assert_eq!(after.notify_skipped, before.notify_skipped + 3);
        assert_eq!(after.notify_writes, before.notify_writes);
        assert!(!ctx.poll(true), "a notification is not progress");
        assert_eq!(ctx.stats().blocking_waits, before.blocking_waits, "a notified loop slept");

        // From a plain thread while the loop sleeps: one write, and the loop returns.
        let (before, after) = notify_from_another_thread_while_blocked(&ctx);
        assert!(!guard.expired(), "the remote notification did not wake the loop");
        assert_eq!(after.blocking_waits, before.blocking_waits + 1);
        assert_eq!(after.notify_writes, before.notify_writes + 1, "{after:?}");
    }

    fn msg_ring_wakes_a_sleeping_loop_without_the_eventfd(backend) {
        // Opt-in: on io_uring a remote notification posts a CQE into the loop's ring; epoll and
        // poll have no ring to post into and write the eventfd.
        let ctx = AioContext::builder()
            .backend(backend)
            .wake_by_msg_ring(true)
            .build()
            .unwrap();
        let guard = Guard::new(&ctx);
        for round in 0..20 {
            let (before, after) = notify_from_another_thread_while_blocked(&ctx);
            assert!(!guard.expired(), "round {round}: the notification did not wake the loop");
            let posts = after.notify_ring_posts - before.notify_ring_posts;
            let writes = after.notify_writes - before.notify_writes;
            let expected = if backend == Backend::IoUring { (1, 0) } else { (0, 1) };
            assert_eq!((posts, writes), expected, "round {round}: {after:?}");
        }
    }

    fn msg_ring_remote_spawns_all_run(backend) {
        // A bounded stress of the cross-thread path: two threads spawn onto a sleeping IOThread
        // that is woken through its ring; every task runs exactly once.
        const PER_THREAD: u64 = 2_000;
        let io = aioctx::IoThread::builder()
            .backend(backend)
            .poll_max_ns(0)
            .wake_by_msg_ring(true)
            .spawn()
            .unwrap();
        let ran = Arc::new(AtomicU64::new(0));
        let spawners: Vec<_> = (0..2)
            .map(|_| {
                let (remote, ran) = (io.remote().clone(), ran.clone());
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let ran = ran.clone();
                        let task = remote.spawn(async move {
                            ran.fetch_add(1, Ordering::Relaxed);
                            i
                        });
                        // Every 16th spawn waits for its task, so the loop goes back to sleep often.
                        if i % 16 == 0 {
                            assert_eq!(task.join_blocking().unwrap(), i);
                        }
                    }
                })
            })
            .collect();
        for spawner in spawners {
            spawner.join().unwrap();
        }
        assert_eq!(io.remote().call(|| ()).ok(), Some(()));
        spin_until("every task to run", || ran.load(Ordering::Relaxed) == 2 * PER_THREAD);
        let stats = io.remote().stats();
        if backend == Backend::IoUring {
            assert!(stats.notify_ring_posts > 0, "{stats:?}");
        } else {
            assert_eq!(stats.notify_ring_posts, 0, "{stats:?}");
        }
        io.stop();
    }

    fn notification_bursts_cost_at_most_one_write_per_sleep(backend) {
        const ROUNDS: u32 = 20;
        const BURST: u64 = 100;
        let ctx = tests::context(backend);
        let guard = Guard::new(&ctx);
        let before = ctx.stats();
        // The round the loop is in, the last round burst, and the loop's blocking waits at its start.
        let sync = Arc::new((AtomicU32::new(0), AtomicU32::new(0), AtomicU64::new(0)));
        let (remote, sync2) = (ctx.remote(), sync.clone());
        let burster = std::thread::spawn(move || {
            let (step, done, baseline) = &*sync2;
            for k in 1..=ROUNDS {
                spin_until("the loop to block", || {
                    step.load(Ordering::Acquire) == k
                        && remote.stats().blocking_waits > baseline.load(Ordering::Acquire)
                });
                for _ in 0..BURST {
                    remote.notify();
                }
                done.store(k, Ordering::Release);
                // After the store, so the loop cannot miss that this round is over.
                remote.notify();
            }
        });
        let (step, done, baseline) = &*sync;
        for k in 1..=ROUNDS {
            baseline.store(ctx.stats().blocking_waits, Ordering::Release);
            step.store(k, Ordering::Release);
            guard.poll_until(&ctx, "a burst", || done.load(Ordering::Acquire) == k);
        }
        burster.join().unwrap();
        let after = ctx.stats();
        let writes = after.notify_writes - before.notify_writes;
        let sleeps = after.blocking_waits - before.blocking_waits;
        let total = writes + after.notify_skipped - before.notify_skipped;
        assert!(writes <= sleeps, "{writes} eventfd writes for {sleeps} sleeps");
        assert!(writes >= u64::from(ROUNDS), "every sleep needed one write to end: {after:?}");
        assert!(total >= u64::from(ROUNDS) * (BURST + 1), "notifications went uncounted");

        // A loop that never sleeps costs notifiers no eventfd write at all.
        let before = ctx.stats();
        let finished = Arc::new(AtomicBool::new(false));
        let (remote, f) = (ctx.remote(), finished.clone());
        let burster = std::thread::spawn(move || {
            (0..10_000).for_each(|_| remote.notify());
            f.store(true, Ordering::Release);
        });
        let give_up = Instant::now() + BOUND;
        while !finished.load(Ordering::Acquire) {
            assert!(Instant::now() < give_up);
            ctx.poll(false);
        }
        burster.join().unwrap();
        assert_eq!(ctx.stats().notify_writes, before.notify_writes);
    }

}

per_backend! {
    fn notifier_waiter_hooks_bracket_poll_mode(backend) {
        let ctx = polling_context(backend, PARAMS);
        let guard = Guard::new(&ctx);
        let kick = EventNotifier::new().unwrap();
        let phases: Rc<RefCell<Vec<&'static str>>> = Rc::default();
        let work = Rc::new(Cell::new(false));
        let _enter = ctx.enter();
        let waiter = kick
            .waiter_polling_with(
                {
                    let w = work.clone();
                    move || w.get()
                },
                {
                    let p = phases.clone();
                    move || p.borrow_mut().push("begin")
                },
                {
                    let p = phases.clone();
                    move || p.borrow_mut().push("end")
                },
            )
            .unwrap();
        // Quick wakeups grow the waiter's window until the loop polls before it waits. Work is
        // alternately kicked and only published in memory: with io_uring a kick made before the wait
        // is a completion already, which makes the loop skip polling.
        for round in 0..ROUNDS {
            if phases.borrow().contains(&"begin") {
                break;
            }
            if round % 2 == 0 {
                kick.set().unwrap();
            } else {
                work.set(true);
            }
            let seen = ctx.block_on(aioctx::time::timeout(BOUND, waiter.wait()));
            // Work only in memory is seen only by a polling loop; a window shrunk by a descheduled
            // thread may miss it, and the next kick round grows it again.
            assert!(seen.is_ok() || round % 2 == 1, "the waiter missed a kick");
            work.set(false);
        }
        assert_eq!(phases.borrow().first(), Some(&"begin"), "the loop never polled");

        // Nothing arrives now: the loop leaves poll mode before it sleeps until another thread wakes it.
        sleep_until_woken(&ctx, &guard);
        let phases = phases.borrow();
        assert_eq!(phases.last(), Some(&"end"), "{phases:?}");
        for pair in phases.windows(2) {
            assert_ne!(pair[0], pair[1], "begin/end do not alternate: {phases:?}");
        }
    }
}

per_backend! {
    /// Two polling waiters on one eventfd (a front end may hand one kick fd to several queues), with
    /// busy polling off: one set makes both readable, the first handler clears the counter, and the
    /// second must still find its work through its poll function instead of waiting for another set.
    fn polling_waiters_sharing_one_eventfd_both_see_their_work(backend) {
        let ctx = AioContext::builder()
            .backend(backend)
            .poll_max_ns(0)
            .build()
            .unwrap();
        let kick = EventNotifier::new().unwrap();
        let same = EventNotifier::from_eventfd(kick.as_fd_owned().unwrap()).unwrap();
        let work = [Rc::new(Cell::new(false)), Rc::new(Cell::new(false))];
        let _enter = ctx.enter();
        let waiters: Vec<_> = [&kick, &same]
            .into_iter()
            .zip(&work)
            .map(|(n, w)| {
                let w = w.clone();
                n.waiter_polling(move || w.get()).unwrap()
            })
            .collect();
        for w in &work {
            w.set(true);
        }
        kick.set().unwrap();
        let both = futures::future::join(waiters[0].wait(), waiters[1].wait());
        let seen = ctx.block_on(aioctx::time::timeout(BOUND, both));
        assert!(seen.is_ok(), "a waiter missed work whose set the other waiter took");
        assert_eq!(ctx.stats().poll_hits, 0, "polling was off: the readiness path found both");
    }
}

/// Runs `round` 3 times (three misses take a 75% gate's rate from 100% to 66%, under it), then 16
/// times more; returns the polling phases of those 16.
fn phases_in_16_after_3_misses(ctx: &AioContext, mut round: impl FnMut()) -> u64 {
    for _ in 0..3 {
        round();
    }
    let before = polling_phases(ctx);
    for _ in 0..16 {
        round();
    }
    polling_phases(ctx) - before
}

/// Polling phases the loop has run so far.
fn polling_phases(ctx: &AioContext) -> u64 {
    let stats = ctx.stats();
    stats.poll_hits + stats.poll_misses
}

/// Ticks until the loop has run `phases` more polling phases. A tick whose timer was already due
/// when its iteration began (a stall on a loaded machine) skips polling, so count phases, not ticks.
fn tick_polling(ctx: &AioContext, phases: u64) {
    let target = polling_phases(ctx) + phases;
    for _ in 0..1_000 {
        if polling_phases(ctx) >= target {
            return;
        }
        tick(ctx);
    }
    panic!("the loop did not poll {phases} times in 1000 ticks");
}

/// Runs blocking iterations until a 1 ms timer fires: one or more polling phases, then a wait.
fn tick(ctx: &AioContext) {
    let fired = Rc::new(Cell::new(false));
    let timer = ctx.timer(aioctx::time::Clock::Realtime, {
        let fired = fired.clone();
        move || fired.set(true)
    });
    timer.arm_after(Duration::from_millis(1));
    while !fired.get() {
        ctx.poll(true);
    }
}

per_backend! {
    // QEMU drops a poll handler whose poll function found nothing for 7 s (here: at once) from the
    // poll list, on the io_uring monitor only, and puts it back when its fd fires.
    fn idle_poll_handlers_leave_the_poll_list_until_their_fd_fires(backend) {
        let ctx = AioContext::builder()
            .backend(backend)
            .poll_params(PARAMS)
            .poll_idle_timeout(Duration::ZERO)
            .build()
            .unwrap();
        let guard = Guard::new(&ctx);
        let quiet = EventNotifier::new().unwrap();
        let (polls, reads) = (Rc::new(Cell::new(0u32)), Rc::new(Cell::new(0u32)));
        let _reg = ctx
            .set_event_notifier(
                &quiet,
                {
                    let (quiet, reads) = (quiet.clone(), reads.clone());
                    move || {
                        if quiet.test_and_clear().unwrap() {
                            reads.set(reads.get() + 1);
                        }
                    }
                },
                Some(Box::new({
                    let polls = polls.clone();
                    move || {
                        polls.set(polls.get() + 1);
                        false
                    }
                })),
            )
            .unwrap();
        // A dispatch after a short wait opens the handler's poll window, so the loop polls from now on.
        quiet.set().unwrap();
        guard.poll_until(&ctx, "the first read", || reads.get() == 1);
        // Two polling phases: the first starts the idle clock, the second finds it run out.
        tick_polling(&ctx, 2);
        let polled = polls.get();
        assert!(polled > 0, "the loop never polled");
        tick_polling(&ctx, 2);
        if backend == Backend::IoUring {
            assert_eq!(polls.get(), polled, "an idle handler stays off the poll list");
        } else {
            assert!(polls.get() > polled, "{backend:?} keeps polling every handler");
        }
        // Its fd fires: the handler runs and is polled again.
        quiet.set().unwrap();
        guard.poll_until(&ctx, "the read after the fd fired", || reads.get() == 2);
        let back = polls.get();
        tick_polling(&ctx, 1);
        assert!(polls.get() > back, "{backend:?}: a handler whose fd fired is polled again");
    }
}
