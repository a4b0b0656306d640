//! [`Executor`]: a context's tasks. It is the loop's [`TaskStep`]: the loop runs it once per iteration
//! and knows nothing else of it.
//!
//! It owns the run queues (a wake is a queue push, see [`queue`](super::queue)), the registry of
//! waiting tasks that teardown must reach, and the context's [`Wakeup`] to wake the loop when a task
//! becomes ready. Every context is built with one (see `context_api.rs`).

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;

use concurrent_queue::ConcurrentQueue;
use slab::Slab;

use super::queue::RunQueues;
use super::spawn::{run_ready_tasks, Runnable};
use crate::context::notify::Wakeup;
use crate::context::{SharedState, TaskStep, TaskStepSeed};
use crate::thread_id::{thread_token, HomeCell};

pub(crate) struct Executor {
    /// The identity of the context it belongs to.
    context_id: u64,
    /// The context's home thread.
    home: u64,
    queues: RunQueues<Runnable>,
    /// Wakers of live tasks that wait, so that teardown can reach them.
    registry: HomeCell<Slab<Waker>>,
    /// Registry slots freed on another thread (a task moved to another context), applied on the
    /// home thread before the registry next grows.
    stale: ConcurrentQueue<usize>,
    wakeup: Arc<Wakeup>,
    /// Torn down: new tasks are dropped (cancelled) at once.
    closed: AtomicBool,
}

impl Executor {
    /// The executor for a new context, as the loop's hook.
    pub(crate) fn hook(seed: TaskStepSeed) -> Arc<dyn TaskStep> {
        Arc::new(Executor {
            context_id: seed.context_id,
            home: seed.home_thread,
            queues: RunQueues::new(seed.home_thread),
            registry: HomeCell::new(seed.home_thread, Slab::new()),
            stale: ConcurrentQueue::unbounded(),
            wakeup: seed.wakeup,
            closed: AtomicBool::new(false),
        })
    }

    /// The executor of any context, shared.
    pub(crate) fn shared_of(shared: &SharedState) -> Arc<Executor> {
        Arc::clone(shared.tasks())
            .into_any()
            .downcast()
            .unwrap_or_else(|_| unreachable!("every context's task step is an Executor"))
    }

    /// The identity of the context this executor belongs to.
    pub(crate) fn context_id(&self) -> u64 {
        self.context_id
    }

    /// Whether the caller runs on this executor's home thread.
    pub(crate) fn is_home_thread(&self) -> bool {
        thread_token() == self.home
    }

    /// The schedule function of every task of this context: queues `runnable`, or gives it back if the
    /// context is gone. The caller drops a refused runnable (which cancels its task), after it is done
    /// with this executor: the task may hold the last reference to it.
    #[must_use = "a refused runnable must be dropped by the caller"]
    pub(crate) fn schedule(&self, runnable: Runnable) -> Option<Runnable> {
        // Acquire pairs with the Release store in `close`.
        if self.closed.load(Ordering::Acquire) {
            // The context is gone; its tasks were cancelled at teardown. This can only be a `Send` task
            // spawned through a Remote afterwards, or one woken late.
            return Some(runnable);
        }
        match self.queues.push(runnable, self.is_home_thread()) {
            Ok(true) => self.wakeup.notify(),
            Ok(false) => {
                // A local push needs no wake-up, unless the loop is spinning and must stop to run it.
                if self.wakeup.is_polling() {
                    self.wakeup.notify();
                }
            }
            Err(runnable) => return Some(runnable),
        }
        None
    }

    /// Registers a waiting task's waker for teardown. Home thread only.
    pub(crate) fn register(&self, waker: Waker) -> usize {
        let mut registry = self.registry.borrow_mut();
        while let Ok(slot) = self.stale.pop() {
            registry.try_remove(slot);
        }
        registry.insert(waker)
    }

    /// Removes a registration, from any thread: at once on the home thread, else the next time the
    /// home thread registers a task (or tears down).
    pub(crate) fn unregister(&self, slot: usize) {
        if self.is_home_thread() {
            let waker = self.registry.borrow_mut().try_remove(slot);
            // Dropped after the borrow: a waker's drop may run arbitrary code.
            drop(waker);
        } else {
            // An unbounded queue only refuses a push once closed, and it is never closed.
            let _ = self.stale.push(slot);
        }
    }
}

impl TaskStep for Executor {
    fn run_ready(&self) -> usize {
        run_ready_tasks(&self.queues)
    }

    fn has_ready(&self) -> bool {
        self.queues.has_ready()
    }

    /// Wakes every live task and drops each one's future here, on the home thread.
    fn cancel_all(&self) {
        let mut idle_rounds = 0;
        loop {
            let wakers: Vec<Waker> = {
                let mut registry = self.registry.borrow_mut();
                while let Ok(slot) = self.stale.pop() {
                    registry.try_remove(slot);
                }
                registry.iter().map(|(_, w)| w.clone()).collect()
            };
            for waker in wakers {
                waker.wake();
            }
            let mut dropped = 0;
            while let Some(runnable) = self.queues.pop_any() {
                // Dropping a Runnable cancels its task and drops its future, here.
                drop(runnable);
                dropped += 1;
            }
            if self.registry.borrow_mut().is_empty() && !self.queues.has_ready() {
                return;
            }
            if dropped == 0 {
                // What is left is a task another thread is queueing right now (give it a moment), or a
                // task that moved to another context (its registration here is stale). Bounded.
                idle_rounds += 1;
                if idle_rounds > 1_000 {
                    let stale = std::mem::take(&mut *self.registry.borrow_mut());
                    drop(stale);
                    return;
                }
                std::thread::yield_now();
            }
        }
    }

    fn close(&self) {
        // Release pairs with the Acquire load in `schedule`.
        self.closed.store(true, Ordering::Release);
        self.queues.close();
        while let Some(runnable) = self.queues.pop_any() {
            drop(runnable);
        }
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}
