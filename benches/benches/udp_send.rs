//! Should a UDP send on an io_uring context be an `IORING_OP_SENDMSG` on the loop's ring, or a
//! readiness `sendto(2)`? `cargo bench -p benches --bench udp_send`.
//!
//! Each iteration sends 32 datagrams of 64 bytes from one socket to a loopback socket nobody reads
//! (the kernel queues or drops each one, so a send never waits and only the send path is timed),
//! inside one `block_on` on an io_uring context:
//!
//! - `readiness_send_to`: `aioctx::net::UdpSocket::send_to`, awaited in turn (what aioctx does);
//! - `std_send_to`: a blocking `std` socket's `send_to` in the same `block_on`: the syscall alone;
//! - `sendmsg_awaited`: a SENDMSG per datagram (payload copied into a buffer the operation owns,
//!   with its `msghdr`, `iovec` and address), each awaited before the next is queued: a task that
//!   sends, then sends again;
//! - `sendmsg_batched`: the 32 SENDMSGs queued together and then awaited: 32 tasks sending in the
//!   same loop iteration, the best case for the ring.
//!
//! Measured on the 2-core VM this was written on (Linux 6.18, shared with other work; three runs,
//! criterion's median per 32 datagrams, then per datagram):
//!
//! | case | per 32 | per datagram |
//! |---|---|---|
//! | `readiness_send_to` | 184-191 us | 5.8-6.0 us |
//! | `std_send_to` | 185-191 us | 5.8-6.0 us |
//! | `sendmsg_awaited` | 233-260 us | 7.3-8.1 us |
//! | `sendmsg_batched` | 170-192 us | 5.3-6.0 us |
//!
//! aioctx's readiness send costs what the syscall costs (the kernel's send path dominates). A
//! SENDMSG awaited in turn is 25-40% slower (a loop iteration per datagram, plus the copy); 32
//! SENDMSGs sharing one enter are within the noise of `sendto` (-8% to +3%). So aioctx's UDP sends
//! are readiness `sendto`s (see `runtime/src/net/recv_msg.rs`).

use std::cell::Cell;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use aioctx::io_uring::{opcode, types};
use aioctx::{AioContext, Backend};
use criterion::{criterion_group, criterion_main, Criterion};
use futures::channel::oneshot;

const BATCH: usize = 32;
const PAYLOAD: [u8; 64] = [0x5a; 64];

/// What a SENDMSG points to, in one heap block that moves into the completion callback.
struct SendParts {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_in,
    payload: Vec<u8>,
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Queues a SENDMSG of a copy of `payload` to `to` on `ctx`'s ring; the receiver gets the CQE result.
fn queue_sendmsg(
    ctx: &AioContext,
    fd: RawFd,
    payload: &[u8],
    to: SocketAddrV4,
) -> oneshot::Receiver<i32> {
    let mut parts = Box::new(SendParts {
        // SAFETY: a C struct of integers and pointers: all zeroes is valid.
        hdr: unsafe { std::mem::zeroed() },
        iov: libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        },
        addr: sockaddr_in(to),
        payload: payload.to_vec(),
    });
    parts.iov = libc::iovec {
        iov_base: parts.payload.as_mut_ptr().cast(),
        iov_len: parts.payload.len(),
    };
    parts.hdr.msg_name = std::ptr::addr_of_mut!(parts.addr).cast();
    parts.hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    parts.hdr.msg_iov = std::ptr::addr_of_mut!(parts.iov);
    parts.hdr.msg_iovlen = 1;
    let sqe = opcode::SendMsg::new(types::Fd(fd), std::ptr::addr_of!(parts.hdr)).build();
    let (tx, rx) = oneshot::channel();
    // SAFETY: the SQE points into `parts`' heap block and its payload's, which the callback owns
    // until the CQE; `fd` stays open for the whole benchmark. A SENDMSG produces one CQE.
    unsafe {
        ctx.add_sqe(sqe, move |c| {
            drop(parts);
            let _ = tx.send(c.result);
        })
    }
    .expect("io_uring accepts the SQE");
    rx
}

fn udp_send(c: &mut Criterion) {
    let ctx = AioContext::builder()
        .backend(Backend::IoUring)
        .build()
        .expect("an io_uring context");
    let _guard = ctx.enter();
    // Nobody reads it: once its buffer is full the kernel drops what arrives, and sends still succeed.
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let SocketAddr::V4(to) = sink.local_addr().unwrap() else {
        unreachable!("bound to an IPv4 address")
    };
    let socket = aioctx::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let fd = socket.as_raw_fd();
    let sent = Rc::new(Cell::new(0usize));

    let mut group = c.benchmark_group("udp_send_32x64B");
    group.sample_size(30);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("readiness_send_to", |b| {
        b.iter(|| {
            ctx.block_on(async {
                for _ in 0..BATCH {
                    sent.set(sent.get() + socket.send_to(&PAYLOAD, to).await.unwrap());
                }
            })
        })
    });
    let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    group.bench_function("std_send_to", |b| {
        b.iter(|| {
            ctx.block_on(async {
                for _ in 0..BATCH {
                    sent.set(sent.get() + std_socket.send_to(&PAYLOAD, to).unwrap());
                }
            })
        })
    });
    group.bench_function("sendmsg_awaited", |b| {
        b.iter(|| {
            ctx.block_on(async {
                for _ in 0..BATCH {
                    let res = queue_sendmsg(&ctx, fd, &PAYLOAD, to).await.unwrap();
                    assert_eq!(res, PAYLOAD.len() as i32);
                }
            })
        })
    });
    group.bench_function("sendmsg_batched", |b| {
        b.iter(|| {
            ctx.block_on(async {
                let pending: Vec<_> = (0..BATCH)
                    .map(|_| queue_sendmsg(&ctx, fd, &PAYLOAD, to))
                    .collect();
                for res in futures::future::join_all(pending).await {
                    assert_eq!(res.unwrap(), PAYLOAD.len() as i32);
                }
            })
        })
    });
    group.finish();
    assert!(sent.get() > 0);
}

criterion_group!(benches, udp_send);
criterion_main!(benches);
