//! loom models of the loop's cross-thread protocols: the lock-free BH list and the notify_me word (with
//! the prepare..check window of an iteration driven from outside, glib's or the main loop's).
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p aioctx --release --lib loom`. The models drive the very
//! `BhList` and `NotifyState` the loop uses; the context's eventfd is modelled by a mutex and condvar, so a
//! lost wakeup shows up as a deadlock, which loom reports.

use std::sync::Arc;

use loom::sync::{Condvar, Mutex};
use loom::thread;

use crate::atomics::{AtomicU32, Ordering};
use crate::context::bh_list::{dequeue, BhList, BhNode, DELETED, SCHEDULED};
use crate::context::msg_ring::Current;
use crate::context::notify::{Kick, NotifyState};

/// The eventfd: a flag a waiter blocks on.
struct EventFd {
    set: Mutex<bool>,
    cond: Condvar,
}

impl EventFd {
    fn new() -> Self {
        Self {
            set: Mutex::new(false),
            cond: Condvar::new(),
        }
    }

    fn write(&self) {
        *self.set.lock().unwrap() = true;
        self.cond.notify_one();
    }

    /// Blocks until set, then clears (an infinite wait followed by the notifier's read handler).
    fn wait_and_clear(&self) {
        let mut set = self.set.lock().unwrap();
        while !*set {
            set = self.cond.wait(set).unwrap();
        }
        *set = false;
    }

    /// A zero-timeout wait followed by the read handler.
    fn clear(&self) {
        *self.set.lock().unwrap() = false;
    }
}

struct Ctx {
    notify: NotifyState,
    bhs: BhList<u32>,
    eventfd: EventFd,
    writes: AtomicU32,
}

impl Ctx {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            notify: NotifyState::new(),
            bhs: BhList::new(),
            eventfd: EventFd::new(),
            writes: AtomicU32::new(0),
        })
    }

    /// `aio_notify`.
    fn notify(&self) {
        if self.notify.notify_kick() != Kick::None {
            // Relaxed: a count the model asserts on after joining every thread (the join orders it).
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.eventfd.write();
        }
    }

    /// `qemu_bh_schedule` from any thread.
    fn schedule(&self, node: &Arc<BhNode<u32>>, flags: u32) {
        if self.bhs.enqueue(node, flags) {
            self.notify();
        }
    }

    /// One blocking `aio_poll` as the loop runs it, reduced to BHs. Returns the flags of each BH run.
    fn poll_blocking(&self) -> Vec<u32> {
        let mut scheduled = false;
        self.bhs.for_each_flags(|flags| {
            scheduled |= flags & (SCHEDULED | DELETED) == SCHEDULED;
            !scheduled
        });
        let use_notify_me = !scheduled;
        let mut block = use_notify_me;
        if use_notify_me && self.notify.prepare_wait() {
            block = false;
        }
        if block {
            self.eventfd.wait_and_clear();
        } else {
            self.eventfd.clear();
        }
        if use_notify_me {
            self.notify.finish_wait();
        }
        self.notify.accept();
        let mut slice = self.bhs.take_all();
        let mut ran = Vec::new();
        while let Some((node, flags)) = dequeue(&mut slice) {
            if flags & (SCHEDULED | DELETED) == SCHEDULED {
                ran.push(node.payload);
            }
        }
        ran
    }
}

impl Ctx {
    /// One iteration as an outside driver runs it (the GSource, the main loop): prepare opens the
    /// window, the outside poll sleeps on the eventfd unless a notification was pending, check closes
    /// the window and accepts, dispatch runs the BHs. Returns the payloads of the BHs run.
    fn external_iteration(&self) -> Vec<u32> {
        if self.notify.open_window() {
            self.eventfd.clear();
        } else {
            self.eventfd.wait_and_clear();
        }
        self.notify.close_window();
        self.run_bhs()
    }

    fn run_bhs(&self) -> Vec<u32> {
        let mut slice = self.bhs.take_all();
        let mut ran = Vec::new();
        while let Some((node, flags)) = dequeue(&mut slice) {
            if flags & (SCHEDULED | DELETED) == SCHEDULED {
                ran.push(node.payload);
            }
        }
        ran
    }
}

/// A BH scheduled from another thread wakes a loop driven from outside that sleeps in its own poll
/// (the window is open), or is seen by its next prepare (the window was closed): it runs once, and a
/// lost wakeup deadlocks the model. The model's driver always sleeps when nothing was pending, so the
/// BH must arrive through the window.
#[test]
fn loom_remote_bh_wakes_outside_driver() {
    loom::model(|| {
        let ctx = Ctx::new();
        let node = BhNode::new(5, 0);
        let remote = thread::spawn({
            let (ctx, node) = (Arc::clone(&ctx), Arc::clone(&node));
            move || ctx.schedule(&node, SCHEDULED)
        });
        let mut ran = Vec::new();
        while ran.is_empty() {
            ran = ctx.external_iteration();
        }
        remote.join().unwrap();
        assert_eq!(ran, [5]);
        // Relaxed: the join above orders every write before this read.
        assert!(ctx.writes.load(Ordering::Relaxed) <= 1);
        ctx.drain();
        assert_eq!(Arc::strong_count(&node), 1);
    });
}

/// glib may prepare a source and never check it: the window bit stays set while the loop then runs
/// its own blocking `aio_poll` (a nested wait). The stale bit costs at most an eventfd write; no
/// wakeup is lost and the BH runs once.
#[test]
fn loom_stale_window_and_a_blocking_poll() {
    loom::model(|| {
        let ctx = Ctx::new();
        let node = BhNode::new(9, 0);
        // Prepare without check.
        let pending = ctx.notify.open_window();
        assert!(!pending, "nothing notified yet");
        let remote = thread::spawn({
            let (ctx, node) = (Arc::clone(&ctx), Arc::clone(&node));
            move || ctx.schedule(&node, SCHEDULED)
        });
        let mut ran = Vec::new();
        while ran.is_empty() {
            ran = ctx.poll_blocking();
        }
        remote.join().unwrap();
        assert_eq!(ran, [9]);
        // Relaxed: the join above orders every write before this read.
        assert!(ctx.writes.load(Ordering::Relaxed) <= 1);
        // The next check closes the window; a notification after it writes nothing.
        ctx.notify.close_window();
        ctx.notify();
        // Relaxed: single-threaded from here.
        assert!(ctx.writes.load(Ordering::Relaxed) <= 1);
        assert!(ctx.notify.is_notified());
        ctx.drain();
        assert_eq!(Arc::strong_count(&node), 1);
    });
}

/// A BH scheduled from another thread always wakes a loop that is about to sleep, and runs once.
#[test]
fn loom_remote_bh_wakes_sleeping_loop() {
    loom::model(|| {
        let ctx = Ctx::new();
        let node = BhNode::new(7, 0);
        let remote = thread::spawn({
            let (ctx, node) = (Arc::clone(&ctx), Arc::clone(&node));
            move || ctx.schedule(&node, SCHEDULED)
        });
        let mut ran = Vec::new();
        while ran.is_empty() {
            ran = ctx.poll_blocking();
        }
        remote.join().unwrap();
        assert_eq!(ran, [7]);
        // Relaxed: the join above orders every write before this read.
        assert!(ctx.writes.load(Ordering::Relaxed) <= 1);
    });
}

/// Two threads schedule the same BH after publishing work; the loop blocks until it has seen both
/// pieces of work. Coalesced schedules run the BH once; none is lost.
#[test]
fn loom_two_schedulers_one_bh_no_lost_work() {
    loom::model(|| {
        let ctx = Ctx::new();
        let work = Arc::new(AtomicU32::new(0));
        let node = BhNode::new(1, 0);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (ctx, node, work) = (Arc::clone(&ctx), Arc::clone(&node), Arc::clone(&work));
                thread::spawn(move || {
                    work.fetch_add(1, Ordering::Release);
                    ctx.schedule(&node, SCHEDULED);
                })
            })
            .collect();
        let mut runs = 0;
        let mut seen = 0;
        while seen < 2 {
            for _ in ctx.poll_blocking() {
                runs += 1;
                seen = work.load(Ordering::Acquire);
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        assert!((1..=2).contains(&runs));
        // Every node taken off the list gave back the list's reference.
        ctx.drain();
        assert_eq!(Arc::strong_count(&node), 1);
    });
}

/// Two plain notifications (no BH) against a sleeping loop: each is seen, and together they cost at most
/// one eventfd write per time the loop slept.
#[test]
fn loom_notify_me_dedups_writes() {
    loom::model(|| {
        let ctx = Ctx::new();
        let flags = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..2)
            .map(|i| {
                let (ctx, flags) = (Arc::clone(&ctx), Arc::clone(&flags));
                thread::spawn(move || {
                    flags.fetch_or(1 << i, Ordering::Release);
                    ctx.notify();
                })
            })
            .collect();
        let mut sleeps = 0;
        while flags.load(Ordering::Acquire) != 0b11 {
            let blocked = !ctx.notify.prepare_wait();
            if blocked {
                sleeps += 1;
                ctx.eventfd.wait_and_clear();
            }
            ctx.notify.finish_wait();
            ctx.notify.accept();
        }
        for t in threads {
            t.join().unwrap();
        }
        // Relaxed: the joins above order every write before this read.
        assert!(ctx.writes.load(Ordering::Relaxed) <= sleeps.max(1) + 1);
    });
}

/// A remote schedule racing with deletion: the deleted BH never runs after the delete is dequeued and
/// the node is freed exactly once.
#[test]
fn loom_schedule_races_delete() {
    loom::model(|| {
        let ctx = Ctx::new();
        let node = BhNode::new(3, 0);
        let remote = thread::spawn({
            let (ctx, node) = (Arc::clone(&ctx), Arc::clone(&node));
            move || ctx.schedule(&node, SCHEDULED)
        });
        // The owner deletes it (Bh::drop) on the home thread.
        ctx.schedule(&node, DELETED);
        let mut deleted_seen = false;
        while !deleted_seen {
            let mut slice = ctx.bhs.take_all();
            while let Some((_, flags)) = dequeue(&mut slice) {
                assert!(
                    flags & DELETED != 0,
                    "a deleted BH must not be dequeued as runnable"
                );
                deleted_seen = true;
            }
            thread::yield_now();
        }
        remote.join().unwrap();
        ctx.drain();
        assert_eq!(Arc::strong_count(&node), 1);
        assert!(node.flags() & DELETED != 0);
    });
}

impl Ctx {
    /// Takes whatever is left on the list without blocking.
    fn drain(&self) -> usize {
        let mut slice = self.bhs.take_all();
        let mut n = 0;
        while dequeue(&mut slice).is_some() {
            n += 1;
        }
        n
    }
}

/// The task wake path: a remote wake (remote queue push + notify) and a home-thread wake (local push, no
/// notification) against a loop that is about to sleep. Both tasks run exactly once; a lost remote wake
/// deadlocks the model.
#[test]
fn loom_task_wakes_local_and_remote() {
    use crate::task::queue::RunQueues;

    loom::model(|| {
        let ctx = Ctx::new();
        let queues = Arc::new(RunQueues::<u32>::new(0));
        let remote = thread::spawn({
            let (ctx, queues) = (Arc::clone(&ctx), Arc::clone(&queues));
            move || {
                if queues.push(2, false).unwrap_or(false) {
                    ctx.notify();
                }
            }
        });
        // A task woken on the home thread during dispatch.
        queues.push(1, true).unwrap();
        let mut ran = Vec::new();
        while ran.len() < 2 {
            let use_notify_me = !queues.has_ready();
            let mut block = use_notify_me;
            if use_notify_me && ctx.notify.prepare_wait() {
                block = false;
            }
            if block {
                ctx.eventfd.wait_and_clear();
            } else {
                ctx.eventfd.clear();
            }
            if use_notify_me {
                ctx.notify.finish_wait();
            }
            ctx.notify.accept();
            let ready = queues.begin_step();
            for _ in 0..ready {
                ran.push(queues.pop().unwrap());
            }
        }
        remote.join().unwrap();
        ran.sort_unstable();
        assert_eq!(ran, [1, 2]);
        assert!(queues.pop_any().is_none());
    });
}

/// `wake_by_msg_ring`: a notifier posts into the loop's ring only while the loop waits on it. Here
/// the loop has stopped waiting on the ring (its monitor fell back or replaced the ring): it retires
/// the target, then blocks on the eventfd. A notifier that must kick the loop has seen the wait
/// announced after the retirement, so it writes the eventfd; a post to the ring would be a lost
/// wakeup, which deadlocks the model.
#[test]
fn loom_msg_ring_retired_before_a_wait_is_seen_by_its_kicker() {
    loom::model(|| {
        let ctx = Ctx::new();
        let ring = Arc::new(EventFd::new());
        let current = Arc::new(Current::new());
        let node = BhNode::new(7, 0);
        let remote = thread::spawn({
            let (ctx, node) = (Arc::clone(&ctx), Arc::clone(&node));
            let (ring, current) = (Arc::clone(&ring), Arc::clone(&current));
            move || {
                if ctx.bhs.enqueue(&node, SCHEDULED) {
                    match ctx.notify.notify_kick() {
                        Kick::None => {}
                        Kick::Loop if current.is_current() => ring.write(),
                        Kick::Loop | Kick::OutsidePoller => ctx.eventfd.write(),
                    }
                }
            }
        });
        current.retire();
        let mut ran = Vec::new();
        while ran.is_empty() {
            ran = ctx.poll_blocking();
        }
        remote.join().unwrap();
        assert_eq!(ran, [7]);
    });
}
