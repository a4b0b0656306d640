//! Waiting for a whole front-end message before the `vhost` crate reads it.
//!
//! The crate reads and writes a connection as if it were blocking: on a non-blocking socket it
//! retries `EAGAIN` in a loop, so a read with no message queued, a message that arrives in pieces, or
//! a reply to a front end that stopped reading would spin the daemon's main thread forever (and with
//! it the signal handling and the accept loop). So the daemon hands the connection to the crate only
//! when a whole message (header and body) is queued and the socket has room for a reply; it waits for
//! both on its context, and closes a front end that leaves a message half-sent, or its replies unread,
//! for [`STALL_LIMIT`].

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use aioctx::io::Async;

/// How long a front end may leave a message half-sent or its replies unread before it is dropped.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);

/// A vhost-user message header: request, flags, body size (little-endian `u32`s).
pub const HEADER_LEN: usize = 12;

/// The largest body the `vhost` crate accepts; a header claiming more is a whole (bad) message the
/// crate refuses as soon as it reads the header.
pub const MAX_BODY: usize = vhost::vhost_user::message::MAX_MSG_SIZE;

/// What is queued on the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    /// At least one whole message.
    Message,
    /// Nothing.
    Nothing,
    /// Part of a message.
    Partial,
    /// The front end closed the connection (nothing left to read).
    Closed,
}

fn bytes_queued(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at a live c_int.
    let ret = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut libc::c_int) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

fn peek(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which is live and writable.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Looks at what `fd` (a Unix stream socket) holds, without consuming anything.
pub fn queued(fd: RawFd) -> io::Result<Queued> {
    // FIONREAD counts every byte queued, across the kernel's buffers (a peek stops at the buffer
    // that carries fds).
    let available = bytes_queued(fd)?;
    if available == 0 {
        return match peek(fd, &mut [0u8; 1]) {
            Ok(0) => Ok(Queued::Closed),
            Ok(_) => Ok(Queued::Partial),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Queued::Nothing),
            Err(e) => Err(e),
        };
    }
    if available < HEADER_LEN {
        return Ok(Queued::Partial);
    }
    let mut header = [0u8; HEADER_LEN];
    if peek(fd, &mut header)? < HEADER_LEN {
        return Ok(Queued::Partial);
    }
    let body = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if body > MAX_BODY || available >= HEADER_LEN + body {
        Ok(Queued::Message)
    } else {
        Ok(Queued::Partial)
    }
}

/// Whether the socket has room for a reply (POLLOUT: a quarter of its send buffer is free, far more
/// than any vhost-user reply).
fn room_for_reply(fd: RawFd) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll reads and writes one pollfd, which is live; a zero timeout never blocks.
    let ret = unsafe { libc::poll(&mut pfd, 1, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pfd.revents & libc::POLLOUT != 0)
}

fn stalled(what: &str, limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the front end {what} for {limit:?}"),
    )
}

/// Sleeps until the rest of a message has come (or the connection closed). The socket stays
/// readable while part of a message sits in it, so readiness cannot say when: look every ms.
async fn rest_of_message(fd: RawFd) -> io::Result<()> {
    loop {
        aioctx::time::sleep(Duration::from_millis(1)).await;
        if queued(fd)? != Queued::Partial {
            return Ok(());
        }
    }
}

/// Waits until a whole message is queued on `conn` and a reply would fit: `Ok(true)`; `Ok(false)`
/// once the front end closed the connection. Fails with `TimedOut` for a front end that leaves a
/// message half-sent, or its replies unread, for `stall_limit` ([`STALL_LIMIT`] in the daemon).
pub async fn next_message<T: AsRawFd>(conn: &Async<T>, stall_limit: Duration) -> io::Result<bool> {
    let fd = conn.as_raw_fd();
    loop {
        match queued(fd)? {
            Queued::Closed => return Ok(false),
            Queued::Nothing => conn.readable().await?,
            Queued::Partial => aioctx::time::timeout(stall_limit, rest_of_message(fd))
                .await
                .map_err(|_| stalled("left a message half-sent", stall_limit))??,
            Queued::Message => {
                if room_for_reply(fd)? {
                    return Ok(true);
                }
                aioctx::time::timeout(stall_limit, conn.writable())
                    .await
                    .map_err(|_| stalled("has not read its replies", stall_limit))??;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn whole_messages_are_told_from_pieces() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        assert_eq!(queued(fd).unwrap(), Queued::Nothing);
        let mut msg = 3u32.to_le_bytes().to_vec();
        msg.extend_from_slice(&1u32.to_le_bytes());
        msg.extend_from_slice(&8u32.to_le_bytes());
        a.write_all(&msg[..5]).unwrap();
        assert_eq!(queued(fd).unwrap(), Queued::Partial, "part of a header");
        a.write_all(&msg[5..]).unwrap();
        assert_eq!(
            queued(fd).unwrap(),
            Queued::Partial,
            "a header without its body"
        );
        a.write_all(&[0; 4]).unwrap();
        assert_eq!(queued(fd).unwrap(), Queued::Partial, "half a body");
        a.write_all(&[0; 4]).unwrap();
        assert_eq!(queued(fd).unwrap(), Queued::Message);
        drop(a);
        assert_eq!(
            queued(fd).unwrap(),
            Queued::Message,
            "still queued after the close"
        );
        let mut sink = vec![0; 20];
        std::io::Read::read_exact(&mut &b, &mut sink).unwrap();
        assert_eq!(queued(fd).unwrap(), Queued::Closed);
    }

    #[test]
    fn a_header_claiming_an_oversized_body_is_a_whole_message() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut msg = 3u32.to_le_bytes().to_vec();
        msg.extend_from_slice(&1u32.to_le_bytes());
        msg.extend_from_slice(&(1u32 << 20).to_le_bytes());
        a.write_all(&msg).unwrap();
        assert_eq!(queued(b.as_raw_fd()).unwrap(), Queued::Message);
    }

    #[test]
    fn a_front_end_that_stops_mid_message_is_dropped() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[1, 2, 3]).unwrap();
        let ctx = aioctx::AioContext::new().unwrap();
        let limit = Duration::from_millis(50);
        let err = ctx
            .block_on(async { next_message(&Async::new(b)?, limit).await })
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("half-sent"), "{err}");
    }

    #[test]
    fn a_front_end_that_does_not_read_its_replies_is_dropped() {
        let (mut a, b) = UnixStream::pair().unwrap();
        // Fill b's send buffer: the front end (a) never reads.
        b.set_nonblocking(true).unwrap();
        let chunk = [0u8; 65536];
        while std::io::Write::write(&mut &b, &chunk).is_ok() {}
        let mut msg = 3u32.to_le_bytes().to_vec();
        msg.extend_from_slice(&1u32.to_le_bytes());
        msg.extend_from_slice(&0u32.to_le_bytes());
        a.write_all(&msg).unwrap();
        let ctx = aioctx::AioContext::new().unwrap();
        let limit = Duration::from_millis(50);
        let err = ctx
            .block_on(async { next_message(&Async::new(b)?, limit).await })
            .unwrap_err();
        assert!(
            err.to_string().contains("has not read its replies"),
            "{err}"
        );
    }
}
