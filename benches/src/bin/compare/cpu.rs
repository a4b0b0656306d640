//! CPU time, the currency a client-bound row still ranks servers in.
//!
//! The process's CPU time (`getrusage(RUSAGE_SELF)`) counts every thread of the process, the
//! kernel's io_uring workers (`iou-wrk`, `iou-sqp`) included, because they belong to the process;
//! a thread's own time (`CLOCK_THREAD_CPUTIME_ID`) lets a client subtract itself from that.

use std::io;
use std::time::Duration;

/// User plus system CPU time of the whole process so far.
pub fn process() -> io::Result<Duration> {
    // SAFETY: all-zero bytes are a valid `rusage` (integers and timevals only).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the duration of the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let timeval = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    Ok(timeval(usage.ru_utime) + timeval(usage.ru_stime))
}

/// CPU time of the calling thread so far.
pub fn this_thread() -> io::Result<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// CPU the rest of the process spends while the calling thread (a client) does its part.
#[derive(Clone, Copy, Debug)]
pub struct OthersMeter {
    process: Duration,
    this_thread: Duration,
}

impl OthersMeter {
    pub fn start() -> io::Result<OthersMeter> {
        Ok(OthersMeter {
            process: process()?,
            this_thread: this_thread()?,
        })
    }

    /// CPU time of every thread but the caller's since `start`.
    pub fn others(&self) -> io::Result<Duration> {
        let process = process()?.saturating_sub(self.process);
        let mine = this_thread()?.saturating_sub(self.this_thread);
        Ok(process.saturating_sub(mine))
    }
}

/// Microseconds of `cpu` per operation.
pub fn us_per(cpu: Duration, ops: u64) -> f64 {
    cpu.as_nanos() as f64 / 1e3 / ops.max(1) as f64
}
