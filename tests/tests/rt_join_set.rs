//! `aioctx::task::JoinSet`: results in completion order, abort, and tasks aborted when the set is
//! dropped, for `!Send` and `Send` tasks, on every backend.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use aioctx::task::JoinSet;
use aioctx::time::sleep;
use aioctx::AioContext;

/// Sets a flag when dropped: tells whether a task's future was dropped.
struct DropFlag(Rc<Cell<bool>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

fn paused(backend: aioctx::Backend) -> AioContext {
    AioContext::builder()
        .backend(backend)
        .start_paused(true)
        .build()
        .unwrap()
}

#[aioctx::test(backend = "all", start_paused = true)]
async fn results_come_in_completion_order() {
    let mut set = JoinSet::new();
    for ms in [50u64, 10, 40, 20, 30] {
        set.spawn_local(async move {
            sleep(Duration::from_millis(ms)).await;
            ms
        });
    }
    assert_eq!(set.len(), 5);
    let mut order = Vec::new();
    while let Some(done) = set.join_next().await {
        order.push(done.unwrap());
    }
    assert_eq!(order, [10, 20, 30, 40, 50]);
    assert!(set.is_empty());
    assert!(set.join_next().await.is_none(), "an empty set ends at once");
}

#[aioctx::test(backend = "all")]
async fn send_tasks_and_panics_are_joined_like_local_ones() {
    let mut set = JoinSet::new();
    set.spawn(async { 1u32 });
    set.spawn(async { panic!("task two") });
    set.spawn(async { 3u32 });
    let mut values = Vec::new();
    let mut panics = 0;
    while let Some(done) = set.join_next().await {
        match done {
            Ok(v) => values.push(v),
            Err(e) => {
                assert!(e.is_panic(), "{e}");
                panics += 1;
            }
        }
    }
    values.sort();
    assert_eq!((values, panics), (vec![1, 3], 1));
}

tests::per_backend! {
    fn abort_all_cancels_every_unfinished_task_and_keeps_finished_results(backend) {
        let ctx = paused(backend);
        ctx.block_on(async {
            let dropped = Rc::new(Cell::new(false));
            let mut set = JoinSet::new();
            set.spawn_local(async { "done" });
            aioctx::yield_now().await; // the first task finishes
            set.spawn_local({
                let flag = DropFlag(dropped.clone());
                async move {
                    let _flag = flag;
                    std::future::pending::<&str>().await
                }
            });
            set.abort_all();
            let mut outcomes = Vec::new();
            while let Some(done) = set.join_next().await {
                outcomes.push(done.map_err(|e| e.is_cancelled()));
            }
            outcomes.sort();
            assert_eq!(outcomes, [Ok("done"), Err(true)]);
            assert!(dropped.get(), "the aborted task's future was dropped");
        });
    }

    fn dropping_the_set_aborts_its_tasks(backend) {
        let ctx = paused(backend);
        ctx.block_on(async {
            let dropped = Rc::new(Cell::new(false));
            let ran_on = Rc::new(Cell::new(false));
            let mut set = JoinSet::new();
            set.spawn_local({
                let (flag, ran_on) = (DropFlag(dropped.clone()), ran_on.clone());
                async move {
                    let _flag = flag;
                    sleep(Duration::from_secs(3600)).await;
                    ran_on.set(true);
                }
            });
            aioctx::yield_now().await; // the task starts and waits
            drop(set);
            // The abort reaches the task at its next run.
            for _ in 0..10 {
                aioctx::yield_now().await;
            }
            assert!(dropped.get(), "the task's future was dropped with the set");
            sleep(Duration::from_secs(7200)).await;
            assert!(!ran_on.get(), "and it never ran past its sleep");
        });
    }

    fn shutdown_waits_until_every_task_has_ended(backend) {
        let ctx = paused(backend);
        ctx.block_on(async {
            let flags: Vec<Rc<Cell<bool>>> = (0..4).map(|_| Rc::new(Cell::new(false))).collect();
            let mut set = JoinSet::new();
            for flag in &flags {
                let flag = DropFlag(flag.clone());
                set.spawn_local(async move {
                    let _flag = flag;
                    std::future::pending::<()>().await
                });
            }
            set.shutdown().await;
            assert!(set.is_empty());
            assert!(flags.iter().all(|f| f.get()), "every future was dropped");
        });
    }
}
