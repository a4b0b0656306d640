//! Adaptive busy-polling, the notify_me protocol, fd monitor selection and fallback, bad input, and the
//! process-wide knobs (AIOCTX_BACKEND, the fd limit), which run in a child process so they cannot leak
//! into other tests.
//!
//! Nothing here sleeps: waits spin on a condition or block in the loop, with a guard timer or deadline
//! so that a lost wakeup fails the test instead of hanging it.

use std::cell::{Cell, RefCell};
use std::error::Error;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aioctx::time::{Clock, Timer};
use aioctx::{AioContext, Backend, EventNotifier, FdHandlers, FdRegistration, PollParams, Stats};
use tests::per_backend;

const BOUND: Duration = Duration::from_secs(20);
/// Kick rounds allowed for the poll window to grow before polling must have found work.
const GROWTH_ROUNDS: u32 = 300;

/// The raw OS error of `err`, looking through aioctx's error wrapping.
fn os_error(err: &io::Error) -> Option<i32> {
    let mut current: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(code) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        current = e.source();
    }
    None
}

/// Spins until `cond` holds, failing after `BOUND`.
fn spin_until(what: &str, cond: impl Fn() -> bool) {
    let give_up = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        std::hint::spin_loop();
    }
}

/// A timer that makes any blocking poll return within `BOUND`, so a lost wakeup becomes a failure.
struct Guard {
    _timer: Timer,
    expired: Rc<Cell<bool>>,
}

impl Guard {
    fn new(ctx: &AioContext) -> Guard {
        let expired = Rc::new(Cell::new(false));
        let e = expired.clone();
        let timer = ctx.timer(Clock::Realtime, move || e.set(true));
        timer.arm_after(BOUND);
        // Takes the notification the arming left, so the next blocking poll really blocks.
        ctx.poll(false);
        Guard {
            _timer: timer,
            expired,
        }
    }

    /// Blocking iterations until `done()`.
    fn poll_until(&self, ctx: &AioContext, what: &str, done: impl Fn() -> bool) {
        for _ in 0..100_000 {
            if done() {
                return;
            }
            assert!(
                !self.expired.get(),
                "{what}: the loop was not woken within {BOUND:?}"
            );
            ctx.poll(true);
        }
        panic!("{what}: not done after 100000 iterations");
    }
}

/// A registered notifier and how many times its read handler ran.
type Counted = (EventNotifier, FdRegistration, Rc<Cell<u32>>);

/// A notifier whose read handler clears it and counts.
fn counting_notifier(ctx: &AioContext) -> Counted {
    let n = EventNotifier::new().unwrap();
    let hits = Rc::new(Cell::new(0));
    let (n2, h) = (n.clone(), hits.clone());
    let on_read = move || {
        n2.test_and_clear().unwrap();
        h.set(h.get() + 1);
    };
    let reg = ctx.set_event_notifier(&n, on_read, None).unwrap();
    (n, reg, hits)
}

/// Busy-polling tests run one at a time. Each has a loop and a kicker spinning, and this machine has
/// two cores: two such tests at once would measure the scheduler, not the loop.
static POLLING_TESTS: Mutex<()> = Mutex::new(());

/// What the kicker thread and the loop share.
#[derive(Default)]
struct Wire {
    pending: AtomicBool,
    poll_calls: AtomicU64,
    /// Kicks asked for so far, or `u64::MAX` to stop the kicker.
    requests: AtomicU64,
    /// `poll_calls` and the loop's blocking waits when the last kick was asked for.
    calls_then: AtomicU64,
    waits_then: AtomicU64,
}

/// What the loop's callbacks see and record.
struct Record {
    notifier: EventNotifier,
    wire: Arc<Wire>,
    by_read: Cell<u32>,
    by_poll: Cell<u32>,
    /// "begin" and "end", as the loop enters and leaves poll mode.
    phases: RefCell<Vec<&'static str>>,
    poll_calls_at_end: Cell<u64>,
}

impl Record {
    /// Takes a published kick, if any, and counts it in `path`.
    fn serve(&self, path: &Cell<u32>) {
        let _ = self.notifier.test_and_clear();
        if self.wire.pending.swap(false, Ordering::AcqRel) {
            path.set(path.get() + 1);
        }
    }
}

/// A virtqueue-like device. Another thread kicks it the way a vCPU does: it publishes work (`pending`)
/// and then writes the ioeventfd. The loop finds a kick either by busy-polling `pending` (the
/// poll_ready path) or through the eventfd (the read path); `rec` says which.
struct Device {
    reg: Option<FdRegistration>,
    wire: Arc<Wire>,
    rec: Rc<Record>,
    kicker: Option<JoinHandle<()>>,
    _exclusive: MutexGuard<'static, ()>,
}

impl Device {
    fn new(ctx: &AioContext) -> Device {
        let exclusive = POLLING_TESTS.lock().unwrap_or_else(PoisonError::into_inner);
        let (n, wire) = (EventNotifier::new().unwrap(), Arc::new(Wire::default()));
        let rec = Rc::new(Record {
            notifier: n.clone(),
            wire: wire.clone(),
            by_read: Cell::new(0),
            by_poll: Cell::new(0),
            phases: RefCell::default(),
            poll_calls_at_end: Cell::new(0),
        });
        let on = |f: fn(&Record)| {
            let r = rec.clone();
            move || f(&r)
        };
        let w = wire.clone();
        let poll = move || {
            w.poll_calls.fetch_add(1, Ordering::Relaxed);
            w.pending.load(Ordering::Acquire)
        };
        let handlers = FdHandlers::new()
            .read(on(|r| r.serve(&r.by_read)))
            .poll(poll, on(|r| r.serve(&r.by_poll)))
            .poll_begin_end(
                on(|r| r.phases.borrow_mut().push("begin")),
                on(|r| {
                    r.phases.borrow_mut().push("end");
                    let calls = r.wire.poll_calls.load(Ordering::Relaxed);
                    r.poll_calls_at_end.set(calls);
                }),
            );
        let reg = ctx.set_fd_handler(n.as_raw_fd(), handlers).unwrap();
        let (w, remote) = (wire.clone(), ctx.remote());
        // It spins rather than blocks between kicks: a woken thread can be queued behind the spinning
        // loop on the same core for longer than any poll window.
        let kicker = std::thread::spawn(move || {
            let (mut kicked, mut idle_since) = (0, Instant::now());
            loop {
                let wanted = w.requests.load(Ordering::Acquire);
                if wanted == u64::MAX || idle_since.elapsed() > 3 * BOUND {
                    return;
                }
                if wanted == kicked {
                    std::hint::spin_loop();
                    continue;
                }
                // Kick only once the loop busy-polls or sleeps. A kick that lands before the loop even
                // looks is found by whatever it checks first (on io_uring, the completion ring), which
                // would make these tests about scheduling rather than polling.
                let give_up = Instant::now() + BOUND;
                while w.poll_calls.load(Ordering::Relaxed) == w.calls_then.load(Ordering::Relaxed)
                    && remote.stats().blocking_waits == w.waits_then.load(Ordering::Relaxed)
                    && Instant::now() < give_up
                {
                    std::hint::spin_loop();
                }
                w.pending.store(true, Ordering::Release);
                n.set().unwrap();
                (kicked, idle_since) = (wanted, Instant::now());
            }
        });
        let kicker = Some(kicker);
        Device {
            reg: Some(reg),
            wire,
            rec,
            kicker,
            _exclusive: exclusive,
        }
    }

    fn poll_calls(&self) -> u64 {
        self.wire.poll_calls.load(Ordering::Relaxed)
    }

    /// Kicks once from the other thread and runs the loop until the kick is served. Returns true if
    /// the poll path served it.
    fn kick_and_serve(&self, ctx: &AioContext, guard: &Guard) -> bool {
        let (read0, poll0) = (self.rec.by_read.get(), self.rec.by_poll.get());
        let w = &self.wire;
        w.calls_then.store(self.poll_calls(), Ordering::Relaxed);
        w.waits_then
            .store(ctx.stats().blocking_waits, Ordering::Relaxed);
        w.requests.fetch_add(1, Ordering::Release);
        let served = || self.rec.by_read.get() + self.rec.by_poll.get();
        guard.poll_until(ctx, "a kick", || served() > read0 + poll0);
        assert_eq!(served(), read0 + poll0 + 1);
        self.rec.by_poll.get() > poll0
    }

    /// Kicks until busy-polling caught `n` more kicks inside its window (poll hits), failing after
    /// `GROWTH_ROUNDS`. Kicks that the final poll after poll_end catches also take the poll path but
    /// are not hits, so `by_poll` alone would not prove the window works.
    fn kick_until_polled(&self, ctx: &AioContext, guard: &Guard, n: u64) {
        let (hits, by_poll) = (ctx.stats().poll_hits, self.rec.by_poll.get());
        for _ in 0..GROWTH_ROUNDS {
            let polled = u64::from(self.rec.by_poll.get() - by_poll);
            if ctx.stats().poll_hits >= hits + n && polled >= n {
                return;
            }
            self.kick_and_serve(ctx, guard);
        }
        let (r, p, s) = (self.rec.by_read.get(), self.rec.by_poll.get(), ctx.stats());
        panic!("the poll window never caught {n} kicks: {r} by read, {p} by poll, {s:?}");
    }

    fn count(&self, phase: &str) -> usize {
        let phases = self.rec.phases.borrow();
        phases.iter().filter(|p| **p == phase).count()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        drop(self.reg.take());
        self.wire.requests.store(u64::MAX, Ordering::Release);
        if let Some(kicker) = self.kicker.take() {
            let _ = kicker.join();
        }
    }
}

fn polling_context(backend: Backend, max_ns: u64) -> AioContext {
    let ctx = AioContext::builder()
        .backend(backend)
        .poll_max_ns(max_ns)
        .build()
        .unwrap();
    assert_eq!(ctx.poll_params().max_ns, max_ns);
    ctx
}

fn no_polling_since(ctx: &AioContext, before: &Stats) {
    let now = ctx.stats();
    let polling = |s: &Stats| (s.poll_hits, s.poll_misses, s.poll_ns);
    assert_eq!(polling(&now), polling(before), "{now:?}");
}

/// A regular file in the temp dir, open for reading, removed on drop.
struct TempFile {
    path: PathBuf,
    file: std::fs::File,
}

impl TempFile {
    fn new(tag: &str) -> TempFile {
        let name = format!("aioctx-{tag}-{}", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, b"regular").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        TempFile { path, file }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

per_backend! {
    fn adaptive_polling_grows_and_then_finds_kicks_by_polling(backend) {
        let ctx = polling_context(backend, 1_000_000);
        let guard = Guard::new(&ctx);
        let dev = Device::new(&ctx);
        let before = ctx.stats();
        // Windows start at 0: the first kick can only arrive through the eventfd.
        assert!(!dev.kick_and_serve(&ctx, &guard));
        dev.kick_until_polled(&ctx, &guard, 1);
        let after = ctx.stats();
        assert!(after.poll_hits > before.poll_hits, "{after:?}");
        assert!(after.poll_ns > before.poll_ns, "{after:?}");
        assert!(dev.rec.by_read.get() >= 1);
    }

    fn poll_max_ns_zero_never_polls(backend) {
        let ctx = polling_context(backend, 0);
        let guard = Guard::new(&ctx);
        let dev = Device::new(&ctx);
        for _ in 0..30 {
            assert!(!dev.kick_and_serve(&ctx, &guard));
        }
        let stats = ctx.stats();
        assert_eq!((stats.poll_hits, stats.poll_misses, stats.poll_ns), (0, 0, 0), "{stats:?}");
        assert_eq!(dev.rec.by_read.get(), 30);
        assert_eq!(dev.poll_calls(), 0);
        assert_eq!(dev.count("begin") + dev.count("end"), 0);
    }

    fn a_handler_without_poll_fn_disables_polling_until_dropped(backend) {
        let ctx = polling_context(backend, 1_000_000);
        let guard = Guard::new(&ctx);
        let dev = Device::new(&ctx);
        let plain = EventNotifier::new().unwrap();
        let plain_reg = ctx.set_event_notifier(&plain, || {}, None).unwrap();
        let before = ctx.stats();
        for _ in 0..40 {
            assert!(!dev.kick_and_serve(&ctx, &guard), "polled while a handler cannot poll");
        }
        no_polling_since(&ctx, &before);
        assert_eq!(dev.poll_calls(), 0);

        drop(plain_reg);
        dev.kick_until_polled(&ctx, &guard, 1);
        assert!(ctx.stats().poll_hits > before.poll_hits);
    }

    fn poll_begin_and_end_bracket_poll_mode_with_a_final_poll(backend) {
        let ctx = polling_context(backend, 1_000_000);
        let guard = Guard::new(&ctx);
        let dev = Device::new(&ctx);
        // Grow the window until a kick is caught inside it. (A kick caught by the final poll after
        // poll_end also takes the poll path, but the loop has left poll mode then.)
        let mut rounds = 0;
        let in_poll_mode = || dev.rec.phases.borrow().last() == Some(&"begin");
        while !(dev.kick_and_serve(&ctx, &guard) && in_poll_mode()) {
            rounds += 1;
            assert!(rounds < GROWTH_ROUNDS, "polling never caught a kick inside its window");
        }
        // A hit does not leave poll mode: QEMU leaves it only right before sleeping.
        assert_eq!(dev.count("begin"), dev.count("end") + 1);

        // Nothing arrives now: the loop polls its window, leaves poll mode and sleeps until another
        // thread wakes it. (A timer would not do: a descheduled loop can spin its whole timeout away.)
        let ends = dev.count("end");
        let waits = ctx.stats().blocking_waits;
        let waker = std::thread::spawn({
            let remote = ctx.remote();
            move || {
                spin_until("the loop to sleep", || remote.stats().blocking_waits > waits);
                remote.notify();
            }
        });
        guard.poll_until(&ctx, "a sleep", || ctx.stats().blocking_waits > waits);
        waker.join().unwrap();
        assert!(dev.count("end") > ends);
        assert_eq!(dev.rec.phases.borrow().last(), Some(&"end"));
        assert_eq!(
            dev.poll_calls(),
            dev.rec.poll_calls_at_end.get() + 1,
            "after poll_end the poll fn runs exactly once more before the loop sleeps"
        );
        let phases = dev.rec.phases.borrow();
        assert_eq!(phases.first(), Some(&"begin"));
        for pair in phases.windows(2) {
            assert_ne!(pair[0], pair[1], "begin/end do not alternate: {phases:?}");
        }
    }

    fn set_poll_params_at_run_time(backend) {
        let ctx = polling_context(backend, 1_000_000);
        let guard = Guard::new(&ctx);
        let dev = Device::new(&ctx);
        dev.kick_until_polled(&ctx, &guard, 1);

        let off = PollParams { max_ns: 0, grow: 0, shrink: 0 };
        ctx.set_poll_params(off).unwrap();
        assert_eq!(ctx.poll_params(), off);
        let before = ctx.stats();
        // The loop is still in poll mode from the last hit; leaving it calls the poll fn once more
        // (QEMU's poll_set_started), which may legitimately catch this first kick.
        dev.kick_and_serve(&ctx, &guard);
        let calls = dev.poll_calls();
        for _ in 0..30 {
            assert!(!dev.kick_and_serve(&ctx, &guard), "polled after max_ns was set to 0");
        }
        assert_eq!(dev.poll_calls(), calls, "the poll fn ran with polling off");
        no_polling_since(&ctx, &before);

        for bad in [
            PollParams { max_ns: u64::MAX, ..off },
            PollParams { max_ns: i64::MAX as u64 + 1, ..off },
            PollParams { max_ns: 32_768, grow: u64::MAX, shrink: 0 },
        ] {
            let err = ctx.set_poll_params(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}: {err}");
            assert_eq!(ctx.poll_params(), off, "a rejected change was applied");
        }

        ctx.set_poll_params(PollParams { max_ns: 1_000_000, grow: 2, shrink: 0 }).unwrap();
        dev.kick_until_polled(&ctx, &guard, 1);
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
        let (before, remote) = (ctx.stats(), ctx.remote());
        let waker = std::thread::spawn(move || {
            let waits = || remote.stats().blocking_waits;
            spin_until("the loop to block", || waits() > before.blocking_waits);
            remote.notify();
        });
        assert!(!ctx.poll(true));
        waker.join().unwrap();
        assert!(!guard.expired.get(), "the remote notification did not wake the loop");
        let after = ctx.stats();
        assert_eq!(after.blocking_waits, before.blocking_waits + 1);
        assert_eq!(after.notify_writes, before.notify_writes + 1, "{after:?}");
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

    fn many_fds_dispatch_only_the_ready_ones(backend) {
        let ctx = tests::context(backend);
        let guard = Guard::new(&ctx);
        let mut fds: Vec<Counted> = (0..70).map(|_| counting_notifier(&ctx)).collect();
        // The poll monitor upgrades itself to epoll at 64 fds, as QEMU's does; the others stay.
        let expected = if backend == Backend::Poll { Backend::Epoll } else { backend };
        assert_eq!(ctx.backend(), expected);
        let total = |fds: &[Counted]| fds.iter().map(|f| f.2.get()).sum::<u32>();
        for (n, i) in [67, 3, 69, 0].into_iter().enumerate() {
            fds[i].0.set().unwrap();
            guard.poll_until(&ctx, "a ready fd among 70", || fds[i].2.get() == 1);
            assert_eq!(total(&fds), n as u32 + 1, "an fd that was not ready was dispatched");
        }
        fds.drain(..60);
        fds[5].0.set().unwrap();
        guard.poll_until(&ctx, "an fd after dropping 60 others", || fds[5].2.get() == 1);
        assert_eq!(ctx.backend(), expected, "no switching back");
    }

    fn bad_fds_are_ebadf_and_leave_the_context_usable(backend) {
        let ctx = tests::context(backend);
        for fd in [999_999, -1, RawFd::MAX] {
            let err = ctx.set_fd_handler(fd, FdHandlers::new().read(|| {})).unwrap_err();
            assert_eq!(os_error(&err), Some(libc::EBADF), "fd {fd}: {err}");
            assert!(err.to_string().contains("not an open file descriptor"), "{err}");
        }
        let guard = Guard::new(&ctx);
        let (n, _reg, hits) = counting_notifier(&ctx);
        n.set().unwrap();
        guard.poll_until(&ctx, "a good fd after bad ones", || hits.get() == 1);
    }

    fn registering_an_fd_twice_is_already_exists(backend) {
        let ctx = tests::context(backend);
        let guard = Guard::new(&ctx);
        let n = EventNotifier::new().unwrap();
        let log = Rc::new(RefCell::new(Vec::new()));
        let handler = |name: &'static str| {
            let (n, log) = (n.clone(), log.clone());
            FdHandlers::new().read(move || {
                n.test_and_clear().unwrap();
                log.borrow_mut().push(name);
            })
        };
        let first = ctx.set_fd_handler(n.as_raw_fd(), handler("first")).unwrap();
        let err = ctx.set_fd_handler(n.as_raw_fd(), handler("second")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        let err = ctx.set_event_notifier(&n, || panic!("third"), None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        n.set().unwrap();
        guard.poll_until(&ctx, "the first handler", || !log.borrow().is_empty());
        assert_eq!(*log.borrow(), ["first"]);

        // Once the first is gone the fd is free again.
        drop(first);
        let _second = ctx.set_fd_handler(n.as_raw_fd(), handler("second")).unwrap();
        n.set().unwrap();
        guard.poll_until(&ctx, "the second handler", || log.borrow().len() == 2);
        assert_eq!(*log.borrow(), ["first", "second"]);
    }

    fn registration_outliving_its_context(backend) {
        let ctx = tests::context(backend);
        let n = EventNotifier::new().unwrap();
        let reg = ctx.set_event_notifier(&n, || {}, None).unwrap();
        reg.update(FdHandlers::new().read(|| {})).unwrap();
        drop(ctx);
        let err = reg.update(FdHandlers::new().read(|| {})).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotConnected, "{err}");
        drop(reg);
    }

    /// Regular files are always readable. epoll cannot watch them: forced, it refuses with EPERM (an
    /// Auto-chosen epoll falls back instead, see below); poll and io_uring accept them.
    fn regular_files(backend) {
        let ctx = tests::context(backend);
        let guard = Guard::new(&ctx);
        let tmp = TempFile::new(&format!("regular-{backend:?}"));
        let reads = Rc::new(Cell::new(0));
        let handlers = || {
            let r = reads.clone();
            FdHandlers::new().read(move || r.set(r.get() + 1))
        };
        if backend == Backend::Epoll {
            // Twice: a refused fd must not stay half-registered (the retry would be AlreadyExists).
            for _ in 0..2 {
                let err = ctx.set_fd_handler(tmp.file.as_raw_fd(), handlers()).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
                assert_eq!(os_error(&err), Some(libc::EPERM), "{err}");
            }
            let (n, _reg, hits) = counting_notifier(&ctx);
            n.set().unwrap();
            guard.poll_until(&ctx, "an eventfd after the refusal", || hits.get() == 1);
        } else {
            let reg = ctx.set_fd_handler(tmp.file.as_raw_fd(), handlers()).unwrap();
            // Level-triggered and never drained: it keeps running.
            for i in 1..=3 {
                guard.poll_until(&ctx, "the file's read handler", || reads.get() >= i);
            }
            drop(reg);
            let after_drop = reads.get();
            for _ in 0..3 {
                ctx.poll(false);
            }
            assert_eq!(reads.get(), after_drop, "the handler ran after its registration was dropped");
        }
        assert_eq!(ctx.backend(), backend, "a forced backend must not fall back");
    }
}

/// QEMU's poll monitor upgrades itself to epoll at 64 fds (EPOLL_ENABLE_THRESHOLD).
#[test]
fn poll_monitor_upgrades_to_epoll_at_64_fds() {
    let ctx = tests::context(Backend::Poll);
    let guard = Guard::new(&ctx);
    let mut fds: Vec<_> = (0..63).map(|_| counting_notifier(&ctx)).collect();
    // 63 handlers plus the context's own notifier: the 64th fd.
    assert_eq!(ctx.backend(), Backend::Epoll);
    fds.pop();
    assert_eq!(
        ctx.backend(),
        Backend::Epoll,
        "no switching back below the threshold"
    );
    fds.extend((0..7).map(|_| counting_notifier(&ctx)));
    // The poll backend was named, not epoll: a regular file makes the upgraded monitor fall back.
    let tmp = TempFile::new("upgraded-then-regular");
    let file_reads = Rc::new(Cell::new(0));
    let _file = ctx
        .set_fd_handler(
            tmp.file.as_raw_fd(),
            FdHandlers::new().read({
                let r = file_reads.clone();
                move || r.set(r.get() + 1)
            }),
        )
        .unwrap();
    assert_eq!(ctx.backend(), Backend::Poll);
    guard.poll_until(&ctx, "the regular file's handler", || file_reads.get() >= 1);
    fds[66].0.set().unwrap();
    guard.poll_until(&ctx, "a ready fd after the upgrade", || {
        fds[66].2.get() == 1
    });
}

#[test]
fn bad_backend_names_and_builder_parameters_are_invalid_input() {
    for (name, backend) in [
        ("poll", Backend::Poll),
        (" EPOLL ", Backend::Epoll),
        ("io-uring", Backend::IoUring),
        ("auto", Backend::Auto),
    ] {
        assert_eq!(Backend::from_name(name).unwrap(), backend, "{name:?}");
    }
    for name in ["nope", "", "epol"] {
        let err = Backend::from_name(name).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
    }
    for builder in [
        AioContext::builder().poll_max_ns(u64::MAX),
        AioContext::builder().poll_grow(u64::MAX),
        AioContext::builder().ring_entries(0),
    ] {
        let err = builder.clone().backend(Backend::Epoll).build().unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::InvalidInput,
            "{builder:?}: {err}"
        );
    }
}

/// Set only in a child process: the test it is to run, and what that test is to check.
const CHILD: &str = "AIOCTX_TESTS_CHILD";
const EXPECT: &str = "AIOCTX_TESTS_EXPECT";

/// In a child run of `test`, what it is to check; `None` in the parent.
fn child_expectation(test: &str) -> Option<String> {
    (std::env::var(CHILD).ok()? == test).then(|| std::env::var(EXPECT).unwrap_or_default())
}

/// Re-runs `test` alone in a child process of this test binary with `env` added; checks it passed.
fn run_in_child(test: &str, env: &[(&str, &str)]) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, test)
        .env_remove("AIOCTX_BACKEND")
        .envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // "1 passed" also proves the filter matched: a typo would run 0 tests and still exit 0.
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child run of {test} with {env:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
fn aioctx_backend_env_chooses_the_default_backend() {
    const NAME: &str = "aioctx_backend_env_chooses_the_default_backend";
    let Some(expect) = child_expectation(NAME) else {
        for (value, expect) in [
            ("poll", "Poll"),
            ("Poll", "Poll"),
            ("epoll", "Epoll"),
            ("io_uring", "IoUring"),
            ("auto", "ok"),
            ("bogus", "invalid"),
        ] {
            run_in_child(NAME, &[("AIOCTX_BACKEND", value), (EXPECT, expect)]);
        }
        return;
    };
    let result = AioContext::new();
    match expect.as_str() {
        "ok" => drop(result.unwrap()),
        "invalid" => {
            let err = result.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains("AIOCTX_BACKEND"), "{err}");
        }
        backend => assert_eq!(format!("{:?}", result.unwrap().backend()), backend),
    }
    // A backend named in code wins over the environment.
    for backend in tests::BACKENDS {
        assert_eq!(tests::context(backend).backend(), backend);
    }
}

#[test]
fn auto_epoll_falls_back_to_poll_for_a_regular_file() {
    const NAME: &str = "auto_epoll_falls_back_to_poll_for_a_regular_file";
    if child_expectation(NAME).is_none() {
        // A child, so that an AIOCTX_BACKEND in the caller's environment cannot force the backend.
        return run_in_child(NAME, &[]);
    }
    // Auto where the kernel refuses io_uring: an epoll monitor that may still switch.
    let ctx = AioContext::builder()
        .simulate_io_uring_unavailable(libc::EPERM)
        .build()
        .unwrap();
    assert_eq!(ctx.backend(), Backend::Epoll);
    let guard = Guard::new(&ctx);
    let (n, _n_reg, kicks) = counting_notifier(&ctx);

    let tmp = TempFile::new("auto-fallback");
    let reads = Rc::new(Cell::new(0));
    let r = reads.clone();
    let on_read = FdHandlers::new().read(move || r.set(r.get() + 1));
    let file_reg = ctx.set_fd_handler(tmp.file.as_raw_fd(), on_read).unwrap();
    assert_eq!(ctx.backend(), Backend::Poll, "the fallback must be visible");
    guard.poll_until(&ctx, "the regular file", || reads.get() >= 1);
    // fds registered before the switch moved to the new monitor.
    n.set().unwrap();
    guard.poll_until(&ctx, "the eventfd after the fallback", || kicks.get() == 1);
    drop(file_reg);
    n.set().unwrap();
    guard.poll_until(&ctx, "the eventfd after the file left", || kicks.get() == 2);
}

fn close(fd: RawFd) {
    // SAFETY: `fd` came from eventfd in this test and is closed once.
    assert_eq!(unsafe { libc::close(fd) }, 0);
}

#[test]
fn running_out_of_fds_is_an_error_not_a_panic() {
    const NAME: &str = "running_out_of_fds_is_an_error_not_a_panic";
    if child_expectation(NAME).is_none() {
        // A child: lowering RLIMIT_NOFILE would break every other test in this process.
        return run_in_child(NAME, &[]);
    }
    let highest_open_fd: RawFd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .max()
        .unwrap();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write one rlimit struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = (highest_open_fd + 16) as libc::rlim_t;
    assert!(lim.rlim_cur <= lim.rlim_max);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);

    let mut hoard = Vec::new();
    loop {
        // SAFETY: eventfd takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            assert_eq!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::EMFILE)
            );
            break;
        }
        hoard.push(fd);
        assert!(hoard.len() < 1_000, "RLIMIT_NOFILE did not take effect");
    }

    for backend in [
        Backend::Auto,
        Backend::Poll,
        Backend::Epoll,
        Backend::IoUring,
    ] {
        let err = AioContext::builder().backend(backend).build().unwrap_err();
        assert_eq!(os_error(&err), Some(libc::EMFILE), "{backend:?}: {err}");
    }
    // One free fd: enough for the context's eventfd, not for an epoll fd or a ring. Failing again and
    // again proves a half-built context gives its eventfd back.
    close(hoard.pop().unwrap());
    for _ in 0..3 {
        for backend in [Backend::Epoll, Backend::IoUring] {
            let err = AioContext::builder().backend(backend).build().unwrap_err();
            assert_eq!(os_error(&err), Some(libc::EMFILE), "{backend:?}: {err}");
        }
    }
    drop(tests::context(Backend::Poll));

    close(hoard.pop().unwrap());
    let ctx = AioContext::new().unwrap();
    ctx.bh_oneshot(|| {});
    assert!(
        ctx.poll(false),
        "the context created after the shortage does not run"
    );
    drop(ctx);
    hoard.into_iter().for_each(close);
}
