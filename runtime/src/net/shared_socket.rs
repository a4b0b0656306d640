//! [`SharedSocket`]: a socket owned jointly by its stream or datagram socket and the io_uring
//! operations in flight on it.
//!
//! A RECV (`net/recv.rs`, streams) or RECVMSG (`net/recv_msg.rs`, datagram sockets) names the
//! socket's fd in its SQE, and the fd must stay open, and mean this socket, until the operation's CQE
//! arrives, even if the socket is dropped first. Instead of a duplicate of the fd for the operations
//! (two fds per socket), each operation holds an `Arc` of the socket: the fd closes when the last
//! owner, socket or operation, lets go. One fd per socket.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

/// A socket behind an `Arc`, readable and writable through a shared reference.
#[derive(Debug)]
pub(crate) struct SharedSocket<S>(Arc<S>);

impl<S> SharedSocket<S> {
    pub(crate) fn new(socket: S) -> Self {
        SharedSocket(Arc::new(socket))
    }

    /// The socket, for its own methods (`peer_addr`, `shutdown`, ...).
    pub(crate) fn get(&self) -> &S {
        &self.0
    }

    /// Another owner of the socket, for an operation in flight.
    pub(crate) fn share(&self) -> Arc<S> {
        Arc::clone(&self.0)
    }

    /// Whether no operation holds the socket any more.
    pub(crate) fn is_unique(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// The socket itself, if nothing else holds it.
    pub(crate) fn into_inner(self) -> Option<S> {
        Arc::into_inner(self.0)
    }
}

impl<S: AsRawFd> AsRawFd for SharedSocket<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl<S: AsFd> AsFd for SharedSocket<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Reads and writes through a shared reference, for the socket types std allows it for. (Spelled out
/// per type: a blanket impl over any `S` with `&S: Read` would let the trait solver nest
/// `SharedSocket<SharedSocket<..>>` without end while it infers a type.)
macro_rules! shared_io {
    ($($socket:ty),*) => {$(
        impl Read for &SharedSocket<$socket> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                (&*self.0).read(buf)
            }

            fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
                (&*self.0).read_vectored(bufs)
            }
        }

        impl Write for &SharedSocket<$socket> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                (&*self.0).write(buf)
            }

            fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                (&*self.0).write_vectored(bufs)
            }

            fn flush(&mut self) -> io::Result<()> {
                (&*self.0).flush()
            }
        }
    )*};
}

shared_io!(std::net::TcpStream, std::os::unix::net::UnixStream);
