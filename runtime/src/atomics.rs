//! Atomics the loom models swap out.
//!
//! The cross-thread parts of the loop (the bottom-half list, the notify_me word and the MSG_RING
//! target's flag) take their atomics from
//! here, so `RUSTFLAGS="--cfg loom"` runs the very same code under loom's model checker. Statistics counters
//! are plain std atomics: they carry no synchronisation and would only blow up loom's state space.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32};

pub(crate) use std::sync::atomic::Ordering;
