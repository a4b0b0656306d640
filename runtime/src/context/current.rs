//! The thread's current context: the innermost context that is polling (or running `block_on`) on this
//! thread. `aioctx::spawn_local`, the time futures and task bookkeeping find their context here.

use std::cell::RefCell;
use std::rc::Rc;

use super::HomeState;

thread_local! {
    static CURRENT: RefCell<Vec<Rc<HomeState>>> = const { RefCell::new(Vec::new()) };
}

/// Makes a context current until dropped.
pub(crate) struct EnterGuard(());

pub(crate) fn enter(home: &Rc<HomeState>) -> EnterGuard {
    let _ = CURRENT.try_with(|c| c.borrow_mut().push(Rc::clone(home)));
    EnterGuard(())
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        // `try_with`: a context kept in a thread-local may be dropped after CURRENT itself.
        let popped = CURRENT.try_with(|c| c.borrow_mut().pop()).ok().flatten();
        drop(popped);
    }
}

/// Runs `f` with the current context, if there is one.
pub(crate) fn with_current<R>(f: impl FnOnce(&Rc<HomeState>) -> R) -> Option<R> {
    let home = CURRENT
        .try_with(|c| c.borrow().last().cloned())
        .ok()
        .flatten()?;
    Some(f(&home))
}

/// Runs `f` with the context whose identity is `id` if it is current on this thread (at any depth).
pub(crate) fn with_context<R>(id: u64, f: impl FnOnce(&Rc<HomeState>) -> R) -> Option<R> {
    let home = CURRENT
        .try_with(|c| c.borrow().iter().rev().find(|h| h.id() == id).cloned())
        .ok()
        .flatten()?;
    Some(f(&home))
}
