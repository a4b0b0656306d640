//! Timer lists (QEMU's QEMUTimerList, one per clock): a slab of entries and, per clock, the armed ones
//! ordered by deadline.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::task::Waker;

use slab::Slab;

use super::Clock;

struct TimerEntry {
    clock: Clock,
    /// Distinguishes this timer from a later one that reuses its slab slot.
    id: u64,
    /// `(deadline, sequence)` while armed; the sequence makes equal deadlines fire in arming order.
    armed: Option<(i64, u64)>,
    callback: TimerCallback,
}

/// What a timer does when it fires: call a callback ([`Timer`]) or wake a task (the `sleep` futures,
/// which need no allocation of their own).
pub(crate) enum TimerCallback {
    Call(Rc<dyn Fn()>),
    Wake(Option<Waker>),
}

/// What an expired timer does, taken out of the lists so that it runs with no borrow held.
pub(crate) enum TimerAction {
    Call(Rc<dyn Fn()>),
    Wake(Waker),
}

/// Every timer of a context: a slab of entries and, per clock, the armed ones ordered by deadline.
#[derive(Default)]
pub(crate) struct TimerLists {
    entries: Slab<TimerEntry>,
    queues: [BTreeMap<(i64, u64), usize>; 3],
    next_seq: u64,
}

impl TimerLists {
    fn entry_mut(&mut self, key: usize, id: u64) -> Option<&mut TimerEntry> {
        self.entries.get_mut(key).filter(|e| e.id == id)
    }

    /// Arms (or re-arms) a timer. Returns true if it became the earliest deadline of its clock, which
    /// means a sleeping loop must recompute its timeout.
    pub(crate) fn arm(&mut self, key: usize, id: u64, deadline: i64) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        let Some(entry) = self.entries.get_mut(key).filter(|e| e.id == id) else {
            return false;
        };
        let clock = entry.clock;
        let old = entry.armed.replace((deadline, seq));
        let queue = &mut self.queues[clock.index()];
        if let Some(old) = old {
            queue.remove(&old);
        }
        queue.insert((deadline, seq), key);
        queue.first_key_value().map(|(k, _)| *k) == Some((deadline, seq))
    }

    pub(crate) fn cancel(&mut self, key: usize, id: u64) {
        if let Some(entry) = self.entry_mut(key, id) {
            if let Some(armed) = entry.armed.take() {
                let clock = entry.clock;
                self.queues[clock.index()].remove(&armed);
            }
        }
    }

    /// Adds a timer. Returns its slot and id.
    pub(crate) fn insert(&mut self, clock: Clock, callback: TimerCallback) -> (usize, u64) {
        // Ids are unique across contexts, so a handle can never mistake another context's timer for its own.
        // Relaxed: only distinctness matters; the id publishes nothing.
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = self.entries.insert(TimerEntry {
            clock,
            id,
            armed: None,
            callback,
        });
        (key, id)
    }

    /// Arms a waking timer for `deadline` and stores the waker to wake (replacing an older one). Returns
    /// false if the entry is gone (it fired, or belongs to another timer now).
    pub(crate) fn arm_waker(&mut self, key: usize, id: u64, deadline: i64, waker: &Waker) -> bool {
        let Some(entry) = self.entry_mut(key, id) else {
            return false;
        };
        match &mut entry.callback {
            TimerCallback::Wake(Some(w)) if w.will_wake(waker) => {}
            TimerCallback::Wake(slot) => *slot = Some(waker.clone()),
            TimerCallback::Call(_) => return false,
        }
        if entry.armed.map(|(d, _)| d) != Some(deadline) {
            self.arm(key, id, deadline);
        }
        true
    }

    /// Removes a timer; the callback is returned so the caller can drop it outside any borrow.
    pub(crate) fn remove(&mut self, key: usize, id: u64) -> Option<TimerCallback> {
        self.cancel(key, id);
        self.entry_mut(key, id)?;
        Some(self.entries.remove(key).callback)
    }

    /// Takes every callback out (context teardown).
    pub(crate) fn drain(&mut self) -> Vec<TimerCallback> {
        for q in &mut self.queues {
            q.clear();
        }
        self.entries.drain().map(|e| e.callback).collect()
    }

    pub(crate) fn is_empty(&self, clock: Clock) -> bool {
        self.queues[clock.index()].is_empty()
    }

    /// The earliest armed deadline of `clock`.
    pub(crate) fn first_deadline(&self, clock: Clock) -> Option<i64> {
        self.queues[clock.index()]
            .first_key_value()
            .map(|(&(deadline, _), _)| deadline)
    }

    /// Pops the earliest timer of `clock` if it expired at `now`, disarming it, and returns its
    /// action. A waking entry that has no waker (nobody to wake) expires silently: it is skipped, so
    /// only real work counts as a timer that fired.
    pub(crate) fn pop_expired(&mut self, clock: Clock, now: i64) -> Option<TimerAction> {
        loop {
            let queue = &mut self.queues[clock.index()];
            let (&(deadline, _), _) = queue.first_key_value()?;
            if deadline > now {
                return None;
            }
            let (_, key) = queue.pop_first()?;
            let entry = &mut self.entries[key];
            entry.armed = None;
            match &mut entry.callback {
                TimerCallback::Call(f) => return Some(TimerAction::Call(Rc::clone(f))),
                // A sleep's entry is one-shot: it goes away when it fires (its future re-inserts one if
                // it is polled early again), so an entry whose future was dropped elsewhere cannot leak.
                TimerCallback::Wake(_) => {
                    if let TimerCallback::Wake(Some(waker)) = self.entries.remove(key).callback {
                        return Some(TimerAction::Wake(waker));
                    }
                }
            }
        }
    }

    /// The deadline the timer in `key` is armed for, if it is still that timer and armed.
    pub(crate) fn expire_time(&self, key: usize, id: u64) -> Option<i64> {
        self.entries
            .get(key)
            .filter(|e| e.id == id)
            .and_then(|e| e.armed.map(|(deadline, _)| deadline))
    }
}
