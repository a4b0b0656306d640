//! The epoll monitor (QEMU's fdmon-epoll.c), waiting with `epoll_pwait2` for a nanosecond timeout.
//!
//! Kernels before 5.11 lack `epoll_pwait2`; there a positive timeout first waits on the epoll fd itself
//! with `ppoll` (which takes a timespec) and then collects events with `epoll_wait(0)`, as QEMU does.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use super::{Backend, Completion, Event, Interest, MonitorOps, Readiness};
use crate::sys;

/// Events collected per wait (QEMU uses 128 as well); more stay queued in the kernel for the next wait.
const MAX_EVENTS: usize = 128;

pub(crate) struct EpollMonitor {
    epfd: OwnedFd,
    events: Vec<libc::epoll_event>,
    have_pwait2: bool,
}

impl EpollMonitor {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers and returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        let fd = sys::check(fd, || "creating the epoll fd monitor".into())?;
        Ok(Self {
            // SAFETY: `fd` is a fresh descriptor that nobody else owns.
            epfd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS],
            have_pwait2: true,
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.poll_bits(),
            u64: token,
        };
        // SAFETY: `ev` is a live epoll_event for the duration of the call; epoll_ctl only reads it.
        let ret = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) };
        sys::check(ret, || {
            let what = match op {
                libc::EPOLL_CTL_ADD => "adding",
                libc::EPOLL_CTL_MOD => "changing",
                _ => "removing",
            };
            let hint = match io::Error::last_os_error().raw_os_error() {
                Some(libc::EPERM) => " (epoll cannot watch this kind of file, e.g. a regular file)",
                _ => "",
            };
            format!("{what} fd {fd} in the epoll fd monitor{hint}")
        })
        .map(drop)
    }

    fn epoll_wait(&mut self, timeout_ns: i64) -> libc::c_int {
        if self.have_pwait2 {
            let ts = sys::timespec_from_ns(timeout_ns.max(0));
            let ts_ptr = if timeout_ns < 0 {
                ptr::null()
            } else {
                &ts as *const _
            };
            // SAFETY: the events buffer holds MAX_EVENTS entries the kernel may write; the timespec lives on
            // our stack for the call; a null sigmask means "do not change it" (sigsetsize is then unused).
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.epfd.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    MAX_EVENTS as libc::c_int,
                    ts_ptr,
                    ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            } as libc::c_int;
            if ret >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
                return ret;
            }
            self.have_pwait2 = false;
        }
        let ms = if timeout_ns > 0 {
            let mut pfd = libc::pollfd {
                fd: self.epfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ts = sys::timespec_from_ns(timeout_ns);
            // SAFETY: one live pollfd and a live timespec; no signal mask.
            let ret = unsafe { libc::ppoll(&mut pfd, 1, &ts, ptr::null()) };
            if ret < 0 {
                return ret;
            }
            0
        } else {
            timeout_ns.clamp(-1, 0) as libc::c_int
        };
        // SAFETY: as for epoll_pwait2 above.
        unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                ms,
            )
        }
    }
}

impl MonitorOps for EpollMonitor {
    fn add(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    fn modify(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    fn remove(&mut self, fd: RawFd) {
        // Fails harmlessly if the fd was already closed (the kernel dropped it from the set then).
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, Interest::NONE);
    }

    fn wait(
        &mut self,
        timeout_ns: i64,
        out: &mut Vec<Event>,
        _completions: &mut Vec<Completion>,
    ) -> io::Result<()> {
        let n = super::wait_result(
            self.epoll_wait(timeout_ns),
            "waiting in the epoll fd monitor",
        )?;
        out.extend(self.events[..n].iter().map(|ev| Event {
            token: ev.u64,
            // EPOLLIN/OUT/ERR/HUP have the poll(2) values on Linux.
            readiness: Readiness::from_poll_bits(ev.events),
        }));
        Ok(())
    }

    fn external_fds(&self, out: &mut Vec<libc::pollfd>) {
        // The epoll fd is readable while any fd in its set is ready.
        out.push(libc::pollfd {
            fd: self.epfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }

    fn backend(&self) -> Backend {
        Backend::Epoll
    }
}
