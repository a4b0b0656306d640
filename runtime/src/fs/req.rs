//! One block-I/O request, as an SQE for the ring engines or a blocking syscall for the thread pool.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};

use io_uring::{opcode, squeue, types};

use crate::io::ring_op::cqe_result;

/// One operation, described without pointers the compiler would refuse to send (addresses as `usize`).
#[derive(Clone, Copy, Debug)]
pub(super) enum Req {
    Read {
        addr: usize,
        len: usize,
        off: u64,
    },
    Write {
        addr: usize,
        len: usize,
        off: u64,
        fua: bool,
    },
    Readv {
        iov: usize,
        count: usize,
        off: u64,
    },
    Writev {
        iov: usize,
        count: usize,
        off: u64,
    },
    Fsync {
        data_only: bool,
    },
    Fallocate {
        mode: i32,
        off: u64,
        len: u64,
    },
}

impl Req {
    pub(super) fn sqe(self, fd: RawFd) -> squeue::Entry {
        let fd = types::Fd(fd);
        match self {
            Req::Read { addr, len, off } => opcode::Read::new(fd, addr as *mut u8, len as u32)
                .offset(off)
                .build(),
            Req::Write {
                addr,
                len,
                off,
                fua,
            } => opcode::Write::new(fd, addr as *const u8, len as u32)
                .offset(off)
                .rw_flags(if fua { libc::RWF_DSYNC } else { 0 })
                .build(),
            Req::Readv { iov, count, off } => {
                opcode::Readv::new(fd, iov as *const libc::iovec, count as u32)
                    .offset(off)
                    .build()
            }
            Req::Writev { iov, count, off } => {
                opcode::Writev::new(fd, iov as *const libc::iovec, count as u32)
                    .offset(off)
                    .build()
            }
            Req::Fsync { data_only } => opcode::Fsync::new(fd)
                .flags(if data_only {
                    types::FsyncFlags::DATASYNC
                } else {
                    types::FsyncFlags::empty()
                })
                .build(),
            Req::Fallocate { mode, off, len } => opcode::Fallocate::new(fd, len)
                .offset(off)
                .mode(mode)
                .build(),
        }
    }

    /// The same operation as a blocking syscall (the thread-pool engine). Returns `res` or `-errno`.
    ///
    /// # Safety
    ///
    /// The addresses must be valid for the operation, as for the SQE.
    pub(super) unsafe fn blocking(self, fd: RawFd) -> i32 {
        // SAFETY: in every arm, the caller guarantees the memory and keeps the fd open.
        let ret: isize = unsafe {
            match self {
                Req::Read { addr, len, off } => libc::pread(fd, addr as *mut _, len, off as i64),
                Req::Write {
                    addr,
                    len,
                    off,
                    fua,
                } => {
                    let iov = libc::iovec {
                        iov_base: addr as *mut _,
                        iov_len: len,
                    };
                    let flags = if fua { libc::RWF_DSYNC } else { 0 };
                    libc::pwritev2(fd, &iov, 1, off as i64, flags)
                }
                Req::Readv { iov, count, off } => {
                    libc::preadv(fd, iov as *const libc::iovec, count as i32, off as i64)
                }
                Req::Writev { iov, count, off } => {
                    libc::pwritev(fd, iov as *const libc::iovec, count as i32, off as i64)
                }
                Req::Fsync { data_only: true } => libc::fdatasync(fd) as isize,
                Req::Fsync { data_only: false } => libc::fsync(fd) as isize,
                Req::Fallocate { mode, off, len } => {
                    libc::fallocate(fd, mode, off as i64, len as i64) as isize
                }
            }
        };
        if ret < 0 {
            -io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        } else {
            ret as i32
        }
    }
}

/// An operation's own copy of its iovec array; only the kernel reads it (through the SQE or the
/// pool's syscall), so it must live as long as the operation's resources.
pub(super) struct IoVecs(pub(super) Vec<libc::iovec>);

// SAFETY: the iovecs point either into heap buffers that travel with them (in the same operation's
// resources), or into caller memory that the raw API's contract keeps valid and unaliased until the
// operation completes; sending the array to the pool's thread shares nothing else.
unsafe impl Send for IoVecs {}
// SAFETY: `&IoVecs` only reads the array of plain `iovec` values; nothing reaches the memory they
// point to through it.
unsafe impl Sync for IoVecs {}

/// The thread-pool engine: the syscall runs on the context's pool, the resources travel with it and
/// come back even if the job is cancelled before it starts.
pub(super) async fn run_blocking<K: Send + 'static>(
    req: Req,
    keep: (Arc<OwnedFd>, K),
) -> (io::Result<usize>, (Arc<OwnedFd>, K)) {
    let slot = Arc::new(Mutex::new(Some(keep)));
    let job_slot = Arc::clone(&slot);
    let joined = crate::task::blocking::spawn_blocking_io(move || {
        let guard = job_slot.lock().unwrap_or_else(PoisonError::into_inner);
        let fd = guard.as_ref().map_or(-1, |k| k.0.as_raw_fd());
        // SAFETY: the memory `req` points to is owned by the resources in the slot, which this job holds
        // locked (and alive through its Arc) for the whole call.
        let res = unsafe { req.blocking(fd) };
        drop(guard);
        Ok(res)
    })
    .await;
    let keep = slot
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .expect("resources are put back by the job or never taken");
    match joined {
        Ok(res) => (cqe_result(res), keep),
        Err(e) => (Err(e), keep),
    }
}
