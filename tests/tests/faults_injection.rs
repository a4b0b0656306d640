//! Fault injection: the kernel refusing io_uring, running out of fds, file size limits and a full file
//! system, a storm of signals interrupting every wait, and callbacks that panic. Each test checks that
//! the fault reaches the caller it concerns as an error (or a visible fallback), that nothing else is
//! lost, and that the loop keeps serving afterwards. RELIABILITY.md lists them.
//!
//! Faults that change process-wide state (seccomp filters, rlimits, signal dispositions, mount
//! namespaces) are injected in a child process of this test binary (`tests::run_in_child`).
//!
//! (The crate root of a test target resolves `mod` paths beside itself, hence the `#[path]`s.)

#[path = "faults_injection/common.rs"]
mod common;
#[path = "faults_injection/fd_limits.rs"]
mod fd_limits;
#[path = "faults_injection/io_uring_refused.rs"]
mod io_uring_refused;
#[path = "faults_injection/panics.rs"]
mod panics;
#[path = "faults_injection/signals.rs"]
mod signals;
#[path = "faults_injection/write_limits.rs"]
mod write_limits;
