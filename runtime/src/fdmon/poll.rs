//! The poll monitor: a pollfd array and `ppoll` with a nanosecond timeout (QEMU's fdmon-poll.c).

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::ptr;

use super::{Backend, Completion, Event, Interest, MonitorOps, Readiness};
use crate::sys;

pub(crate) struct PollMonitor {
    pollfds: Vec<libc::pollfd>,
    tokens: Vec<u64>,
    index: HashMap<RawFd, usize>,
}

impl PollMonitor {
    pub(crate) fn new() -> Self {
        Self {
            pollfds: Vec::new(),
            tokens: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl MonitorOps for PollMonitor {
    fn add(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.index.insert(fd, self.pollfds.len());
        self.pollfds.push(libc::pollfd {
            fd,
            events: interest.poll_bits() as libc::c_short,
            revents: 0,
        });
        self.tokens.push(token);
        Ok(())
    }

    fn modify(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let &i = self.index.get(&fd).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("fd {fd} is not registered"),
            )
        })?;
        self.pollfds[i].events = interest.poll_bits() as libc::c_short;
        self.tokens[i] = token;
        Ok(())
    }

    fn remove(&mut self, fd: RawFd) {
        let Some(i) = self.index.remove(&fd) else {
            return;
        };
        self.pollfds.swap_remove(i);
        self.tokens.swap_remove(i);
        if let Some(moved) = self.pollfds.get(i) {
            self.index.insert(moved.fd, i);
        }
    }

    fn wait(
        &mut self,
        timeout_ns: i64,
        out: &mut Vec<Event>,
        _completions: &mut Vec<Completion>,
    ) -> io::Result<()> {
        let ts = sys::timespec_from_ns(timeout_ns.max(0));
        let ts_ptr = if timeout_ns < 0 {
            ptr::null()
        } else {
            &ts as *const _
        };
        // SAFETY: `pollfds` is a live, correctly sized array of pollfd that ppoll may write revents into;
        // the timespec (if any) lives on our stack for the call; no signal mask is passed.
        let n = unsafe {
            libc::ppoll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                ts_ptr,
                ptr::null(),
            )
        };
        let mut left = super::wait_result(n, "ppoll in the poll fd monitor")?;
        for (pfd, &token) in self.pollfds.iter().zip(&self.tokens) {
            if left == 0 {
                break;
            }
            if pfd.revents != 0 {
                left -= 1;
                // POLLNVAL (the fd was closed under us) reads as an error so its handlers find out.
                let readiness = Readiness::from_poll_bits(pfd.revents as u16 as u32);
                out.push(Event { token, readiness });
            }
        }
        Ok(())
    }

    fn external_fds(&self, out: &mut Vec<libc::pollfd>) {
        out.extend(self.pollfds.iter().map(|p| libc::pollfd {
            fd: p.fd,
            events: p.events,
            revents: 0,
        }));
    }

    fn backend(&self) -> Backend {
        Backend::Poll
    }
}
