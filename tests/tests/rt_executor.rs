//! The executor on AioContext: spawning, JoinHandle, waking from the home thread and from other threads,
//! the slice rule, nested block_on, panics, teardown. Every case runs on each backend.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use aioctx::{yield_now, AioContext, JoinError};
use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use tests::{context, per_backend};

per_backend! {
    fn spawn_local_and_join(backend) {
        let ctx = context(backend);
        let shared = Rc::new(Cell::new(0));
        let h = ctx.spawn_local({
            let s = shared.clone();
            async move {
                s.set(s.get() + 1);
                "done"
            }
        });
        assert_eq!(shared.get(), 0, "spawning does not run the task inline");
        assert_eq!(ctx.block_on(h).unwrap(), "done");
        assert_eq!(shared.get(), 1);
    }

    fn free_spawn_functions_use_the_current_context(backend) {
        let ctx = context(backend);
        let out = ctx.block_on(async {
            let a = aioctx::spawn_local(async { 1 });
            let b = aioctx::spawn(async { 2 });
            a.await.unwrap() + b.await.unwrap()
        });
        assert_eq!(out, 3);
    }

    fn spawn_from_a_bh_callback(backend) {
        let ctx = context(backend);
        let got = Rc::new(Cell::new(false));
        let bh = ctx.bh({
            let got = got.clone();
            move || {
                let got = got.clone();
                let _detached = aioctx::spawn_local(async move { got.set(true) });
            }
        });
        bh.schedule();
        while !got.get() {
            ctx.poll(true);
        }
    }

    fn task_woken_many_times_is_polled_once(backend) {
        let ctx = context(backend);
        let polls = Rc::new(Cell::new(0));
        let (wake_tx, wake_rx) = std::sync::mpsc::channel::<std::task::Waker>();
        let h = ctx.spawn_local({
            let polls = polls.clone();
            std::future::poll_fn(move |cx| {
                polls.set(polls.get() + 1);
                if polls.get() == 1 {
                    wake_tx.send(cx.waker().clone()).unwrap();
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
        });
        ctx.poll(false);
        assert_eq!(polls.get(), 1);
        let waker = wake_rx.recv().unwrap();
        for _ in 0..10 {
            waker.wake_by_ref();
        }
        ctx.block_on(h).unwrap();
        assert_eq!(polls.get(), 2, "ten wakes before it ran: polled once");
    }

    fn yield_now_runs_others_and_the_slice_rule_holds(backend) {
        let ctx = context(backend);
        let log = Rc::new(RefCell::new(Vec::new()));
        for name in ["a", "b"] {
            let log = log.clone();
            let _t = ctx.spawn_local(async move {
                for i in 0..3 {
                    log.borrow_mut().push(format!("{name}{i}"));
                    yield_now().await;
                }
            });
        }
        // One iteration runs each ready task once: a yielding task waits for the next iteration.
        ctx.poll(false);
        assert_eq!(*log.borrow(), ["a0", "b0"]);
        ctx.poll(false);
        assert_eq!(*log.borrow(), ["a0", "b0", "a1", "b1"]);
        while ctx.poll(false) {}
        assert_eq!(log.borrow().len(), 6);
    }

    fn self_waking_task_does_not_starve_bhs_or_fds(backend) {
        let ctx = context(backend);
        let stop = Rc::new(Cell::new(false));
        let _spinner = ctx.spawn_local({
            let stop = stop.clone();
            async move {
                while !stop.get() {
                    yield_now().await;
                }
            }
        });
        let bh = ctx.bh({
            let stop = stop.clone();
            move || stop.set(true)
        });
        ctx.poll(false);
        ctx.poll(false);
        bh.schedule();
        // The spinner is ready at every iteration, yet the next iteration runs the BH.
        ctx.poll(true);
        assert!(stop.get(), "the BH ran although a task wakes itself forever");
    }

    fn panicking_task_is_contained(backend) {
        let ctx = context(backend);
        let bad = ctx.spawn_local(async { panic!("task exploded") });
        let good = ctx.spawn_local(async { 5 });
        let err = ctx.block_on(bad).unwrap_err();
        assert!(err.is_panic());
        assert!(err.to_string().contains("task exploded"), "{err}");
        let payload = err.into_panic();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"task exploded"));
        assert_eq!(ctx.block_on(good).unwrap(), 5);
        assert!(!ctx.poll(false), "the loop is fine");
    }

    fn abort_cancels_and_drops_the_future_on_the_home_thread(backend) {
        struct OnDrop(Rc<Cell<bool>>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        let ctx = context(backend);
        let dropped = Rc::new(Cell::new(false));
        let guard = OnDrop(dropped.clone());
        let h = ctx.spawn_local(async move {
            let _g = guard;
            std::future::pending::<()>().await
        });
        ctx.poll(false);
        assert!(!h.is_finished());
        h.abort();
        let err = ctx.block_on(h).unwrap_err();
        assert!(err.is_cancelled());
        assert!(dropped.get());

        // Aborting a finished task keeps its result.
        let done = ctx.spawn_local(async { 9 });
        while !done.is_finished() {
            ctx.poll(false);
        }
        done.abort();
        assert_eq!(ctx.block_on(done).unwrap(), 9);
    }

    fn dropped_join_handle_detaches(backend) {
        let ctx = context(backend);
        let ran = Rc::new(Cell::new(false));
        drop(ctx.spawn_local({
            let ran = ran.clone();
            async move {
                yield_now().await;
                ran.set(true)
            }
        }));
        while !ran.get() {
            ctx.poll(true);
        }
    }

    fn remote_spawn_runs_on_the_home_thread(backend) {
        let ctx = context(backend);
        let remote = ctx.remote();
        let home = std::thread::current().id();
        let handle = std::thread::spawn(move || remote.spawn(async { std::thread::current().id() }))
            .join()
            .unwrap();
        assert_eq!(ctx.block_on(handle).unwrap(), home);
    }

    /// test-aio's worker-thread case: a worker thread wakes a task (here through a channel); the task
    /// continues on the home thread.
    fn worker_thread_wakes_a_task(backend) {
        let ctx = context(backend);
        let (tx, rx) = oneshot::channel::<u32>();
        let home = std::thread::current().id();
        let h = ctx.spawn_local(async move { (rx.await.unwrap(), std::thread::current().id()) });
        ctx.poll(false);
        let worker = std::thread::spawn(move || tx.send(17).unwrap());
        let (value, ran_on) = ctx.block_on(h).unwrap();
        worker.join().unwrap();
        assert_eq!(value, 17);
        assert_eq!(ran_on, home);
    }

    /// test-aio's queue-chaining: 25,000 tasks each waking the next; wakes are queued, never nested, so
    /// the stack does not grow (a recursive implementation overflows the 2 MiB test thread stack).
    fn chained_wakes_do_not_grow_the_stack(backend) {
        let ctx = context(backend);
        const N: usize = 25_000;
        let (first_tx, mut prev_rx) = oneshot::channel::<usize>();
        let mut handles = Vec::with_capacity(N);
        for _ in 0..N {
            let (tx, rx) = oneshot::channel::<usize>();
            let input = std::mem::replace(&mut prev_rx, rx);
            handles.push(ctx.spawn_local(async move {
                let n = input.await.unwrap();
                let _ = tx.send(n + 1);
            }));
        }
        first_tx.send(0).unwrap();
        let last = ctx.block_on(prev_rx).unwrap();
        assert_eq!(last, N);
        drop(handles);
    }

    /// AIO_WAIT_WHILE: a task runs block_on nested; other tasks keep running meanwhile and the calling
    /// task is not polled re-entrantly.
    fn nested_block_on_from_a_task(backend) {
        let ctx = Rc::new(context(backend));
        let in_outer = Rc::new(Cell::new(false));
        let (tx, rx) = oneshot::channel::<u32>();
        let _helper = ctx.spawn_local(async move {
            yield_now().await;
            tx.send(3).unwrap();
        });
        let outer = ctx.spawn_local({
            let (ctx, in_outer) = (Rc::downgrade(&ctx), in_outer.clone());
            async move {
                assert!(!in_outer.get(), "polled re-entrantly");
                in_outer.set(true);
                let ctx = ctx.upgrade().unwrap();
                let v = ctx.block_on(rx).unwrap();
                in_outer.set(false);
                v * 2
            }
        });
        assert_eq!(ctx.block_on(outer).unwrap(), 6);
    }

    fn dropping_the_context_cancels_tasks_on_the_home_thread(backend) {
        struct OnDrop(Rc<Cell<u32>>, std::thread::ThreadId);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                assert_eq!(std::thread::current().id(), self.1);
                self.0.set(self.0.get() + 1);
            }
        }
        let ctx = context(backend);
        let dropped = Rc::new(Cell::new(0));
        let home = std::thread::current().id();
        let mut handles = Vec::new();
        // One waiting on a channel nobody sends on, one never polled, one remote-spawned and waiting.
        let (_keep_tx, rx) = oneshot::channel::<()>();
        let g = OnDrop(dropped.clone(), home);
        handles.push(ctx.spawn_local(async move {
            let _g = g;
            let _ = rx.await;
        }));
        ctx.poll(false);
        let g = OnDrop(dropped.clone(), home);
        handles.push(ctx.spawn_local(async move {
            let _g = g;
        }));
        let remote_dropped = Arc::new(AtomicUsize::new(0));
        struct SendOnDrop(Arc<AtomicUsize>);
        impl Drop for SendOnDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let sg = SendOnDrop(remote_dropped.clone());
        let remote_handle = ctx.remote().spawn(async move {
            let _g = sg;
            std::future::pending::<()>().await
        });
        let waker_task_remote = ctx.remote();
        drop(ctx);
        assert_eq!(dropped.get(), 2);
        assert_eq!(remote_dropped.load(Ordering::SeqCst), 1);
        for h in handles {
            assert!(h.is_finished());
        }
        assert!(remote_handle.is_finished());
        // Spawning through a Remote of a dead context cancels at once.
        let late = waker_task_remote.spawn(async { 1 });
        assert!(futures::executor::block_on(late).unwrap_err().is_cancelled());
    }

    fn channels_between_tasks_and_threads(backend) {
        let ctx = context(backend);
        let (mut tx, mut rx) = mpsc::channel::<u64>(4);
        let producer = std::thread::spawn(move || {
            futures::executor::block_on(async move {
                for i in 0..1000 {
                    tx.send(i).await.unwrap();
                }
            })
        });
        let sum = ctx.block_on(async move {
            let mut sum = 0;
            while let Some(v) = rx.next().await {
                sum += v;
            }
            sum
        });
        producer.join().unwrap();
        assert_eq!(sum, 999 * 1000 / 2);
    }
}

per_backend! {
    /// Millions of remote wakes from several threads, none lost: each thread sends a counter through a
    /// channel-free path (waking a task by an AtomicWaker) and the task counts what it observes.
    /// Bounded.
    fn remote_wake_stress(backend) {
        use futures::task::AtomicWaker;
        const THREADS: usize = 3;
        const WAKES: usize = 200_000;
        let ctx = AioContext::builder()
            .backend(backend)
            .poll_max_ns(32_768)
            .build()
            .unwrap();
        let waker = Arc::new(AtomicWaker::new());
        let sent = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let task = ctx.spawn_local({
            let (waker, sent) = (waker.clone(), sent.clone());
            std::future::poll_fn(move |cx| {
                waker.register(cx.waker());
                if sent.load(Ordering::Acquire) == THREADS * WAKES {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
        });
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (waker, sent) = (waker.clone(), sent.clone());
                std::thread::spawn(move || {
                    for _ in 0..WAKES {
                        sent.fetch_add(1, Ordering::AcqRel);
                        waker.wake();
                    }
                })
            })
            .collect();
        let watchdog = {
            let done = done.clone();
            std::thread::spawn(move || {
                let start = std::time::Instant::now();
                while !done.load(Ordering::Acquire) {
                    if start.elapsed() > Duration::from_secs(60) {
                        eprintln!("remote_wake_stress ({backend:?}): the final wake was lost");
                        std::process::abort();
                    }
                    std::thread::park_timeout(Duration::from_millis(50));
                }
            })
        };
        ctx.block_on(task).unwrap();
        done.store(true, Ordering::Release);
        for t in threads {
            t.join().unwrap();
        }
        watchdog.join().unwrap();
        let s = ctx.stats();
        assert!(s.tasks_run <= (THREADS * WAKES) as u64 + 1, "{s:?}");
    }
}

#[test]
fn join_error_display_and_io_error() {
    let ctx = AioContext::new().unwrap();
    let h = ctx.spawn_local(async { 1 });
    h.abort();
    let err: JoinError = ctx.block_on(h).unwrap_err();
    assert_eq!(err.to_string(), "task was cancelled");
    let io: std::io::Error = err.into();
    assert!(io.to_string().contains("cancelled"));
}

#[test]
#[should_panic(expected = "outside an aioctx context")]
fn spawn_local_outside_a_context_panics_clearly() {
    drop(aioctx::spawn_local(async {}));
}

#[test]
fn join_error_is_send_sync_and_carries_its_payload_into_io_errors() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<JoinError>();
    #[derive(Debug, PartialEq)]
    struct Custom(u32);
    let ctx = AioContext::new().unwrap();
    let err = ctx
        .block_on(ctx.spawn_local(async { std::panic::panic_any(Custom(7)) }))
        .unwrap_err();
    assert_eq!(err.to_string(), "task panicked: <non-string panic payload>");
    let io: std::io::Error = err.into();
    // The JoinError itself travels inside the io::Error, payload and all.
    let inner = io.into_inner().unwrap().downcast::<JoinError>().unwrap();
    assert_eq!(
        inner.into_panic().downcast::<Custom>().unwrap(),
        Box::new(Custom(7))
    );
}
