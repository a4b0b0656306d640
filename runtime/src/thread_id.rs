//! Thread identity: a cheap token for the calling thread, and a cell only its home thread may touch.
//!
//! A context, a task's run queue and a ring operation's cell all belong to one thread. Comparing
//! `thread::current().id()` costs a reference count; [`thread_token`] is one thread-local load.

use std::cell::{Cell, RefCell, RefMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// A process-unique number for the calling thread (cheaper than `thread::current().id()`).
pub(crate) fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: Cell<u64> = const { Cell::new(0) };
    }
    TOKEN.with(|t| {
        let mut v = t.get();
        if v == 0 {
            // Relaxed: the counter only hands out distinct numbers; nothing is published through it.
            v = NEXT.fetch_add(1, Ordering::Relaxed);
            t.set(v);
        }
        v
    })
}

/// A `RefCell` that only its home thread may touch.
pub(crate) struct HomeCell<T> {
    #[cfg_attr(loom, allow(dead_code))]
    home: u64,
    cell: RefCell<T>,
}

// SAFETY: the RefCell is only reachable through `borrow_mut`, which checks that the caller is the home
// thread, so no two threads ever access it; `T: Send` makes it sound for the contents to be dropped on
// whichever thread drops the last reference to the HomeCell.
unsafe impl<T: Send> Sync for HomeCell<T> {}

impl<T> HomeCell<T> {
    pub(crate) fn new(home: u64, value: T) -> Self {
        Self {
            home,
            cell: RefCell::new(value),
        }
    }

    /// Borrows the contents. Only on the home thread; anywhere else this is an internal bug and panics.
    pub(crate) fn borrow_mut(&self) -> RefMut<'_, T> {
        #[cfg(not(loom))]
        assert_eq!(
            thread_token(),
            self.home,
            "aioctx: home-thread state used from another thread"
        );
        self.cell.borrow_mut()
    }
}
