//! fd monitor selection, switching and fallback (the poll monitor's upgrade to epoll, regular files),
//! bad input, and the process-wide knobs (AIOCTX_BACKEND, the fd limit), which run in a child process so
//! they cannot leak into other tests.
//!
//! Nothing here sleeps: waits block in the loop, with a guard timer so that a lost wakeup fails the test
//! instead of hanging it.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;

use aioctx::{AioContext, Backend, EventNotifier, FdHandlers};
use tests::{
    child_expectation, counting_notifier, os_error, per_backend, run_in_child, Counted, Guard,
    EXPECT,
};

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

/// Values of AIOCTX_BACKEND, and what `AioContext::new()` makes of each: a backend, "ok" (Auto: the
/// best the kernel offers) or "invalid".
const AIOCTX_BACKEND_VALUES: [(&str, &str); 6] = [
    ("poll", "Poll"),
    ("Poll", "Poll"),
    ("epoll", "Epoll"),
    ("io_uring", "IoUring"),
    ("auto", "ok"),
    ("bogus", "invalid"),
];

#[test]
fn aioctx_backend_env_chooses_the_default_backend() {
    const NAME: &str = "aioctx_backend_env_chooses_the_default_backend";
    let Some(expect) = child_expectation(NAME) else {
        for (value, expect) in AIOCTX_BACKEND_VALUES {
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
}

per_backend! {
    /// A backend named in code wins over the environment, whatever AIOCTX_BACKEND says (each value
    /// in a child process of its own).
    fn a_backend_named_in_code_wins_over_aioctx_backend_env(backend) {
        let name = tests::per_backend_test_name(module_path!(), backend);
        if child_expectation(&name).is_none() {
            for (value, _) in AIOCTX_BACKEND_VALUES {
                run_in_child(&name, &[("AIOCTX_BACKEND", value)]);
            }
            return;
        }
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

#[test]
fn running_out_of_fds_is_an_error_not_a_panic() {
    const NAME: &str = "running_out_of_fds_is_an_error_not_a_panic";
    if child_expectation(NAME).is_none() {
        // A child: lowering RLIMIT_NOFILE would break every other test in this process.
        return run_in_child(NAME, &[]);
    }
    let mut hoard = tests::FdHoard::exhaust(16);

    // One test for all backends, on purpose: it compares what each needs (with one fd free, poll
    // builds and epoll and io_uring cannot) on one shortage. Every check names its backend.
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
    hoard.free(1);
    for _ in 0..3 {
        for backend in [Backend::Epoll, Backend::IoUring] {
            let err = AioContext::builder().backend(backend).build().unwrap_err();
            assert_eq!(os_error(&err), Some(libc::EMFILE), "{backend:?}: {err}");
        }
    }
    drop(tests::context(Backend::Poll));

    hoard.free(1);
    let ctx = AioContext::new().unwrap_or_else(|e| panic!("Auto with two fds free: {e}"));
    ctx.bh_oneshot(|| {});
    assert!(
        ctx.poll(false),
        "the {:?} context created after the shortage does not run",
        ctx.backend()
    );
    drop(ctx);
    drop(hoard);
}
