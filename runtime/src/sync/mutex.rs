//! An async mutex with fair handoff (QEMU's CoMutex).

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::{Mutex as StdMutex, MutexGuard as StdGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use slab::Slab;

struct Waiter {
    waker: Option<Waker>,
    /// The lock was handed to this waiter by the previous owner.
    granted: bool,
}

#[derive(Default)]
struct State {
    locked: bool,
    waiters: Slab<Waiter>,
    /// Waiter keys in arrival order.
    queue: VecDeque<usize>,
}

/// An async mutex whose unlock hands the lock directly to the longest waiter (fair, FIFO), like QEMU's
/// CoMutex: under contention no task can barge in and starve others. Tasks on different contexts and
/// IOThreads may share it (it is `Send + Sync` for `T: Send`); the guard may be held across `.await`.
///
/// `futures::lock::Mutex` is not used because it does not hand the lock over: a task that unlocks and
/// relocks at once can take it again before a woken waiter runs.
///
/// ```
/// use std::sync::Arc;
/// let ctx = aioctx::AioContext::new()?;
/// let counter = Arc::new(aioctx::sync::Mutex::new(0u32));
/// ctx.block_on(async {
///     let tasks: Vec<_> = (0..10)
///         .map(|_| {
///             let counter = counter.clone();
///             aioctx::spawn(async move {
///                 let mut n = counter.lock().await;
///                 aioctx::yield_now().await; // holding the lock across an await is fine
///                 *n += 1;
///             })
///         })
///         .collect();
///     for t in tasks {
///         t.await.unwrap();
///     }
/// });
/// assert_eq!(*counter.try_lock().unwrap(), 10);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Mutex<T: ?Sized> {
    state: StdMutex<State>,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through a MutexGuard, and the state machine guarantees at most one
// guard exists at a time; moving or sharing the Mutex across threads therefore only moves T (T: Send).
unsafe impl<T: ?Sized + Send> Send for Mutex<T> {}
// SAFETY: as above: shared access hands out exclusive access to T to one thread at a time, which needs
// only T: Send (like std::sync::Mutex).
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}

impl<T> Mutex<T> {
    /// A new, unlocked mutex.
    ///
    /// ```
    /// let m = aioctx::sync::Mutex::new(vec![1, 2]);
    /// assert_eq!(*m.try_lock().unwrap(), [1, 2]);
    /// ```
    pub fn new(value: T) -> Self {
        Self {
            state: StdMutex::new(State::default()),
            value: UnsafeCell::new(value),
        }
    }

    /// The value, when nobody can hold the lock any more.
    ///
    /// ```
    /// let m = aioctx::sync::Mutex::new(String::from("a"));
    /// m.try_lock().unwrap().push('b');
    /// assert_eq!(m.into_inner(), "ab");
    /// ```
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    fn state(&self) -> StdGuard<'_, State> {
        // The state is updated in small critical sections that cannot panic halfway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the lock. Waiters get it in the order they started waiting.
    ///
    /// ```
    /// let ctx = aioctx::AioContext::new()?;
    /// let m = aioctx::sync::Mutex::new(0);
    /// ctx.block_on(async {
    ///     *m.lock().await += 1;
    ///     *m.lock().await += 1;
    /// });
    /// assert_eq!(m.into_inner(), 2);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn lock(&self) -> Lock<'_, T> {
        Lock {
            mutex: self,
            waiter: None,
        }
    }

    /// Takes the lock if it is free and nobody is waiting for it.
    ///
    /// ```
    /// let m = aioctx::sync::Mutex::new(0);
    /// let guard = m.try_lock().unwrap();
    /// assert!(m.try_lock().is_none()); // held
    /// drop(guard);
    /// assert!(m.try_lock().is_some());
    /// ```
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let mut state = self.state();
        if state.locked {
            return None;
        }
        state.locked = true;
        Some(MutexGuard { mutex: self })
    }

    /// Direct access through a unique reference (no locking needed).
    ///
    /// ```
    /// let mut m = aioctx::sync::Mutex::new(1);
    /// *m.get_mut() += 1;
    /// assert_eq!(*m.try_lock().unwrap(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    /// Releases the lock, handing it to the first waiter if there is one.
    fn unlock(&self) {
        let mut state = self.state();
        let next = state.queue.pop_front();
        let waker = match next {
            Some(key) => {
                let waiter = &mut state.waiters[key];
                waiter.granted = true;
                waiter.waker.take()
            }
            None => {
                state.locked = false;
                None
            }
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.try_lock() {
            Some(guard) => f.debug_struct("Mutex").field("value", &&*guard).finish(),
            None => f.write_str("Mutex { <locked> }"),
        }
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

/// The future of [`Mutex::lock`]. Dropping it while waiting gives up its place (or, if the lock was
/// already handed to it, passes the lock on).
///
/// ```
/// use futures::FutureExt;
/// let m = aioctx::sync::Mutex::new(());
/// let guard = m.try_lock().unwrap();
/// // `now_or_never` polls the lock future once and drops it: it queued, then gave up its place.
/// assert!(m.lock().now_or_never().is_none());
/// drop(guard);
/// assert!(m.try_lock().is_some()); // nobody is left waiting for it
/// ```
#[must_use = "futures do nothing unless awaited"]
pub struct Lock<'a, T: ?Sized> {
    mutex: &'a Mutex<T>,
    waiter: Option<usize>,
}

impl<T: ?Sized> fmt::Debug for Lock<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("waiting", &self.waiter.is_some())
            .finish()
    }
}

impl<'a, T: ?Sized> Future for Lock<'a, T> {
    type Output = MutexGuard<'a, T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<MutexGuard<'a, T>> {
        let mutex = self.mutex;
        let mut state = mutex.state();
        match self.waiter {
            None => {
                if !state.locked {
                    state.locked = true;
                    return Poll::Ready(MutexGuard { mutex });
                }
                let key = state.waiters.insert(Waiter {
                    waker: Some(cx.waker().clone()),
                    granted: false,
                });
                state.queue.push_back(key);
                drop(state);
                self.waiter = Some(key);
                Poll::Pending
            }
            Some(key) => {
                let waiter = &mut state.waiters[key];
                if waiter.granted {
                    state.waiters.remove(key);
                    drop(state);
                    self.waiter = None;
                    return Poll::Ready(MutexGuard { mutex });
                }
                match &mut waiter.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl<T: ?Sized> Drop for Lock<'_, T> {
    fn drop(&mut self) {
        let Some(key) = self.waiter.take() else {
            return;
        };
        let mut state = self.mutex.state();
        let waiter = state.waiters.remove(key);
        if waiter.granted {
            drop(state);
            self.mutex.unlock();
        } else {
            state.queue.retain(|&k| k != key);
        }
    }
}

/// Exclusive access to a [`Mutex`]'s value; unlocking (handing over) happens on drop.
///
/// ```
/// let m = aioctx::sync::Mutex::new(Vec::new());
/// {
///     let mut guard = m.try_lock().unwrap();
///     guard.push(1); // DerefMut to the value
///     assert_eq!(guard.len(), 1);
/// } // unlocked here
/// assert!(m.try_lock().is_some());
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct MutexGuard<'a, T: ?Sized> {
    mutex: &'a Mutex<T>,
}

// SAFETY: a guard gives `&mut T` to whoever holds it, so sending it to another thread moves access to T
// (T: Send); sharing `&MutexGuard` gives `&T` to several threads (T: Sync).
unsafe impl<T: ?Sized + Send + Sync> Send for MutexGuard<'_, T> {}
// SAFETY: `&MutexGuard` only hands out `&T`.
unsafe impl<T: ?Sized + Sync> Sync for MutexGuard<'_, T> {}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard is the only one (the state machine hands the lock to one owner at a time),
        // so no `&mut T` exists elsewhere while it lives.
        unsafe { &*self.mutex.value.get() }
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference derived from the guard.
        unsafe { &mut *self.mutex.value.get() }
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}
