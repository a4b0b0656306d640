//! What the fault tests share: the check that a context still serves, and temp files.

use std::cell::Cell;
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
