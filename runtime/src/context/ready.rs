//! The ready list of one iteration: handlers found ready by the fd monitor and/or by their poll
//! functions, dispatched together at the end of the iteration.

use std::rc::Rc;

use super::handler_table::HandlerNode;
use crate::fdmon::Readiness;

/// A handler found ready in this iteration: by the fd monitor (`readiness`) and/or by its poll function.
pub(crate) struct Ready {
    pub(super) node: Rc<HandlerNode>,
    pub(super) readiness: Readiness,
    pub(super) poll_ready: bool,
}

/// Records that `node`'s poll function found work (merging with an fd event already listed).
pub(super) fn push_poll_ready(ready: &mut Vec<Ready>, node: &Rc<HandlerNode>) {
    if let Some(entry) = ready.iter_mut().find(|r| Rc::ptr_eq(&r.node, node)) {
        entry.poll_ready = true;
        return;
    }
    ready.push(Ready {
        node: Rc::clone(node),
        readiness: Readiness::NONE,
        poll_ready: true,
    });
}
