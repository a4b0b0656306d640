//! The vhost-user-blk daemon's untrusted input: the front end's messages and the fds that come with
//! them. [`check_messages`] frames arbitrary bytes as messages, each sent with the fds its first byte
//! picks, and lets the daemon's own message handling (rust-vmm's `BackendReqHandler` over
//! [`BlkBackend`], taking a message only once [`framing::queued`](examples::vhost_user_blk::framing::queued) sees it whole, as the daemon does)
//! handle them until one is refused, as the daemon would before closing the connection. Then the
//! front end goes away and every ring must stop.
//!
//! Input: records of `[fd picks][length][length bytes]`. Bits of the fd picks attach, in order, a
//! 64 KiB memfd (guest memory), an eventfd, a second eventfd, and a Unix socket (neither).

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use aioctx::{EventNotifier, IoThread};
use examples::vhost_user_blk::framing::{queued, Queued};
use examples::vhost_user_blk::{BackendConfig, BlkBackend};
use examples::virtio_blk::Limits;
use vhost::vhost_user::BackendReqHandler;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Most messages taken from one input.
pub const MAX_MESSAGES: usize = 64;
/// The guest memory a front end may send: one memfd of this size.
pub const GUEST_MEM: u64 = 64 << 10;
/// The image behind the device.
pub const IMAGE_SIZE: u64 = 1 << 20;

struct Fixture {
    config: Arc<BackendConfig>,
    _iothread: IoThread,
    memfd: File,
    eventfds: [EventNotifier; 2],
    socket: (UnixStream, UnixStream),
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fn fixture() -> Fixture {
    let iothread = IoThread::spawn("fuzz-vhost").expect("an IoThread");
    let image = tempfile::tempfile().expect("a temp file");
    image.set_len(IMAGE_SIZE).expect("sizing the image");
    // SAFETY: memfd_create with a NUL-terminated name; the File below owns the new fd.
    let fd = unsafe { libc::memfd_create(c"fuzz-guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` is new and owned by nobody else.
    let memfd = unsafe { File::from_raw_fd(fd) };
    memfd.set_len(GUEST_MEM).expect("sizing guest memory");
    Fixture {
        config: Arc::new(BackendConfig {
            image,
            limits: Limits::for_capacity(IMAGE_SIZE),
            read_only: false,
            num_queues: 2,
            iothreads: vec![iothread.remote().clone()],
        }),
        _iothread: iothread,
        memfd,
        eventfds: [
            EventNotifier::new().expect("an eventfd"),
            EventNotifier::new().expect("an eventfd"),
        ],
        socket: UnixStream::pair().expect("a socket pair"),
    }
}

/// Splits `data` into records: (fd picks, message bytes).
pub fn records(data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && out.len() < MAX_MESSAGES {
        let (picks, len) = (rest[0], usize::from(rest[1]) * 2);
        let body = &rest[2..];
        let take = len.min(body.len());
        out.push((picks, &body[..take]));
        rest = &body[take..];
    }
    out
}

/// Encodes records as [`check_messages`] reads them (lengths are rounded up to an even count).
pub fn encode(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (picks, bytes) in records {
        let mut bytes = bytes.clone();
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        assert!(bytes.len() <= 510, "a record holds at most 510 bytes");
        out.push(*picks);
        out.push((bytes.len() / 2) as u8);
        out.extend_from_slice(&bytes);
    }
    out
}

/// Sends the records to a fresh backend and lets it handle them as the daemon does; returns how many
/// messages it accepted before refusing one (or running out).
pub fn check_messages(data: &[u8]) -> usize {
    FIXTURE.with(|f| {
        let mut f = f.borrow_mut();
        let f = f.get_or_insert_with(fixture);
        run(f, &records(data))
    })
}

fn run(f: &Fixture, records: &[(u8, &[u8])]) -> usize {
    let (front, back) = UnixStream::pair().expect("a socket pair");
    back.set_nonblocking(true).expect("non-blocking");
    for (picks, bytes) in records {
        let candidates: [RawFd; 4] = [
            f.memfd.as_raw_fd(),
            f.eventfds[0].as_raw_fd(),
            f.eventfds[1].as_raw_fd(),
            f.socket.0.as_raw_fd(),
        ];
        let fds: Vec<RawFd> = (0..4)
            .filter(|bit| picks & (1 << bit) != 0)
            .map(|bit| candidates[bit])
            .collect();
        if bytes.is_empty() {
            continue;
        }
        // The whole input fits in the socket buffer (64 records of at most 510 bytes).
        front
            .send_with_fds(&[*bytes], &fds)
            .expect("sending a message");
    }
    let backend = Arc::new(Mutex::new(BlkBackend::new(f.config.clone())));
    let mut handler = BackendReqHandler::from_stream(back, backend.clone());
    let mut accepted = 0;
    // Anything but a whole message ends it: the daemon would wait for the rest (and drop the front
    // end after a while), or see the front end gone.
    while queued(handler.as_raw_fd()).expect("looking at the socket") == Queued::Message {
        if handler.handle_request().is_err() {
            break;
        }
        accepted += 1;
    }
    drop(handler);
    drop(front);
    let mut backend = backend.lock().unwrap_or_else(|e| e.into_inner());
    backend.disconnect();
    assert_eq!(
        backend.running_queues(),
        0,
        "a ring still runs after the front end left"
    );
    accepted
}
