//! Datagram receives ([`UdpSocket`](super::UdpSocket), [`UnixDatagram`](super::UnixDatagram)):
//! completion-based `IORING_OP_RECVMSG` on an io_uring context, readiness elsewhere.
//!
//! On the epoll and poll backends a receive is `recvfrom -> EAGAIN -> wait -> recvfrom` (through
//! the socket's [`Async`]), and a peek is the same with `MSG_PEEK`. On the io_uring backend a receive
//! that finds nothing queues an `IORING_OP_RECVMSG` on the loop's ring into a datagram buffer the
//! socket owns; the SQE goes to the kernel with the loop's one `io_uring_enter` per iteration and its
//! CQE brings the datagram and the sender's address, so waiting for and receiving a datagram cost no
//! syscall of their own.
//!
//! # Buffer ownership
//!
//! The same buffer-ownership rules as RECV (`net/recv.rs`). The kernel writes the datagram into
//! the buffer (64 KiB, a `Vec` whose heap block does not move when the `Vec` does) and the sender's
//! address into a `sockaddr_storage`, through an `iovec` and a `msghdr` that it reads when the
//! operation runs, possibly long after the SQE was queued. All four live in one boxed [`MsgParts`]:
//! the `msghdr` points at the `iovec` and the `sockaddr_storage` beside it in the same heap block,
//! the `iovec` at the buffer, and moving the `Box` (into the operation's resources, into the cell the
//! completion callback shares, back to the socket) never moves that heap block. The box and an
//! owner of the socket itself travel inside the operation ([`Op`]) until its CQE arrives, whatever
//! happens to the receive future or the socket meanwhile.
//!
//! The socket, not the receive future, owns the RECVMSG in flight: a receive future dropped
//! mid-flight (a `select!` that took another branch, a timeout) leaves it running, and the datagram
//! it brings waits, whole, for the next receive. A completed datagram is copied out as
//! `recvfrom(2)` would: `min(len, buf.len())` bytes, the rest of a longer datagram discarded; an
//! empty datagram is a 0-byte receive with the sender's address; a peek copies it out and keeps it
//! for the next receive. Dropping the socket queues `IORING_OP_ASYNC_CANCEL` for a RECVMSG in flight
//! and lets go: the box and the operation's owner of the socket are released by the completion
//! callback when the RECVMSG's own CQE (`-ECANCELED`, or a datagram nobody will read) arrives, and
//! only then does the fd close (and a UDP port become free again, at the loop's next iteration).
//! Unlike a stream, the socket is not shut down first: a datagram socket has no connection whose
//! peer should see an end, and a shutdown would free nothing sooner (the port stays bound until the
//! last close); the cancel alone brings the CQE. At context teardown the context cancels and waits
//! for every RECVMSG like any user SQE.
//!
//! A receive into a buffer larger than 64 KiB (only a Unix datagram can be longer than a UDP
//! datagram) with nothing held or in flight receives with readiness straight into the caller's
//! buffer, so that the datagram is cut only where `recvfrom(2)` would cut it. A datagram longer
//! than 64 KiB that a RECVMSG already took (queued by a smaller receive, possibly dropped since) is
//! cut at 64 KiB. Receives take turns: one task at a time may wait to receive on a socket (the
//! operation keeps one waker), while another sends.
//!
//! # One fd per socket
//!
//! The SQE names the socket's fd, which must stay open, and name this socket, until the CQE: an SQE
//! still queued resolves its fd only when the loop submits it, and a number closed and reused
//! meanwhile would be another file. The socket lives in a [`SharedSocket`] (an `Arc`), and a RECVMSG
//! in flight holds one of its owners (an `Arc<dyn AsFd + Send + Sync>` in the operation's
//! resources): the fd closes when the last owner, socket or operation, lets go. No duplicate fd, as
//! for the streams' RECVs (`net/recv.rs`): a datagram socket costs one fd, receive in flight or not.
//!
//! # Sends
//!
//! Sends stay readiness-based on every backend: `sendto(2)` on a socket with buffer space (for UDP,
//! nearly always: a datagram is queued or dropped, never waited for) is one syscall that completes
//! at once. An `IORING_OP_SENDMSG` costs no syscall of its own, but the payload has to be copied
//! into a buffer the operation owns, the kernel does the same work inside `io_uring_enter`, and the
//! send completes only at the next loop iteration: a task that awaits its sends in turn (the usual
//! request/response code) pays a loop iteration per datagram instead of a syscall, and only many
//! tasks sending in the same iteration share one enter.
//!
//! Measured (`cargo bench -p benches --bench udp_send`: 64-byte datagrams to a loopback socket,
//! io_uring backend, a 2-core VM, per datagram): `UdpSocket::send_to` 5.8-6.0 us, the same as a
//! plain std `send_to` (the kernel's send path dominates); a SENDMSG awaited before the next
//! 7.3-8.1 us, 25-40% slower; 32 SENDMSGs in flight together 5.3-6.0 us, within the noise of
//! `sendto`. The ring would pay off only for many tasks sending in the same iteration, and even
//! then not measurably; it would cost a copy, an owned buffer and a second code path everywhere.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll};

use io_uring::{opcode, types};
use socket2::{SockAddr, SockAddrStorage};

use super::shared_socket::SharedSocket;
use crate::context::{current, HomeState};
use crate::io::ring_op::{cqe_result, Op};
use crate::io::Async;
use crate::Backend;

/// The receive buffer of a RECVMSG: room for any UDP datagram (at most 65,507 bytes of payload
/// over IPv4, 65,527 over IPv6 without jumbograms).
pub(crate) const DGRAM_BUF: usize = 64 * 1024;

/// What a RECVMSG points to, in one heap block (see the module docs).
struct MsgParts {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
    buf: Vec<u8>,
}

// SAFETY: the raw pointers in `hdr` and `iov` point only into this value's own heap block (boxed)
// and into `buf`, which it owns: sending the value to another thread sends everything they point
// to, and nothing else holds those pointers except the kernel, until the operation's CQE.
unsafe impl Send for MsgParts {}

impl MsgParts {
    fn new() -> Box<MsgParts> {
        Box::new(MsgParts {
            // SAFETY: `msghdr` is a C struct of integers and pointers: all zeroes (null pointers,
            // zero lengths) is a valid value.
            hdr: unsafe { std::mem::zeroed() },
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            // SAFETY: `sockaddr_storage` is a C struct of integers: all zeroes is valid (AF_UNSPEC).
            addr: unsafe { std::mem::zeroed() },
            buf: vec![0; DGRAM_BUF],
        })
    }

    /// Points the header at this block's iovec, address and buffer (again: the values may have
    /// been changed by the last receive), and returns it for the SQE.
    fn prepare(&mut self) -> *mut libc::msghdr {
        // AF_UNSPEC: if the kernel reports no address (an unnamed Unix sender), none is read.
        self.addr.ss_family = libc::AF_UNSPEC as libc::sa_family_t;
        self.iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: self.buf.len(),
        };
        self.hdr.msg_name = std::ptr::addr_of_mut!(self.addr).cast();
        self.hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        self.hdr.msg_iov = std::ptr::addr_of_mut!(self.iov);
        self.hdr.msg_iovlen = 1;
        self.hdr.msg_control = std::ptr::null_mut();
        self.hdr.msg_controllen = 0;
        self.hdr.msg_flags = 0;
        std::ptr::addr_of_mut!(self.hdr)
    }

    /// The sender's address the completed RECVMSG reported.
    fn sender(&self) -> SockAddr {
        let len = self
            .hdr
            .msg_namelen
            .min(std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t);
        let mut storage = SockAddrStorage::zeroed();
        // SAFETY: `sockaddr_storage` is one of the platform's `sockaddr_*` types.
        unsafe { *storage.view_as::<libc::sockaddr_storage>() = self.addr };
        // SAFETY: the kernel wrote an address of family `ss_family` and length `msg_namelen` (capped
        // at the storage's size); with no address it left AF_UNSPEC, which `SockAddr` maps to none.
        unsafe { SockAddr::new(storage, len) }
    }
}

/// What a RECVMSG in flight owns: the parts the SQE points into and (an owner of) the socket whose
/// fd it names.
struct RecvMsgResources {
    _socket: Arc<dyn AsFd + Send + Sync>,
    parts: Box<MsgParts>,
}

/// What a completed RECVMSG brought, for the next receive.
enum Held {
    /// A datagram of `len` bytes in `parts.buf`, its sender in `parts`.
    Datagram {
        len: usize,
        parts: Box<MsgParts>,
    },
    Error(io::Error),
}

#[derive(Default)]
struct State {
    /// The context that runs this socket, when its backend is io_uring and RECVMSGs are in use.
    ring: Option<Weak<HomeState>>,
    /// The parts for the next RECVMSG, when none is in flight and none is held.
    spare: Option<Box<MsgParts>>,
    held: Option<Held>,
    op: Option<Op<RecvMsgResources>>,
}

/// A datagram socket's receive side (completion-based on an io_uring context, readiness elsewhere).
#[derive(Default)]
pub(crate) struct DatagramRecv {
    state: RefCell<State>,
}

impl std::fmt::Debug for DatagramRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("DatagramRecv")
            .field("completion_based", &state.ring.is_some())
            .field("held", &state.held.is_some())
            .field("in_flight", &state.op.is_some())
            .finish()
    }
}

impl DatagramRecv {
    /// Uses RECVMSGs when the current context's backend is io_uring.
    pub(crate) fn for_current_context() -> DatagramRecv {
        let ring = current::with_current(|home| {
            (home.backend() == Backend::IoUring).then(|| Rc::downgrade(home))
        })
        .flatten();
        DatagramRecv {
            state: RefCell::new(State {
                ring,
                ..State::default()
            }),
        }
    }

    /// Receives one datagram into `buf` (keeping it for the next receive if `peek`), returning its
    /// length in `buf` and its sender (`sender` converts the address a RECVMSG reported; `readiness`
    /// is one non-blocking attempt of the same receive on the socket).
    pub(crate) fn poll_recv<S, A>(
        &self,
        cx: &mut Context<'_>,
        io: &Async<SharedSocket<S>>,
        buf: &mut [u8],
        peek: bool,
        sender: impl FnOnce(&SockAddr) -> io::Result<A>,
        mut readiness: impl FnMut(&S, &mut [u8]) -> io::Result<(usize, A)>,
    ) -> Poll<io::Result<(usize, A)>>
    where
        S: AsRawFd + AsFd + Send + Sync + 'static,
    {
        let mut state = self.state.borrow_mut();
        loop {
            match state.held.take() {
                Some(Held::Datagram { len, parts }) => {
                    let n = len.min(buf.len());
                    buf[..n].copy_from_slice(&parts.buf[..n]);
                    let from = sender(&parts.sender());
                    if peek {
                        state.held = Some(Held::Datagram { len, parts });
                    } else {
                        state.spare = Some(parts);
                    }
                    return Poll::Ready(from.map(|from| (n, from)));
                }
                Some(Held::Error(err)) => return Poll::Ready(Err(err)),
                None => {}
            }
            if state.op.is_some() {
                if state.poll_op(cx).is_pending() {
                    return Poll::Pending;
                }
                continue;
            }
            if buf.len() > DGRAM_BUF || !state.start(io.get_ref()) {
                drop(state);
                return super::poll_read_with(io, cx, |socket| readiness(socket.get(), buf));
            }
        }
    }

    /// Whether a received datagram waits here, or a receive is in flight (so handing the socket
    /// elsewhere would lose it).
    pub(crate) fn holds_data(&self) -> bool {
        let state = self.state.borrow();
        state.held.is_some() || state.op.is_some()
    }
}

impl State {
    /// Queues a RECVMSG on `socket`; `false` if this socket receives with readiness instead (no
    /// io_uring context any more).
    fn start<S: AsFd + Send + Sync + 'static>(&mut self, socket: &SharedSocket<S>) -> bool {
        let Some(ring) = self.ring.as_ref().and_then(Weak::upgrade) else {
            self.ring = None;
            return false;
        };
        let socket: Arc<dyn AsFd + Send + Sync> = socket.share();
        let raw_fd = socket.as_fd().as_raw_fd();
        let mut parts = self.spare.take().unwrap_or_else(MsgParts::new);
        let msg = parts.prepare();
        let resources = RecvMsgResources {
            _socket: socket,
            parts,
        };
        // SAFETY: `msg` points at the `msghdr` in the heap block `resources.parts` owns, which points
        // only at the `iovec` and `sockaddr_storage` in that block and (through the iovec) at the
        // `DGRAM_BUF` initialised bytes of `parts.buf`'s heap block; moving the Box or the Vec moves
        // neither block. `raw_fd` is the fd of the socket `resources` owns a share of, so it stays
        // open, and names this socket, until the op lets go of the resources. The op keeps them
        // alive until the RECVMSG's CQE arrives, also if the socket is dropped first, and nothing
        // else touches the parts meanwhile (they are only reachable through the op). A RECVMSG (not
        // multishot) produces exactly one CQE.
        let op = unsafe {
            Op::submit_on(&ring, resources, |_| {
                opcode::RecvMsg::new(types::Fd(raw_fd), msg).build()
            })
        };
        self.op = Some(op);
        true
    }

    /// Polls the RECVMSG in flight; when it completed, takes back its resources and holds what it
    /// brought (a datagram or an error) for the next receive.
    fn poll_op(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(op) = self.op.as_mut() else {
            return Poll::Ready(());
        };
        let Poll::Ready((result, resources)) = Pin::new(op).poll(cx) else {
            return Poll::Pending;
        };
        self.op = None;
        // `resources._socket` is dropped with `resources`: the socket's own `SharedSocket` is again
        // its only owner.
        let parts = resources.parts;
        let Ok(result) = result else {
            // The SQE never reached the kernel (nothing was received): readiness from now on.
            self.spare = Some(parts);
            self.ring = None;
            return Poll::Ready(());
        };
        match cqe_result(result) {
            Ok(len) => self.held = Some(Held::Datagram { len, parts }),
            Err(err) => {
                self.spare = Some(parts);
                match err.raw_os_error() {
                    // Nothing received: the caller's loop queues the next RECVMSG (a cancel by the
                    // kernel, not by us: we cancel only when the socket is dropped).
                    Some(libc::EINTR | libc::ECANCELED) => {}
                    // A kernel that returns EAGAIN instead of waiting, or refuses RECVMSG on this
                    // socket, would do so again: readiness receives from now on (which report any
                    // real error themselves).
                    Some(libc::EAGAIN | libc::EINVAL | libc::EOPNOTSUPP) => self.ring = None,
                    // An error for this receive (ECONNREFUSED after an ICMP port unreachable, ...).
                    _ => self.held = Some(Held::Error(err)),
                }
            }
        }
        Poll::Ready(())
    }
}

impl Drop for DatagramRecv {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        if let Some(op) = state.op.take() {
            // Cancel so the CQE comes at the next iteration: the parts and the op's owner of the
            // socket stay with the op until then, and the fd closes (freeing a UDP port) when it
            // lets go. No shutdown, unlike a stream's RECV: a datagram socket has no peer to tell
            // (see the module docs).
            if let Some(ring) = state.ring.as_ref().and_then(Weak::upgrade) {
                op.cancel_on(&ring);
            }
        }
    }
}
