//! Integration tests for aioctx, against its public API only. The tests live in `tests/tests/`; this
//! library holds what they share.
//!
//! Every test file (one test binary each) is named after the subsystem it tests, so that the list of
//! files reads as a map of the runtime and a failing binary's name says where to look:
//!
//! | prefix | subsystem |
//! |---|---|
//! | `loop_` | the AioContext loop: bottom halves, fd handlers and event notifiers, nested polls, callback timers and clocks, adaptive busy-polling and the notify_me protocol |
//! | `monitor_` | the fd monitors (poll, epoll, io_uring): registration, selection, switching and fallback; the io_uring monitor and user SQEs |
//! | `rt_` | the executor (tasks, `JoinHandle`, `block_on`), IOThreads and `reschedule`, the async mutex, the blocking thread pool, `#[aioctx::main]` / `#[aioctx::test]` |
//! | `time_` | the time futures (`sleep`, `timeout`, `interval`, `Instant`) and virtual time |
//! | `net_` | readiness futures (`aioctx::io::Async`), sockets, event-notifier waits, stream reads |
//! | `fs_` | block I/O (`aioctx::fs::File`) |
//! | `app_` | the example applications (the virtio-blk device model, the NBD server, the QMP monitor), their parsers, the property-test twins of the fuzz targets, and real Linux guests driving block backends (`app_guest_`: the harness is [`guest`]) |
//! | `faults_` | fault injection: io_uring refused, fd and file-size limits, a full file system, signal storms, panicking callbacks |
//! | `stress_` | load over time: remote BH storms, connection churn (soak) |
//! | `glib_` | feature `glib`: the `MainLoop` (glib and two contexts in one wait), `AioContext::g_source` driven by glib, IoThreads in glib mode |
//!
//! One file stands apart: `async_send_sync.rs` pins, at compile time, which public types and futures
//! are `Send`, `Sync` and `Unpin`.
//!
//! A test of loop-level behaviour runs once per backend, as one test per backend named after it
//! (`name::poll`, `name::epoll`, `name::io_uring`), so that a failure names its backend:
//! [`per_backend!`] for plain tests (`#[backends(epoll, poll)]` for a subset kept on purpose, and
//! the test says why), `#[aioctx::test(backend = "all")]` for async ones. No test loops over backends
//! inside one test, except where it compares them (then every assertion names its backend).

use aioctx::{AioContext, Backend};

pub mod fuzzing;
pub mod guest;
pub mod tls;
pub mod tools;

/// A context forced onto `backend`, panicking with a clear message if it cannot be created.
pub fn context(backend: Backend) -> AioContext {
    let ctx = AioContext::builder()
        .backend(backend)
        .build()
        .unwrap_or_else(|e| panic!("cannot create a {backend:?} context: {e}"));
    assert_eq!(ctx.backend(), backend);
    ctx
}

/// Defines one `#[test]` per backend for each function taking a `Backend`:
///
/// ```ignore
/// per_backend! { fn bh_runs_once(backend) { let ctx = tests::context(backend); ... } }
/// ```
/// expands to a module `bh_runs_once` with tests `poll`, `epoll` and `io_uring`, so that a failing test
/// names its backend. A test that covers a subset of the backends on purpose names the subset in a
/// `#[backends(...)]` attribute, which must come first (before any doc comment), and says why:
///
/// ```ignore
/// per_backend! {
///     #[backends(epoll, poll)]
///     /// The readiness backends leave data in the socket (io_uring reads ahead: see ...).
///     fn leave_data_in_the_socket(backend) { ... }
/// }
/// ```
/// expands to `leave_data_in_the_socket::epoll` and `leave_data_in_the_socket::poll`. A test that runs
/// its body in a child process finds its own name with [`per_backend_test_name`].
#[macro_export]
macro_rules! per_backend {
    (
        #[backends($($b:ident),+ $(,)?)]
        $(#[$meta:meta])* fn $name:ident($backend:ident) $body:block $($rest:tt)*
    ) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($backend: aioctx::Backend) $body

            $(
                #[test]
                fn $b() {
                    run($crate::__backend_named!($b))
                }
            )+
        }
        $crate::per_backend! { $($rest)* }
    };
    ($(#[$meta:meta])* fn $name:ident($backend:ident) $body:block $($rest:tt)*) => {
        $crate::per_backend! {
            #[backends(poll, epoll, io_uring)]
            $(#[$meta])* fn $name($backend) $body $($rest)*
        }
    };
    () => {};
}

/// The backend a [`per_backend!`] test is named after (`poll`, `epoll`, `io_uring`).
#[doc(hidden)]
#[macro_export]
macro_rules! __backend_named {
    (poll) => {
        aioctx::Backend::Poll
    };
    (epoll) => {
        aioctx::Backend::Epoll
    };
    (io_uring) => {
        aioctx::Backend::IoUring
    };
}

/// The full name, as the test harness knows it, of the [`per_backend!`] test for `backend`, given the
/// `module_path!()` of its body: what [`run_in_child`] needs to re-run that very test.
///
/// ```ignore
/// per_backend! {
///     fn storm(backend) {
///         let name = tests::per_backend_test_name(module_path!(), backend);
///         if tests::child_expectation(&name).is_none() {
///             return tests::run_in_child(&name, &[]);
///         }
///         // ... the body, in the child ...
///     }
/// }
/// ```
pub fn per_backend_test_name(module_path: &str, backend: Backend) -> String {
    // The test binary's crate name comes first; the harness leaves it out.
    let (_crate, path) = module_path
        .split_once("::")
        .expect("a per_backend! body lives in the test's own module");
    let test = match backend {
        Backend::Poll => "poll",
        Backend::Epoll => "epoll",
        Backend::IoUring => "io_uring",
        other => panic!("per_backend! makes no test for {other:?}"),
    };
    format!("{path}::{test}")
}

/// How long a test waits for something that should take microseconds before it fails instead of hanging.
pub const BOUND: std::time::Duration = std::time::Duration::from_secs(20);

/// Spins until `cond` holds (for a thread that waits on another), failing after [`BOUND`].
pub fn spin_until(what: &str, cond: impl Fn() -> bool) {
    let give_up = std::time::Instant::now() + BOUND;
    while !cond() {
        assert!(
            std::time::Instant::now() < give_up,
            "timed out waiting for {what}"
        );
        std::hint::spin_loop();
    }
}

/// A timer that makes any blocking poll of its context return within [`BOUND`], so that a lost wakeup
/// fails the test instead of hanging it.
pub struct Guard {
    _timer: aioctx::time::Timer,
    expired: std::rc::Rc<std::cell::Cell<bool>>,
}

impl Guard {
    /// Arms the guard timer, then takes the notification the arming left so that the next blocking poll
    /// really blocks.
    pub fn new(ctx: &AioContext) -> Guard {
        let expired = std::rc::Rc::new(std::cell::Cell::new(false));
        let e = expired.clone();
        let timer = ctx.timer(aioctx::time::Clock::Realtime, move || e.set(true));
        timer.arm_after(BOUND);
        ctx.poll(false);
        Guard {
            _timer: timer,
            expired,
        }
    }

    /// Whether the guard timer fired: a blocking poll returned only because of it.
    pub fn expired(&self) -> bool {
        self.expired.get()
    }

    /// Runs blocking iterations until `done()`, failing if the guard fires first.
    pub fn poll_until(&self, ctx: &AioContext, what: &str, done: impl Fn() -> bool) {
        for _ in 0..100_000 {
            if done() {
                return;
            }
            assert!(
                !self.expired(),
                "{what}: the loop was not woken within {BOUND:?}"
            );
            ctx.poll(true);
        }
        panic!(
            "{what}: not done after 100000 iterations: {:?}",
            ctx.stats()
        );
    }
}

/// A registered notifier and how many times its read handler ran.
pub type Counted = (
    aioctx::EventNotifier,
    aioctx::FdRegistration,
    std::rc::Rc<std::cell::Cell<u32>>,
);

/// A notifier registered on `ctx` whose read handler clears it and counts.
pub fn counting_notifier(ctx: &AioContext) -> Counted {
    let n = aioctx::EventNotifier::new().unwrap();
    let hits = std::rc::Rc::new(std::cell::Cell::new(0));
    let (n2, h) = (n.clone(), hits.clone());
    let on_read = move || {
        n2.test_and_clear().unwrap();
        h.set(h.get() + 1);
    };
    let reg = ctx.set_event_notifier(&n, on_read, None).unwrap();
    (n, reg, hits)
}

/// The raw OS error of `err`, looking through aioctx's error wrapping.
pub fn os_error(err: &std::io::Error) -> Option<i32> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(code) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(code);
        }
        current = e.source();
    }
    None
}

/// Set only in a child process: the test it is to run.
pub const CHILD: &str = "AIOCTX_TESTS_CHILD";
/// Set only in a child process: what its test is to check (test-specific).
pub const EXPECT: &str = "AIOCTX_TESTS_EXPECT";

/// In a child run of `test`, what it is to check (empty if nothing was said); `None` in the parent.
///
/// Tests that change process-wide state (rlimits, signal dispositions, seccomp filters, mount
/// namespaces, the environment) run their body in a child process of the test binary:
///
/// ```ignore
/// if child_expectation(NAME).is_none() {
///     return run_in_child(NAME, &[]);
/// }
/// // ... the body, in the child ...
/// ```
pub fn child_expectation(test: &str) -> Option<String> {
    (std::env::var(CHILD).ok()? == test).then(|| std::env::var(EXPECT).unwrap_or_default())
}

/// Re-runs `test` (its full path inside the test binary) alone in a child process of this test binary
/// with `env` added, and checks that it ran and passed.
pub fn run_in_child(test: &str, env: &[(&str, &str)]) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
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

/// A path in `dir` (the temp dir by default), unique in this process, removed on drop.
pub struct TempPath(pub std::path::PathBuf);

impl TempPath {
    pub fn new(tag: &str) -> Self {
        Self::in_dir(&std::env::temp_dir(), tag)
    }

    pub fn in_dir(dir: &std::path::Path, tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(dir.join(format!("aioctx-test-{tag}-{}-{n}", std::process::id())))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sets the soft limit of `resource` (the hard limit stays). Process-wide: child processes only.
pub fn set_soft_limit(resource: libc::__rlimit_resource_t, soft: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write one rlimit struct we own.
    assert_eq!(unsafe { libc::getrlimit(resource, &mut lim) }, 0);
    assert!(
        soft <= lim.rlim_max,
        "hard limit {} below {soft}",
        lim.rlim_max
    );
    lim.rlim_cur = soft;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(resource, &lim) }, 0);
}

/// Every fd the process may still open, held until freed (fd exhaustion; child processes only).
pub struct FdHoard(Vec<std::os::fd::OwnedFd>);

impl FdHoard {
    /// Lowers RLIMIT_NOFILE to `headroom` above the highest fd open now, then takes every fd left.
    pub fn exhaust(headroom: u64) -> FdHoard {
        let highest_open: u64 = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .max()
            .unwrap();
        set_soft_limit(libc::RLIMIT_NOFILE, highest_open + headroom);
        let mut fds = Vec::new();
        loop {
            // SAFETY: eventfd takes no pointers.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if fd < 0 {
                assert_eq!(
                    std::io::Error::last_os_error().raw_os_error(),
                    Some(libc::EMFILE)
                );
                return FdHoard(fds);
            }
            // SAFETY: `fd` was just opened and is owned by nobody else.
            fds.push(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
            assert!(fds.len() < 1_000, "RLIMIT_NOFILE did not take effect");
        }
    }

    /// Gives `n` fds back.
    pub fn free(&mut self, n: usize) {
        for _ in 0..n {
            self.0.pop().expect("nothing left to free");
        }
    }
}
