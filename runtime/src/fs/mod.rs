//! Block I/O: [`File`] with positional reads and writes, flushes, FUA writes, write-zeroes and discard,
//! as io_uring operations on the context's ring.
//!
//! ## Engines
//!
//! Operations are SQEs on the ring of the context that runs the task ([`AioContext::add_sqe`](crate::AioContext::add_sqe)): the
//! context's own ring on the io_uring backend (batched with its fd polls into one `io_uring_enter` per
//! iteration, completions found by the polling phase without a syscall), or the context's user-SQE ring on
//! the epoll and poll backends. Where the kernel refuses io_uring, they run on the context's blocking
//! thread pool (`pread`/`pwrite`), whose results come back through the loop. [`File::engine`] tells which;
//! [`OpenOptions::engine`] forces one (for tests and comparisons). Opening a file is an operation of its
//! engine too: an `OPENAT` on the ring (no thread hop; an fd opened after its future was dropped is
//! closed), or `open` on the pool.
//!
//! ## Buffer lifetimes
//!
//! The kernel reads and writes an operation's buffer from submission until it posts the CQE; nothing in
//! userspace may free or reuse the buffer before that. The owned-buffer methods therefore take the buffer
//! by value ([`IoBuf`], [`IoBufMut`]: `Vec<u8>`, `Box<[u8]>`, [`AlignedBuf`]) and hand it back with the
//! result. While the operation is in flight the buffer lives in a cell shared by the operation's future
//! and its completion callback; the context keeps the callback until the CQE arrives. If the future is
//! dropped early (a `select!` or `timeout` that gave up, an aborted task), the buffer stays in the cell
//! and is freed when the CQE arrives; if the context itself is dropped, it cancels every operation and
//! waits for each CQE before dropping the callbacks. So a buffer is never freed or reused while the kernel
//! may touch it, and no `unsafe` is needed to use these methods.
//!
//! The `_raw` methods are for memory the caller keeps alive some other way (guest RAM mapped by a VMM):
//! they are `unsafe`, and the caller promises the memory outlives the operation's completion; the same
//! early-drop rules apply, so "outlives" means until the CQE, not until the future is dropped.
//!
//! ## Semantics (QEMU's block/io_uring.c)
//!
//! `EINTR` and `EAGAIN` completions are resubmitted. `read_exact_at` and `write_all_at` continue short
//! transfers; `read_exact_at` fails with `UnexpectedEof` at end of file, `write_all_at` with `ENOSPC` when
//! a write makes no progress. A plain `read_at` past EOF returns what exists (possibly 0), never garbage.
//! With `O_DIRECT` ([`OpenOptions::direct`]), a buffer address, length or offset that is not a multiple of
//! 512 fails with `InvalidInput` (saying what is misaligned) before anything is submitted, where the
//! kernel would only say `EINVAL`.

mod buf;
mod file;
mod memory;
mod open;
mod req;

pub use buf::{AlignedBuf, IoBuf, IoBufMut};
pub use file::{File, IoEngine};
pub use memory::{IoMemory, MemRange, MemoryBuf};
pub use open::OpenOptions;
