//! QEMU's main loop and the glib face (feature `glib`): `MainLoop` combining glib's sources with the
//! aio and iohandler contexts in one wait, `AioContext::g_source` driven by glib alone, and IoThreads
//! in glib mode. Real glib code throughout: glib timeouts and idle sources, glib's own futures
//! executor, a gio socket client and listener.
//!
//! Every wait a test runs is bounded: [`Bounded`] arms a timer on the loop's context that fails the
//! test after `tests::BOUND` instead of letting a lost wakeup hang it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aioctx::glib;
use aioctx::time::Clock;
use aioctx::{AioContext, Backend, EventNotifier, FdHandlers, MainLoop, Stopped};
use tests::{per_backend, spin_until, BOUND};

/// A main loop on a fresh glib context (tests run in parallel; glib's global default context can
/// be owned by one thread at a time), with signals left alone.
fn main_loop(backend: Backend) -> MainLoop {
    main_loop_on(glib::MainContext::new(), backend)
}

/// Serialises the tests that run a main loop on glib's global default context.
static DEFAULT_CONTEXT: Mutex<()> = Mutex::new(());

/// Held by the tests that signal the process: every main loop handling signals sees each of them.
static SIGNALS: Mutex<()> = Mutex::new(());

/// A main loop that handles SIGINT and SIGTERM, and the lock to hold while signalling the process.
fn signal_handling_main_loop() -> (MainLoop, MutexGuard<'static, ()>) {
    let signals = SIGNALS.lock().unwrap_or_else(|e| e.into_inner());
    let ml = MainLoop::builder()
        .context(glib::MainContext::new())
        .build()
        .unwrap();
    (ml, signals)
}

/// A main loop on glib's global default context, as QEMU's main loop runs: glib's `timeout_add*` and
/// `idle_add*` attach there (always there, whatever the thread's default context). One test at a
/// time owns it.
struct DefaultMainLoop {
    ml: MainLoop,
    _lock: MutexGuard<'static, ()>,
}

impl std::ops::Deref for DefaultMainLoop {
    type Target = MainLoop;

    fn deref(&self) -> &MainLoop {
        &self.ml
    }
}

fn default_main_loop(backend: Backend) -> DefaultMainLoop {
    // A test that failed while holding the lock poisoned it; the context itself is fine.
    let lock = DEFAULT_CONTEXT.lock().unwrap_or_else(|e| e.into_inner());
    DefaultMainLoop {
        ml: main_loop_on(glib::MainContext::default(), backend),
        _lock: lock,
    }
}

fn main_loop_on(gctx: glib::MainContext, backend: Backend) -> MainLoop {
    let ml = MainLoop::builder()
        .context(gctx)
        .backend(backend)
        .handle_signals(false)
        .build()
        .unwrap_or_else(|e| panic!("cannot create a {backend:?} main loop: {e}"));
    assert_eq!(ml.aio_context().backend(), backend);
    assert_eq!(ml.iohandler_context().backend(), backend);
    ml
}

/// A timer on `ctx` that flags a wait that went on for `BOUND`: a lost wakeup fails the test.
struct Bounded {
    _timer: aioctx::time::Timer,
    expired: Rc<Cell<bool>>,
}

impl Bounded {
    fn new(ctx: &AioContext) -> Bounded {
        let expired = Rc::new(Cell::new(false));
        let timer = ctx.timer(Clock::Realtime, {
            let expired = expired.clone();
            move || expired.set(true)
        });
        timer.arm_after(BOUND);
        Bounded {
            _timer: timer,
            expired,
        }
    }

    fn check(&self, what: &str) {
        assert!(!self.expired.get(), "{what}: not done within {BOUND:?}");
    }
}

/// Runs non-blocking iterations until one makes no progress: notifications left by the setup are
/// accepted, so the next blocking wait really blocks.
fn settle(ml: &MainLoop) {
    while ml.wait(true) {}
}

/// Runs blocking main-loop iterations until `done()`.
fn run_until(ml: &MainLoop, what: &str, done: impl Fn() -> bool) {
    let bound = Bounded::new(ml.aio_context());
    while !done() {
        bound.check(what);
        ml.wait(false);
    }
}

/// Runs blocking glib iterations of `gctx` until `done()`, bounded by a timer on `ctx`.
fn iterate_until(gctx: &glib::MainContext, ctx: &AioContext, what: &str, done: impl Fn() -> bool) {
    let bound = Bounded::new(ctx);
    while !done() {
        bound.check(what);
        gctx.iteration(true);
    }
}

/// The timeout glib's own iteration of `gctx` would poll with now, in ms (-1: none): one
/// prepare/query/check round with no fd ready, as `g_main_context_iteration` starts.
fn glib_poll_timeout_ms(gctx: &glib::MainContext) -> i32 {
    use aioctx::glib::ffi;
    use aioctx::glib::translate::ToGlibPtr;

    let _owner = gctx.acquire().unwrap();
    let raw: *mut ffi::GMainContext = gctx.to_glib_none().0;
    let (_, priority) = gctx.prepare();
    let mut fds = [ffi::GPollFD {
        fd: -1,
        events: 0,
        revents: 0,
    }; 64];
    let mut timeout = -1;
    // SAFETY: this thread owns the context (acquired above), glib's rule for query and check;
    // `fds` has 64 writable entries, more than the few fds of the contexts in these tests.
    unsafe {
        let n = ffi::g_main_context_query(raw, priority, &mut timeout, fds.as_mut_ptr(), 64);
        assert!(n <= 64, "{n} fds");
        ffi::g_main_context_check(raw, priority, fds.as_mut_ptr(), n);
    }
    timeout
}

per_backend! {
    /// glib's own sources run in the main loop: a repeating 1 ms timeout, an idle source that
    /// removes itself after three runs, a one-shot timeout; the idle source (ready at once) runs
    /// before the first timeout.
    fn glib_timeouts_and_idle_sources_run(backend) {
        let ml = default_main_loop(backend);
        let log = Rc::new(RefCell::new(Vec::new()));
        let ticks = Rc::new(Cell::new(0));
        glib::timeout_add_local(Duration::from_millis(1), {
            let (ticks, log) = (ticks.clone(), log.clone());
            move || {
                ticks.set(ticks.get() + 1);
                log.borrow_mut().push("timeout");
                glib::ControlFlow::from(ticks.get() < 5)
            }
        });
        let idles = Rc::new(Cell::new(0));
        glib::idle_add_local({
            let (idles, log) = (idles.clone(), log.clone());
            move || {
                idles.set(idles.get() + 1);
                log.borrow_mut().push("idle");
                glib::ControlFlow::from(idles.get() < 3)
            }
        });
        let once = Rc::new(Cell::new(false));
        glib::timeout_add_local_once(Duration::from_millis(2), {
            let once = once.clone();
            move || once.set(true)
        });
        run_until(&ml, "glib sources", || ticks.get() == 5 && idles.get() == 3 && once.get());
        assert_eq!(log.borrow()[0], "idle", "{:?}", log.borrow());
        // Every source removed itself: nothing is left to dispatch.
        assert!(!ml.wait(true));
        assert_eq!((ticks.get(), idles.get()), (5, 3));
    }

    /// glib's futures executor (`MainContext::spawn_local`) runs futures that await aioctx's time
    /// futures: the sleep's timer is on the aio context (current on the thread), its expiry wakes
    /// glib's task, and a glib future awaits an aioctx task's JoinHandle.
    fn glib_spawn_local_awaits_aioctx_time_futures(backend) {
        let ml = main_loop(backend);
        let gctx = ml.glib_context().clone();
        let aio_task = ml.aio_context().spawn_local(async {
            aioctx::time::sleep(Duration::from_micros(300)).await;
            "from aioctx"
        });
        let glib_task = gctx.spawn_local(async move {
            let start = Instant::now();
            aioctx::time::sleep(Duration::from_micros(200)).await;
            let slept = start.elapsed();
            let timed_out =
                aioctx::time::timeout(Duration::from_micros(100), futures::future::pending::<()>())
                    .await
                    .is_err();
            let joined = aio_task.await.unwrap();
            (slept, timed_out, joined)
        });
        let (slept, timed_out, joined) = ml.block_on(glib_task).unwrap();
        assert!(slept >= Duration::from_micros(200), "woke early: {slept:?}");
        assert!(timed_out);
        assert_eq!(joined, "from aioctx");
    }

    /// A gio async operation served by the main loop: gio's socket listener accepts and gio's
    /// socket client connects over loopback, and bytes go both ways, all on glib's async API
    /// (whose callbacks the main loop's glib context dispatches) while an aioctx task runs beside.
    fn gio_socket_client_and_listener_on_the_main_loop(backend) {
        use gio::prelude::*;

        let ml = main_loop(backend);
        let listener = gio::SocketListener::new();
        let port = listener.add_any_inet_port(None::<&glib::Object>).unwrap();
        let ticks = Rc::new(Cell::new(0));
        let ticker = ml.aio_context().spawn_local({
            let ticks = ticks.clone();
            async move {
                loop {
                    aioctx::time::sleep(Duration::from_micros(500)).await;
                    ticks.set(ticks.get() + 1);
                }
            }
        });
        let server = async {
            let (conn, _) = listener.accept_future().await.unwrap();
            let (buf, n) = conn
                .input_stream()
                .read_future(vec![0u8; 5], glib::Priority::DEFAULT)
                .await
                .unwrap();
            assert_eq!(&buf[..n], b"hello");
            conn.output_stream()
                .write_all_future(b"world".to_vec(), glib::Priority::DEFAULT)
                .await
                .unwrap();
            conn
        };
        let client = async {
            let conn = gio::SocketClient::new()
                .connect_to_host_future(&format!("127.0.0.1:{port}"), port)
                .await
                .unwrap();
            conn.output_stream()
                .write_all_future(b"hello".to_vec(), glib::Priority::DEFAULT)
                .await
                .unwrap();
            let (buf, n, err) = conn
                .input_stream()
                .read_all_future(vec![0u8; 5], glib::Priority::DEFAULT)
                .await
                .unwrap();
            assert!(err.is_none());
            (buf[..n].to_vec(), conn)
        };
        let (_server_conn, (reply, _client_conn)) = ml.block_on(futures::future::join(server, client));
        assert_eq!(reply, b"world");
        // Nothing here asserts how many ticks ran: only that the aioctx task runs alongside.
        run_until(&ml, "the ticker", || ticks.get() > 0);
        ticker.abort();
    }

    /// aioctx's own work in the same main loop as glib's: a BH scheduled from another thread, an fd
    /// handler (an event notifier set from another thread), a task, and a 200 us timer re-armed 20
    /// times, while a glib timeout ticks every millisecond. Everything runs; the timers keep their
    /// nanosecond precision: a timeout rounded up to glib's milliseconds would make every one of the
    /// 200 us timers at least 800 us late, so the earliest one being less late than that shows the
    /// wait used the nanosecond deadline (a generous bound: a loaded machine delays some wakeups,
    /// not all twenty).
    fn aioctx_work_and_200us_timers_share_the_main_loop(backend) {
        let ml = default_main_loop(backend);
        let ctx = ml.aio_context();
        let glib_ticks = Rc::new(Cell::new(0u32));
        let glib_source = glib::timeout_add_local(Duration::from_millis(1), {
            let glib_ticks = glib_ticks.clone();
            move || {
                glib_ticks.set(glib_ticks.get() + 1);
                glib::ControlFlow::Continue
            }
        });

        let bh_runs = Rc::new(Cell::new(0));
        let bh = ctx.bh({
            let bh_runs = bh_runs.clone();
            move || bh_runs.set(bh_runs.get() + 1)
        });
        let remote_bh = bh.remote();
        let notifier = EventNotifier::new().unwrap();
        let kicks = Rc::new(Cell::new(0));
        let _reg = ctx
            .set_event_notifier(&notifier, {
                let (n, kicks) = (notifier.clone(), kicks.clone());
                move || {
                    if n.test_and_clear().unwrap() {
                        kicks.set(kicks.get() + 1);
                    }
                }
            }, None)
            .unwrap();
        let kicker = {
            let n = notifier.clone();
            std::thread::spawn(move || {
                remote_bh.schedule();
                n.set().unwrap();
            })
        };
        let task = ctx.spawn_local(async { aioctx::yield_now().await; 7 });

        // Each firing records how late it was, then re-arms the timer for another 200 us.
        let lateness = Rc::new(RefCell::new(Vec::new()));
        let armed_at = Rc::new(Cell::new(Instant::now()));
        let slot = Rc::new(std::cell::OnceCell::<aioctx::time::TimerHandle>::new());
        let timer = ctx.timer(Clock::Realtime, {
            let (lateness, armed_at, slot) = (lateness.clone(), armed_at.clone(), slot.clone());
            move || {
                let late = armed_at.get().elapsed().as_nanos() as i64 - 200_000;
                lateness.borrow_mut().push(late);
                if lateness.borrow().len() < 20 {
                    armed_at.set(Instant::now());
                    slot.get().unwrap().arm_after(Duration::from_micros(200));
                }
            }
        });
        slot.set(timer.handle()).ok().unwrap();
        armed_at.set(Instant::now());
        timer.arm_after(Duration::from_micros(200));

        run_until(&ml, "aioctx work", || {
            lateness.borrow().len() == 20 && bh_runs.get() == 1 && kicks.get() == 1 && task.is_finished()
        });
        kicker.join().unwrap();
        assert_eq!(ml.block_on(task).unwrap(), 7);
        glib_source.remove();
        let lateness = lateness.borrow();
        assert!(lateness.iter().all(|&l| l >= 0), "a timer fired early: {lateness:?}");
        let earliest = *lateness.iter().min().unwrap();
        assert!(earliest < 800_000, "every 200 us timer was rounded to ms: {lateness:?}");
        assert!(glib_ticks.get() > 0, "the glib timeout never ran");
    }

    /// A main loop asleep in its wait is woken from another thread: by `MainLoopHandle::notify`
    /// (one eventfd write, counted while the loop was blocked), by a remote spawn onto its aio
    /// context, and by `quit`, which makes `run` return.
    fn cross_thread_wakes_of_a_blocked_main_loop(backend) {
        let ml = main_loop(backend);
        let bound = Bounded::new(ml.aio_context());
        let stats = || ml.aio_context().stats();

        settle(&ml);
        let before = stats();
        let waker = std::thread::spawn({
            let (handle, remote) = (ml.handle(), ml.aio_context().remote());
            move || {
                spin_until("the main loop to block", || {
                    remote.stats().blocking_waits > before.blocking_waits
                });
                handle.notify();
            }
        });
        ml.wait(false);
        waker.join().unwrap();
        bound.check("notify");
        let after = stats();
        assert_eq!(after.blocking_waits, before.blocking_waits + 1);
        assert_eq!(after.notify_writes, before.notify_writes + 1, "{after:?}");

        // A task spawned from another thread; it reports back over a channel once it ran here.
        settle(&ml);
        let before = stats();
        let (tx, rx) = mpsc::channel();
        let spawner = std::thread::spawn({
            let remote = ml.aio_context().remote();
            move || {
                spin_until("the main loop to block", || {
                    remote.stats().blocking_waits > before.blocking_waits
                });
                drop(remote.spawn(async move { tx.send(std::thread::current().id()).unwrap() }));
            }
        });
        let ran_on = loop {
            bound.check("remote spawn");
            ml.wait(false);
            if let Ok(id) = rx.try_recv() {
                break id;
            }
        };
        assert_eq!(ran_on, std::thread::current().id());
        spawner.join().unwrap();

        settle(&ml);
        let before = stats();
        let quitter = std::thread::spawn({
            let (handle, remote) = (ml.handle(), ml.aio_context().remote());
            move || {
                spin_until("the main loop to block", || {
                    remote.stats().blocking_waits > before.blocking_waits
                });
                handle.quit();
            }
        });
        assert_eq!(ml.run(), Stopped::Quit);
        quitter.join().unwrap();
        bound.check("quit");
    }

    /// QEMU's reason for two contexts: a nested wait of the aio context (AIO_WAIT_WHILE, here a
    /// `block_on` inside a glib callback) runs the aio context only. The iohandler context's fd
    /// handler and BH, and a due glib timeout, wait for the main loop.
    fn nested_aio_poll_leaves_iohandler_and_glib_alone(backend) {
        let ml = default_main_loop(backend);
        let iohandler = ml.iohandler_context();
        let notifier = EventNotifier::new().unwrap();
        let io_reads = Rc::new(Cell::new(0));
        let _reg = iohandler
            .set_fd_handler(
                std::os::fd::AsRawFd::as_raw_fd(&notifier),
                FdHandlers::new().read({
                    let (n, io_reads) = (notifier.clone(), io_reads.clone());
                    move || {
                        n.test_and_clear().unwrap();
                        io_reads.set(io_reads.get() + 1);
                    }
                }),
            )
            .unwrap();
        let io_bhs = Rc::new(Cell::new(0));
        let io_bh = iohandler.bh({
            let io_bhs = io_bhs.clone();
            move || io_bhs.set(io_bhs.get() + 1)
        });
        let glib_runs = Rc::new(Cell::new(0));
        let seen_inside = Rc::new(Cell::new(None));
        glib::idle_add_local_once({
            let (notifier, io_bh, io_reads, io_bhs, glib_runs, seen_inside) = (
                notifier.clone(),
                io_bh.remote(),
                io_reads.clone(),
                io_bhs.clone(),
                glib_runs.clone(),
                seen_inside.clone(),
            );
            move || {
                // Work for the iohandler context and for glib, all ready before the nested wait.
                glib::timeout_add_local_once(Duration::ZERO, {
                    let glib_runs = glib_runs.clone();
                    move || glib_runs.set(glib_runs.get() + 1)
                });
                notifier.set().unwrap();
                io_bh.schedule();
                // The nested wait: the aio context is the current one in a glib callback.
                let aio_ran = aioctx::with_current(|aio| {
                    aio.block_on(async {
                        aioctx::time::sleep(Duration::from_millis(3)).await;
                        aioctx::spawn_local(async { true }).await.unwrap()
                    })
                });
                seen_inside.set(Some((aio_ran, io_reads.get(), io_bhs.get(), glib_runs.get())));
            }
        });
        run_until(&ml, "the nested wait and the iohandler", || {
            seen_inside.get().is_some() && io_reads.get() == 1 && io_bhs.get() == 1 && glib_runs.get() == 1
        });
        assert_eq!(seen_inside.get(), Some((true, 0, 0, 0)), "(aio ran, iohandler reads, iohandler BHs, glib runs) inside the nested wait");
    }

    /// The context as a GSource, driven only by `glib::MainContext::iteration`: BHs, an fd handler,
    /// a timer, a task, a user SQE and a remote spawn from another thread (which must wake glib's
    /// poll) all run; a 200 us timer waits for glib's rounded-up millisecond.
    fn g_source_driven_by_glib_iteration(backend) {
        let ctx = tests::context(backend);
        let gctx = glib::MainContext::new();
        let source = ctx.g_source();
        source.attach(Some(&gctx));
        assert_eq!(ctx.g_source(), source, "one source per context");

        let bh_runs = Rc::new(Cell::new(0));
        let bh = ctx.bh({
            let bh_runs = bh_runs.clone();
            move || bh_runs.set(bh_runs.get() + 1)
        });
        bh.schedule();
        let notifier = EventNotifier::new().unwrap();
        let kicks = Rc::new(Cell::new(0));
        let _reg = ctx
            .set_event_notifier(&notifier, {
                let (n, kicks) = (notifier.clone(), kicks.clone());
                move || {
                    if n.test_and_clear().unwrap() {
                        kicks.set(kicks.get() + 1);
                    }
                }
            }, None)
            .unwrap();
        notifier.set().unwrap();
        let task = ctx.spawn_local(async { aioctx::yield_now().await; "task" });
        let sqe_done = Rc::new(Cell::new(None));
        // SAFETY: a NOP points at no memory.
        unsafe {
            ctx.add_sqe(aioctx::io_uring::opcode::Nop::new().build(), {
                let sqe_done = sqe_done.clone();
                move |c| sqe_done.set(Some(c.result))
            })
        }
        .unwrap();
        iterate_until(&gctx, &ctx, "BH, fd handler, task and SQE", || {
            bh_runs.get() == 1 && kicks.get() == 1 && task.is_finished() && sqe_done.get().is_some()
        });
        assert_eq!(sqe_done.get(), Some(0));
        assert_eq!(ctx.block_on(task).unwrap(), "task");

        // A remote spawn while glib sleeps in its poll with the context's window open; the task
        // reports back over a channel once it ran.
        let before = ctx.stats();
        let (tx, rx) = mpsc::channel();
        let spawner = std::thread::spawn({
            let remote = ctx.remote();
            move || {
                spin_until("glib to block", || {
                    remote.stats().blocking_waits > before.blocking_waits
                });
                drop(remote.spawn(async move { tx.send(5).unwrap() }));
            }
        });
        let got = Cell::new(None);
        iterate_until(&gctx, &ctx, "the remote spawn", || {
            got.set(got.get().or(rx.try_recv().ok()));
            got.get().is_some()
        });
        spawner.join().unwrap();
        assert_eq!(got.get(), Some(5));
        assert!(ctx.stats().notify_writes > before.notify_writes, "the remote spawn did not write the eventfd");

        // glib's poll takes milliseconds: for a 200 us timer the source asks glib for 1 ms (rounded
        // up, never 0, which would spin). A stall of 200 us between arming and asking (a loaded
        // machine) makes the timer due: retry.
        let fired = Rc::new(Cell::new(false));
        let timer = ctx.timer(Clock::Realtime, {
            let fired = fired.clone();
            move || fired.set(true)
        });
        let asked = (0..5)
            .find_map(|_| {
                timer.arm_after(Duration::from_micros(200));
                // Takes the notification the arming left, without waiting.
                while gctx.iteration(false) {}
                Some(glib_poll_timeout_ms(&gctx)).filter(|_| !fired.get())
            })
            .expect("the timer was due at every try");
        assert_eq!(asked, 1, "glib's poll timeout in ms for a 200 us timer");
        iterate_until(&gctx, &ctx, "the 200 us timer", || fired.get());

        // Dropping the context destroys its source.
        drop(ctx);
        assert!(source.is_destroyed());
    }

    /// A user SQE in flight when glib starts driving the context. On io_uring the ring defers task
    /// running, so glib cannot poll it until the SQE completes and the ring is swapped for a plain
    /// one; on epoll and poll the SQE is on the (plain) user-SQE ring. Either way its completion
    /// arrives, and afterwards a remote wake reaches glib's poll.
    fn g_source_with_a_user_sqe_in_flight(backend) {
        let ctx = tests::context(backend);
        let done = Rc::new(Cell::new(None));
        // SAFETY: a NOP points at no memory.
        unsafe {
            ctx.add_sqe(aioctx::io_uring::opcode::Nop::new().build(), {
                let done = done.clone();
                move |c| done.set(Some(c.result))
            })
        }
        .unwrap();
        let gctx = glib::MainContext::new();
        ctx.g_source().attach(Some(&gctx));
        iterate_until(&gctx, &ctx, "the SQE", || done.get().is_some());
        assert_eq!(done.get(), Some(0));
        let before = ctx.stats();
        let (tx, rx) = mpsc::channel();
        let spawner = std::thread::spawn({
            let remote = ctx.remote();
            move || {
                spin_until("glib to block", || remote.stats().blocking_waits > before.blocking_waits);
                drop(remote.spawn(async move { tx.send(()).unwrap() }));
            }
        });
        let ran = Cell::new(false);
        iterate_until(&gctx, &ctx, "the remote task", || {
            ran.set(ran.get() || rx.try_recv().is_ok());
            ran.get()
        });
        spawner.join().unwrap();
    }
}

/// An IoThread in glib mode runs glib sources attached to its `MainContext` on its own thread,
/// and its context's work (remote calls, tasks with timers) goes on there too.
#[test]
fn iothread_in_glib_mode_runs_glib_sources_on_its_thread() {
    let io = aioctx::IoThread::spawn("glib-mode").unwrap();
    let gctx = io.g_main_context();
    assert_eq!(io.g_main_context(), gctx, "one context per IoThread");

    let (tx, rx) = mpsc::channel();
    let timeout =
        glib::timeout_source_new(Duration::from_millis(1), None, glib::Priority::DEFAULT, {
            let mut runs = 0;
            move || {
                runs += 1;
                tx.send(std::thread::current().name().map(str::to_owned))
                    .unwrap();
                glib::ControlFlow::from(runs < 3)
            }
        });
    timeout.attach(Some(&gctx));
    for _ in 0..3 {
        let name = rx
            .recv_timeout(BOUND)
            .expect("the glib timeout did not run");
        assert_eq!(name.as_deref(), Some("IO glib-mode"));
    }

    // glib's own futures executor on the IoThread, awaiting an aioctx timer of the IoThread's
    // context (glib mode is the thread's loop now, so the timer fires through the GSource).
    let (tx, rx) = mpsc::channel();
    gctx.spawn(async move {
        let start = aioctx::time::Instant::now();
        aioctx::time::sleep(Duration::from_micros(200)).await;
        tx.send((
            start.elapsed(),
            std::thread::current().name().map(str::to_owned),
        ))
        .unwrap();
    });
    let (slept, name) = rx
        .recv_timeout(BOUND)
        .expect("the glib task did not finish");
    assert!(slept >= Duration::from_micros(200));
    assert_eq!(name.as_deref(), Some("IO glib-mode"));

    let task = io.remote().spawn(async {
        aioctx::time::sleep(Duration::from_micros(100)).await;
        std::thread::current().name().map(str::to_owned)
    });
    assert_eq!(
        task.join_blocking().unwrap().as_deref(),
        Some("IO glib-mode")
    );
    assert_eq!(io.remote().call(|| 6 * 7).unwrap(), 42);
    io.stop();
}

/// `MainLoop::new()` owns glib's global default context, as QEMU's main loop does: glib's
/// `timeout_add_local` lands there, and no other thread can own it meanwhile.
#[test]
fn main_loop_new_owns_the_default_glib_context() {
    let _lock = DEFAULT_CONTEXT.lock().unwrap_or_else(|e| e.into_inner());
    let ml = MainLoop::builder().handle_signals(false).build().unwrap();
    assert_eq!(ml.glib_context(), &glib::MainContext::default());
    let elsewhere =
        std::thread::spawn(|| MainLoop::builder().handle_signals(false).build().map(drop));
    assert_eq!(
        elsewhere.join().unwrap().unwrap_err().kind(),
        std::io::ErrorKind::ResourceBusy
    );
    let fired = Rc::new(Cell::new(false));
    glib::timeout_add_local_once(Duration::from_millis(1), {
        let fired = fired.clone();
        move || fired.set(true)
    });
    run_until(&ml, "the default context's timeout", || fired.get());
    drop(ml);
    // Released: another thread can own it now.
    std::thread::spawn(|| MainLoop::builder().handle_signals(false).build().map(drop))
        .join()
        .unwrap()
        .unwrap();
}

/// `run_until` gives up on a future that is still pending when SIGINT or SIGTERM arrives (the loop
/// handling signals), and says which; `block_on` finishes its future through a stop request, which
/// then ends the next `run`.
#[test]
fn a_signal_ends_run_until_but_not_block_on() {
    let (ml, _signals) = signal_handling_main_loop();
    for signum in [libc::SIGINT, libc::SIGTERM] {
        let served = ml.run_until(async {
            // SAFETY: kill sends a signal to this process; the main loop installed handlers for both.
            assert_eq!(unsafe { libc::kill(libc::getpid(), signum) }, 0);
            std::future::pending::<()>().await
        });
        assert_eq!(served, Err(Stopped::Signal(signum)));
    }
    // block_on goes on through a stop request (`quit` makes it at once, where a signal's handler
    // runs at some later iteration) and leaves it for the next `run`.
    let out = ml.block_on(async {
        ml.handle().quit();
        for _ in 0..3 {
            aioctx::yield_now().await; // each yield goes through the loop's wait
        }
        "finished"
    });
    assert_eq!(out, "finished");
    assert_eq!(ml.run(), Stopped::Quit);
}

/// A stop requested while `run_until`'s future can finish does not cost its output: the future wins,
/// and the request ends the next `run` instead.
#[test]
fn run_until_prefers_a_ready_output_to_a_pending_stop() {
    let ml = MainLoop::builder()
        .context(glib::MainContext::new())
        .handle_signals(false)
        .build()
        .unwrap();
    ml.handle().quit();
    assert_eq!(ml.run_until(async { 7 }), Ok(7));
    assert_eq!(ml.run(), Stopped::Quit);
    // From another thread, while the future waits on a timer.
    let handle = ml.handle();
    let served = ml.run_until(async move {
        std::thread::spawn(move || handle.quit());
        aioctx::time::sleep(Duration::from_secs(3600)).await
    });
    assert_eq!(served, Err(Stopped::Quit));
}

/// SIGTERM and SIGINT, delivered to the process, make `run` return; the handler runs on the main
/// loop's iohandler context.
#[test]
fn signals_stop_the_main_loop() {
    let (ml, _signals) = signal_handling_main_loop();
    for signum in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: kill sends a signal to this process; the main loop installed handlers for both.
        assert_eq!(unsafe { libc::kill(libc::getpid(), signum) }, 0);
        assert_eq!(ml.run(), Stopped::Signal(signum));
    }
}
