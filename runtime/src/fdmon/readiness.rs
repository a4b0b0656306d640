//! [`Interest`] and [`Readiness`]: what a handler asks the kernel to watch, and what it reported.
//!
//! Both carry poll(2) bits, which epoll and io_uring's `POLL_ADD` share on Linux, so converting to and
//! from the kernel's words costs nothing.

use std::fmt;
use std::ops::BitOr;

const IN: u32 = libc::POLLIN as u32;
const OUT: u32 = libc::POLLOUT as u32;
const ERR: u32 = libc::POLLERR as u32;
const HUP: u32 = libc::POLLHUP as u32;
const NVAL: u32 = libc::POLLNVAL as u32;

/// Which directions of an fd the kernel watches.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Interest(u32);

impl Interest {
    pub(crate) const NONE: Interest = Interest(0);
    pub(crate) const READ: Interest = Interest(IN);
    pub(crate) const WRITE: Interest = Interest(OUT);
    pub(crate) const BOTH: Interest = Interest(IN | OUT);

    /// The directions `read` and `write` ask for.
    pub(crate) fn of(read: bool, write: bool) -> Interest {
        let mut interest = Interest::NONE;
        if read {
            interest = interest | Interest::READ;
        }
        if write {
            interest = interest | Interest::WRITE;
        }
        interest
    }

    pub(crate) fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The directions both ask for.
    pub(crate) fn and(self, other: Interest) -> Interest {
        Interest(self.0 & other.0)
    }

    /// The poll(2) / epoll event bits.
    pub(crate) fn poll_bits(self) -> u32 {
        self.0
    }
}

impl BitOr for Interest {
    type Output = Interest;

    fn bitor(self, other: Interest) -> Interest {
        Interest(self.0 | other.0)
    }
}

impl fmt::Debug for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interest")
            .field("read", &(self.0 & IN != 0))
            .field("write", &(self.0 & OUT != 0))
            .finish()
    }
}

/// What the kernel reported for an fd.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Readiness(u32);

impl Readiness {
    /// Nothing: a handler found ready by its poll function only.
    pub(crate) const NONE: Readiness = Readiness(0);
    /// The fd cannot be watched (closed under us, say): every callback should find out.
    pub(crate) const ERROR: Readiness = Readiness(ERR);

    /// The readiness in a poll(2), epoll or `POLL_ADD` result. `POLLNVAL` (the fd was closed under
    /// the monitor) becomes an error, so its handlers find out.
    pub(crate) fn from_poll_bits(bits: u32) -> Readiness {
        if bits & NVAL != 0 {
            Readiness((bits & !NVAL) | ERR)
        } else {
            Readiness(bits)
        }
    }

    pub(crate) fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The read callback runs: readable, hung up or in error (what a read would find out).
    pub(crate) fn wakes_reader(self) -> bool {
        self.0 & (IN | HUP | ERR) != 0
    }

    /// The write callback runs: writable or in error.
    pub(crate) fn wakes_writer(self) -> bool {
        self.0 & (OUT | ERR) != 0
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("readable", &(self.0 & IN != 0))
            .field("writable", &(self.0 & OUT != 0))
            .field("error", &(self.0 & ERR != 0))
            .field("hangup", &(self.0 & HUP != 0))
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_closed_fd_reads_as_an_error_that_wakes_both_callbacks() {
        let closed = Readiness::from_poll_bits(NVAL);
        assert!(closed.wakes_reader() && closed.wakes_writer());
    }

    #[test]
    fn hangup_wakes_only_the_reader() {
        let hup = Readiness::from_poll_bits(HUP);
        assert!(hup.wakes_reader());
        assert!(!hup.wakes_writer());
    }

    #[test]
    fn interest_combines_directions() {
        assert_eq!(Interest::of(true, true), Interest::BOTH);
        assert_eq!(Interest::of(false, false), Interest::NONE);
        assert_eq!(Interest::BOTH.and(Interest::WRITE), Interest::WRITE);
        assert!(Interest::READ.and(Interest::WRITE).is_none());
    }
}
