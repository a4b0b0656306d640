//! Atomics the loom models swap out.
//!
//! The cross-thread parts of the loop (the bottom-half list and the notify_me word) take their atomics from
//! here, so `RUSTFLAGS="--cfg loom"` runs the very same code under loom's model checker. Statistics counters
//! are plain std atomics: they carry no synchronisation and would only blow up loom's state space.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicPtr, AtomicU32};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicPtr, AtomicU32};

pub(crate) use std::sync::atomic::Ordering;
