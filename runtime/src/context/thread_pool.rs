//! The slot of a context's blocking thread pool: its bounds, and the pool once the first job created
//! it. The pool itself is `pool/`; `task/blocking.rs` runs jobs on it.

use std::cell::{Cell, RefCell};
use std::io;
use std::sync::Arc;

use super::HomeState;
use crate::pool::{self, Pool};

pub(crate) struct ThreadPoolSlot {
    /// `(min, max)` workers.
    size: Cell<(usize, usize)>,
    /// Created at the first job.
    pool: RefCell<Option<Arc<Pool>>>,
}

impl ThreadPoolSlot {
    /// A slot for a pool of `size` workers; fails with `InvalidInput` on bad bounds.
    pub(crate) fn new(size: (usize, usize)) -> io::Result<Self> {
        pool::validate_size(size.0, size.1)?;
        Ok(Self {
            size: Cell::new(size),
            pool: RefCell::new(None),
        })
    }

    /// Teardown: stops the workers (queued jobs are dropped, running ones finish).
    pub(crate) fn shut_down(&self) {
        let pool = self.pool.borrow_mut().take();
        if let Some(pool) = pool {
            pool.shutdown();
        }
    }
}

impl HomeState {
    /// Sets the pool's bounds (QEMU's `thread-pool-min`/`-max`).
    pub(crate) fn set_thread_pool_size(&self, min: usize, max: usize) -> io::Result<()> {
        pool::validate_size(min, max)?;
        self.pool.size.set((min, max));
        if let Some(pool) = self.pool.pool.borrow().as_ref() {
            pool.set_size(min, max);
        }
        Ok(())
    }

    /// The context's pool, created now if this is the first job.
    pub(crate) fn thread_pool(&self) -> Arc<Pool> {
        let mut pool = self.pool.pool.borrow_mut();
        let (min, max) = self.pool.size.get();
        Arc::clone(pool.get_or_insert_with(|| Pool::new(min, max)))
    }
}
