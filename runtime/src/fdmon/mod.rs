//! fd monitors: the part of the loop that sleeps in the kernel until an fd is ready or a timeout passes.
//!
//! Each monitor implements [`MonitorOps`]. [`FdMonitor`] wraps the active one and keeps the table of
//! registered fds, so it can switch monitors the way QEMU does: the poll monitor upgrades itself to epoll
//! once 64 fds are registered (scanning a pollfd array per wait is O(n), epoll is O(ready)), and an epoll
//! monitor that meets an fd epoll cannot watch (a regular file gives `EPERM`) falls back to poll, unless
//! the user forced the epoll backend, in which case the registration fails with that error instead.

mod epoll;
mod poll;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::RawFd;

use crate::Backend;

/// Interest and readiness bits. They are the poll(2) values, which epoll shares on Linux.
pub(crate) mod bits {
    pub(crate) const IN: u32 = libc::POLLIN as u32;
    pub(crate) const OUT: u32 = libc::POLLOUT as u32;
    pub(crate) const ERR: u32 = libc::POLLERR as u32;
    pub(crate) const HUP: u32 = libc::POLLHUP as u32;
    pub(crate) const NVAL: u32 = libc::POLLNVAL as u32;
}

/// The number of fds at which the poll monitor switches to epoll (QEMU's EPOLL_ENABLE_THRESHOLD).
const EPOLL_ENABLE_THRESHOLD: usize = 64;

/// One ready fd: the token it was registered with and what happened.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Event {
    pub(crate) token: u64,
    pub(crate) revents: u32,
}

/// What every fd monitor provides.
pub(crate) trait MonitorOps {
    /// Starts watching `fd` for `events` (a non-empty mix of IN and OUT).
    fn add(&mut self, fd: RawFd, token: u64, events: u32) -> io::Result<()>;
    /// Changes what `fd` is watched for.
    fn modify(&mut self, fd: RawFd, token: u64, events: u32) -> io::Result<()>;
    /// Stops watching `fd`. Best effort: the fd may already be closed.
    fn remove(&mut self, fd: RawFd);
    /// Sleeps up to `timeout_ns` (-1: forever, 0: just check) and appends ready fds to `out`.
    fn wait(&mut self, timeout_ns: i64, out: &mut Vec<Event>) -> io::Result<()>;
    /// Whether the monitor has work that forbids userspace polling (io_uring: queued SQEs or ready CQEs).
    fn need_wait(&self) -> bool {
        false
    }
    fn backend(&self) -> Backend;
}

#[derive(Clone, Copy, Debug)]
struct Registered {
    token: u64,
    events: u32,
}

/// The context's fd monitor with QEMU's upgrade and fallback rules.
pub(crate) struct FdMonitor {
    ops: Box<dyn MonitorOps>,
    fds: BTreeMap<RawFd, Registered>,
    /// The user asked for this exact backend: never switch, report errors instead.
    forced: bool,
    /// epoll refused one of our fds; stay on poll from then on.
    epoll_refused: bool,
}

impl FdMonitor {
    /// Creates the monitor for a resolved backend (never `Auto`).
    pub(crate) fn new(backend: Backend, forced: bool) -> io::Result<Self> {
        let ops: Box<dyn MonitorOps> = match backend {
            Backend::Poll => Box::new(poll::PollMonitor::new()),
            Backend::Epoll => Box::new(epoll::EpollMonitor::new()?),
            Backend::Auto | Backend::IoUring => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("fd monitor {backend:?} is not available in this build"),
                ))
            }
        };
        Ok(Self {
            ops,
            fds: BTreeMap::new(),
            forced,
            epoll_refused: false,
        })
    }

    pub(crate) fn backend(&self) -> Backend {
        self.ops.backend()
    }

    pub(crate) fn need_wait(&self) -> bool {
        self.ops.need_wait()
    }

    /// Registers, re-registers or (with `events == 0`) unregisters `fd`.
    pub(crate) fn set(&mut self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        match (self.fds.get(&fd).copied(), events) {
            (None, 0) => Ok(()),
            (Some(_), 0) => {
                self.ops.remove(fd);
                self.fds.remove(&fd);
                Ok(())
            }
            (None, _) => {
                self.add_with_fallback(fd, token, events)?;
                self.fds.insert(fd, Registered { token, events });
                self.maybe_upgrade();
                Ok(())
            }
            (Some(old), _) => {
                if old.events != events || old.token != token {
                    self.ops.modify(fd, token, events)?;
                    self.fds.insert(fd, Registered { token, events });
                }
                Ok(())
            }
        }
    }

    pub(crate) fn wait(&mut self, timeout_ns: i64, out: &mut Vec<Event>) -> io::Result<()> {
        self.ops.wait(timeout_ns, out)
    }

    fn add_with_fallback(&mut self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        match self.ops.add(fd, token, events) {
            Err(err)
                if err.raw_os_error_deep() == Some(libc::EPERM)
                    && self.ops.backend() == Backend::Epoll
                    && !self.forced =>
            {
                // QEMU's fdmon_epoll_disable: epoll cannot watch this fd (a regular file, say); poll can.
                self.epoll_refused = true;
                self.switch_to(Box::new(poll::PollMonitor::new()))?;
                self.ops.add(fd, token, events)
            }
            other => other,
        }
    }

    fn maybe_upgrade(&mut self) {
        if self.forced
            || self.epoll_refused
            || self.ops.backend() != Backend::Poll
            || self.fds.len() < EPOLL_ENABLE_THRESHOLD
        {
            return;
        }
        let Ok(epoll) = epoll::EpollMonitor::new() else {
            return;
        };
        if self.switch_to(Box::new(epoll)).is_err() {
            // One fd refused: stay on poll, rebuilt from the table.
            self.epoll_refused = true;
            let _ = self.switch_to(Box::new(poll::PollMonitor::new()));
        }
    }

    /// Re-registers every fd with `ops` and makes it the active monitor.
    fn switch_to(&mut self, mut ops: Box<dyn MonitorOps>) -> io::Result<()> {
        for (&fd, reg) in &self.fds {
            ops.add(fd, reg.token, reg.events)?;
        }
        self.ops = ops;
        Ok(())
    }
}

/// `raw_os_error` that also looks through aioctx's error wrapping.
trait RawOsErrorDeep {
    fn raw_os_error_deep(&self) -> Option<i32>;
}

impl RawOsErrorDeep for io::Error {
    fn raw_os_error_deep(&self) -> Option<i32> {
        self.raw_os_error().or_else(|| {
            let inner = self.get_ref()?;
            std::error::Error::source(inner)?
                .downcast_ref::<io::Error>()?
                .raw_os_error()
        })
    }
}
