//! A signal storm: SIGALRM every 100 us from `setitimer(ITIMER_REAL)` and every 100 us from a POSIX
//! timer aimed at the loop thread, its handler installed without SA_RESTART, so that every blocking
//! syscall of the loop (ppoll, epoll_pwait2, io_uring_enter) and of the thread pool may fail with
//! EINTR. On every backend (one test each, in a child process of its own), for about half a second,
//! the loop keeps its promises: timers fire in deadline order and never early, every cross-thread BH,
//! fd event and task is delivered exactly once, block I/O and a TCP echo complete, and no EINTR reaches
//! the user.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aioctx::fs::File;
use aioctx::time::{Clock, Instant};
use aioctx::{Backend, FdHandlers};
use tests::{child_expectation, per_backend, run_in_child, Guard};

use tests::TempPath;

static SIGNALS_ON_LOOP: AtomicU64 = AtomicU64::new(0);
static LOOP_TID: AtomicI32 = AtomicI32::new(0);

fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and is async-signal-safe.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

extern "C" fn on_alarm(_signal: libc::c_int) {
    if gettid() == LOOP_TID.load(Ordering::Relaxed) {
        SIGNALS_ON_LOOP.fetch_add(1, Ordering::Relaxed);
    }
}

/// Installs the SIGALRM handler without SA_RESTART and starts two storms of it, each every 100 us:
/// `setitimer(ITIMER_REAL)`, process-directed (it lands on whichever thread the kernel picks: the test
/// harness's main thread, thread-pool workers), and a POSIX timer aimed at the loop thread with
/// SIGEV_THREAD_ID, so that the loop's own waits are surely interrupted. Returns the POSIX timer.
fn start_storm(loop_tid: i32) -> libc::timer_t {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; we then set the handler, a
    // plain extern "C" fn that only touches atomics and calls gettid (async-signal-safe).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = 0; // no SA_RESTART: interrupted syscalls fail with EINTR
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()),
            0
        );
    }
    set_itimer(100);
    // SAFETY: a zeroed sigevent is valid; we fill the fields SIGEV_THREAD_ID uses.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_THREAD_ID;
    event.sigev_signo = libc::SIGALRM;
    event.sigev_notify_thread_id = loop_tid;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: timer_create reads `event` and writes `timer`, both ours.
    let r = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) };
    assert_eq!(r, 0, "timer_create: {}", std::io::Error::last_os_error());
    set_posix_timer(timer, 100_000);
    timer
}

fn set_itimer(every_us: libc::suseconds_t) {
    let tick = libc::timeval {
        tv_sec: 0,
        tv_usec: every_us,
    };
    let timer = libc::itimerval {
        it_interval: tick,
        it_value: tick,
    };
    // SAFETY: setitimer reads the itimerval we own.
    let r = unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
    assert_eq!(r, 0, "setitimer: {}", std::io::Error::last_os_error());
}

fn set_posix_timer(timer: libc::timer_t, every_ns: libc::c_long) {
    let tick = libc::timespec {
        tv_sec: 0,
        tv_nsec: every_ns,
    };
    let spec = libc::itimerspec {
        it_interval: tick,
        it_value: tick,
    };
    // SAFETY: `timer` came from timer_create; timer_settime reads the itimerspec we own.
    let r = unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) };
    assert_eq!(r, 0, "timer_settime: {}", std::io::Error::last_os_error());
}

/// Items the producer thread sends: one-shot BHs, 8-byte fd messages and Send tasks.
const ITEMS: u32 = 1_500;
const TIMERS: u32 = 200;

fn storm_on(backend: Backend) {
    let ctx = tests::context(backend);
    let guard = Guard::new(&ctx);
    let loop_hits_before = SIGNALS_ON_LOOP.load(Ordering::Relaxed);
    let waits_before = ctx.stats().blocking_waits;

    // Timers spread over ~400 ms in shuffled creation order, each recording when it fired.
    let fired = Rc::new(RefCell::new(Vec::new()));
    let start = ctx.now_ns(Clock::Realtime);
    let timers: Vec<_> = (0..TIMERS)
        .map(|i| {
            let deadline = start + i64::from((i * 7919) % TIMERS) * 2_000_000 + i64::from(i);
            let fired = fired.clone();
            // Instant::now reads the running context's clock, Realtime here, as the deadline does.
            let t = ctx.timer(Clock::Realtime, move || {
                fired.borrow_mut().push((deadline, Instant::now().as_ns()));
            });
            t.arm_ns(deadline);
            t
        })
        .collect();

    // fd events: 8-byte sequence numbers over a socket, read by a level-triggered handler.
    let (rx, mut tx) = UnixStream::pair().unwrap();
    rx.set_nonblocking(true).unwrap();
    let received = Rc::new(RefCell::new(Vec::<u8>::new()));
    let _reg = ctx
        .set_fd_handler(
            rx.as_raw_fd(),
            FdHandlers::new().read({
                let received = received.clone();
                let rx = rx.try_clone().unwrap();
                move || {
                    let mut buf = [0u8; 4096];
                    match (&rx).read(&mut buf) {
                        Ok(n) => received.borrow_mut().extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("read from the socket: {e}"),
                    }
                }
            }),
        )
        .unwrap();

    // Local tasks that sleep short random-ish times and check they never wake early, and one that does
    // block I/O on the context's engine.
    let sleepers: Vec<_> = (0..10u64)
        .map(|t| {
            ctx.spawn_local(async move {
                for k in 0..40u64 {
                    let d = Duration::from_micros(50 + (t * 131 + k * 71) % 400);
                    let before = Instant::now();
                    aioctx::time::sleep(d).await;
                    assert!(before.elapsed() >= d, "a sleep of {d:?} woke early");
                }
            })
        })
        .collect();
    // TCP echo between two tasks of this loop: readiness waits and non-blocking socket calls.
    let echo = ctx.spawn_local(async {
        use futures::{AsyncReadExt, AsyncWriteExt};
        let listener = aioctx::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = aioctx::spawn_local(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            while s.read_exact(&mut buf).await.is_ok() {
                s.write_all(&buf).await.unwrap();
            }
        });
        let mut c = aioctx::net::TcpStream::connect(addr).await.unwrap();
        for round in 0..200u32 {
            let msg: Vec<u8> = (0..1024u32).map(|i| (i ^ round) as u8).collect();
            c.write_all(&msg).await.unwrap();
            let mut back = vec![0u8; 1024];
            c.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
            aioctx::time::sleep(Duration::from_micros(200)).await;
        }
        drop(c);
        server.await.unwrap();
    });
    let path = TempPath::new("storm");
    let io_task = ctx.spawn_local({
        let path = path.0.clone();
        async move {
            let f = File::create(&path).await.unwrap();
            for round in 0..64u64 {
                let data = vec![round as u8; 4096];
                let (res, _) = f.write_all_at(data.clone(), round * 4096).await;
                res.unwrap();
                let (res, back) = f.read_exact_at(vec![0u8; 4096], round * 4096).await;
                res.unwrap();
                assert_eq!(back, data);
            }
            f.sync_data().await.unwrap();
        }
    });

    // The producer: paced, so that the loop keeps going back to sleep and signals hit its waits.
    let bhs_run = Arc::new(AtomicU32::new(0));
    let remote = ctx.remote();
    let producer = std::thread::spawn({
        let bhs_run = bhs_run.clone();
        move || {
            let mut handles = Vec::new();
            for i in 0..ITEMS {
                let b = bhs_run.clone();
                remote.schedule_oneshot(move || {
                    b.fetch_add(1, Ordering::Relaxed);
                });
                tx.write_all(&u64::from(i).to_le_bytes()).unwrap();
                if i % 10 == 0 {
                    handles.push(remote.spawn(async move {
                        aioctx::time::sleep(Duration::from_micros(100)).await;
                        i
                    }));
                }
                std::thread::sleep(Duration::from_micros(150));
            }
            handles
        }
    });

    let all_received = || received.borrow().len() == ITEMS as usize * 8;
    guard.poll_until(&ctx, "the storm's work", || {
        producer.is_finished()
            && bhs_run.load(Ordering::Relaxed) == ITEMS
            && all_received()
            && fired.borrow().len() == TIMERS as usize
            && sleepers.iter().all(|s| s.is_finished())
            && io_task.is_finished()
            && echo.is_finished()
    });
    let handles = producer.join().unwrap();
    let outputs: Vec<u32> = handles
        .into_iter()
        .map(|h| ctx.block_on(h).unwrap())
        .collect();
    assert_eq!(outputs, (0..ITEMS).step_by(10).collect::<Vec<_>>());
    ctx.block_on(io_task).unwrap();
    ctx.block_on(echo).unwrap();
    for s in sleepers {
        // Each ran its 40 sleeps to the end.
        ctx.block_on(s).unwrap();
    }

    let received = received.borrow();
    for (i, chunk) in received.chunks(8).enumerate() {
        assert_eq!(u64::from_le_bytes(chunk.try_into().unwrap()), i as u64);
    }
    let fired = fired.borrow();
    let deadlines: Vec<i64> = fired.iter().map(|&(d, _)| d).collect();
    assert!(
        deadlines.windows(2).all(|w| w[0] < w[1]),
        "timers fire in deadline order"
    );
    for &(deadline, at) in fired.iter() {
        assert!(at >= deadline, "a timer fired {} ns early", deadline - at);
    }
    assert!(timers.iter().all(|t| !t.is_pending()));

    let hits = SIGNALS_ON_LOOP.load(Ordering::Relaxed) - loop_hits_before;
    let waits = ctx.stats().blocking_waits - waits_before;
    assert!(
        hits >= 100,
        "{backend:?}: only {hits} signals hit the loop thread"
    );
    assert!(
        waits >= 100,
        "{backend:?}: the loop blocked only {waits} times"
    );
    eprintln!("{backend:?}: {hits} signals on the loop thread, {waits} blocking waits");
}

per_backend! {
    fn signal_storm_during_waits_breaks_nothing(backend) {
        let name = tests::per_backend_test_name(module_path!(), backend);
        if child_expectation(&name).is_none() {
            // A child: the signal disposition and the interval timer are process-wide.
            return run_in_child(&name, &[]);
        }
        LOOP_TID.store(gettid(), Ordering::Relaxed);
        let timer = start_storm(gettid());
        storm_on(backend);
        set_itimer(0);
        set_posix_timer(timer, 0);
        // SAFETY: `timer` came from timer_create and is deleted once.
        assert_eq!(unsafe { libc::timer_delete(timer) }, 0);
    }
}
