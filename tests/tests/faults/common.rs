//! What the fault tests share: the check that a context still serves, and temp files.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use aioctx::time::Clock;
use aioctx::AioContext;
use tests::{counting_notifier, Guard};

/// A callback that counts its runs, and the count.
pub fn counter() -> (impl Fn() + Clone + 'static, Rc<Cell<u32>>) {
    let runs = Rc::new(Cell::new(0));
    let r = runs.clone();
    (move || r.set(r.get() + 1), runs)
}

/// The loop still runs a BH, a timer, an fd handler and a task, and its announcement that it is about to
/// block was withdrawn: a cross-thread notify while it is not waiting costs no eventfd write.
pub fn assert_context_serves(ctx: &AioContext) {
    let guard = Guard::new(ctx);
    let (bh_fn, bh_runs) = counter();
    let bh = ctx.bh(bh_fn);
    bh.schedule();
    let (timer_fn, timer_runs) = counter();
    let timer = ctx.timer(Clock::Realtime, timer_fn);
    timer.arm_after(Duration::from_micros(100));
    let (n, _reg, kicks) = counting_notifier(ctx);
    n.set().unwrap();
    let task = ctx.spawn_local(async {
        aioctx::time::sleep(Duration::from_micros(50)).await;
        7
    });
    guard.poll_until(ctx, "BH, timer, fd handler and task", || {
        bh_runs.get() == 1 && timer_runs.get() == 1 && kicks.get() == 1 && task.is_finished()
    });
    assert_eq!(ctx.block_on(task).unwrap(), 7);

    // A notify that began while the loop was waiting may bump the counter a little later (another
    // thread between its eventfd write and its count), so one clean attempt out of three proves the
    // announcement is down; a stuck one makes every attempt write.
    let clean = (0..3).any(|_| {
        while ctx.poll(false) {}
        let before = ctx.stats().notify_writes;
        let remote = ctx.remote();
        std::thread::spawn(move || remote.notify()).join().unwrap();
        ctx.stats().notify_writes == before
    });
    assert!(
        clean,
        "the loop is not waiting: a notify must not write the eventfd (announcement left raised?)"
    );
    ctx.poll(false);
}

/// A path in `dir` (the temp dir by default) removed on drop.
pub struct TempPath(pub PathBuf);

impl TempPath {
    pub fn new(tag: &str) -> Self {
        Self::in_dir(&std::env::temp_dir(), tag)
    }

    pub fn in_dir(dir: &std::path::Path, tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(dir.join(format!("aioctx-faults-{tag}-{}-{n}", std::process::id())))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sets the soft limit of `resource` (the hard limit stays).
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
