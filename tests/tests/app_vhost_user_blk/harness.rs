//! The rig the vhost-user-blk tests share: the daemon on its own thread (its main loop), guest memory
//! in a memfd shared with it as a VMM shares it, a front end made with rust-vmm's `vhost` crate (the
//! frontend side of the same protocol library), and a raw front end for messages that library would
//! refuse to send.
#![allow(dead_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aioctx::EventNotifier;
use examples::vhost_user_blk::{Daemon, Options};
use examples::virtio_blk::{GuestLayout, GuestMemory, Machine};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap, MmapRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

#[path = "../app_device_model/rig.rs"]
pub mod rig;

/// The image size every test uses.
pub const IMAGE_SIZE: u64 = 8 << 20;
/// Guest memory: room for four queue layouts of 32 slots of 4 KiB.
pub const GUEST_MEM: u64 = 8 << 20;
/// Where each queue's layout starts in guest memory.
pub const QUEUE_STRIDE: u64 = 2 << 20;
/// The guest-physical address of the guest's memory (nonzero, so a translation bug shows).
pub const GPA_BASE: u64 = 1 << 32;

/// The daemon, serving on its own thread until stopped.
pub struct DaemonRig {
    pub socket: PathBuf,
    pub image: PathBuf,
    stop: Option<futures::channel::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl DaemonRig {
    /// Starts a daemon on a fresh image with `options` adjusted by `tweak`; returns once it listens.
    pub fn start(tweak: impl FnOnce(&mut Options)) -> DaemonRig {
        Self::start_sized(IMAGE_SIZE, tweak)
    }

    /// [`start`](Self::start) on an image of `bytes` bytes.
    pub fn start_sized(bytes: u64, tweak: impl FnOnce(&mut Options)) -> DaemonRig {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        let socket = dir.path().join("vhost.sock");
        let mut options = Options::new(&image, &socket);
        tweak(&mut options);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = futures::channel::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let daemon = match Daemon::bind(&options) {
                Ok(daemon) => daemon,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            let ctx = aioctx::AioContext::builder()
                .backend(options.backend)
                .build()?;
            let _ = ready_tx.send(Ok(()));
            ctx.block_on(daemon.serve_until(async {
                let _ = stop_rx.await;
            }))?;
            daemon.shutdown()
        });
        match ready_rx.recv_timeout(tests::BOUND) {
            Ok(Ok(())) => {}
            other => panic!("the daemon did not start: {other:?}"),
        }
        DaemonRig {
            socket,
            image,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Stops the daemon gracefully and reports how its thread ended.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop.take().unwrap().send(()).unwrap();
        self.thread.take().unwrap().join().unwrap()
    }

    /// The image's bytes, read with std.
    pub fn image_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        use std::io::{Seek, SeekFrom};
        let mut f = File::open(&self.image).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut out = vec![0; len];
        f.read_exact(&mut out).unwrap();
        out
    }
}

impl Drop for DaemonRig {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Guest RAM in a memfd, mapped here as a VMM maps it (shared), sent to the daemon by fd.
pub struct GuestRam {
    pub file: File,
    pub mem: Arc<GuestMemory>,
    /// Where this process has the memory mapped (the "user address" vhost-user speaks in).
    pub host_addr: u64,
}

impl GuestRam {
    pub fn new(size: u64) -> GuestRam {
        // SAFETY: memfd_create with a NUL-terminated name; the new fd is owned by the File below.
        let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).unwrap();
        let region = MmapRegion::<()>::from_file(
            FileOffset::new(file.try_clone().unwrap(), 0),
            size as usize,
        )
        .unwrap();
        let host_addr = region.as_ptr() as u64;
        let region = GuestRegionMmap::new(region, GuestAddress(GPA_BASE)).unwrap();
        let mem = GuestMemory::from_regions(vec![region]).unwrap();
        GuestRam {
            file,
            mem: Arc::new(mem),
            host_addr,
        }
    }

    /// The front-end address of guest address `gpa`.
    pub fn user_addr(&self, gpa: GuestAddress) -> u64 {
        self.host_addr + gpa.0 - GPA_BASE
    }

    /// The region as the vhost crate's frontend sends it.
    pub fn region(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: GPA_BASE,
            memory_size: self.mem_size(),
            userspace_addr: self.host_addr,
            mmap_offset: 0,
            mmap_handle: self.file.as_raw_fd(),
        }
    }

    fn mem_size(&self) -> u64 {
        self.file.metadata().unwrap().len()
    }
}

/// The virtio features a Linux guest acks: all offered (RO only when offered).
pub fn negotiate(frontend: &mut Frontend) -> u64 {
    let features = frontend.get_features().unwrap();
    frontend.set_features(features).unwrap();
    let protocol = frontend.get_protocol_features().unwrap();
    assert!(protocol.contains(
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    ));
    frontend.set_protocol_features(protocol).unwrap();
    frontend.set_owner().unwrap();
    assert_ne!(
        features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
        0
    );
    features
}

/// A front end: the vhost crate's `Frontend` with guest memory and the queues it set up.
pub struct FrontEnd {
    pub frontend: Frontend,
    pub ram: GuestRam,
    pub features: u64,
    /// Per queue: the guest's kick and call eventfds (front-end side).
    pub eventfds: Vec<Option<(EventFd, EventFd)>>,
}

impl FrontEnd {
    /// Connects, negotiates everything offered, and sends the memory table.
    pub fn connect(socket: &Path, queues: u64) -> FrontEnd {
        let mut frontend = Frontend::connect(socket, queues).unwrap();
        let features = negotiate(&mut frontend);
        let ram = GuestRam::new(GUEST_MEM);
        frontend.set_mem_table(&[ram.region()]).unwrap();
        FrontEnd {
            frontend,
            ram,
            features,
            eventfds: (0..queues).map(|_| None).collect(),
        }
    }

    /// Queue `i`'s layout: 32 slots of 4 KiB at `i * QUEUE_STRIDE` of guest memory.
    pub fn layout(i: usize) -> GuestLayout {
        let layout = GuestLayout::new(32, rig::BS)
            .unwrap()
            .at(GPA_BASE + i as u64 * QUEUE_STRIDE)
            .unwrap();
        assert!(layout.mem_size <= GPA_BASE + GUEST_MEM);
        layout
    }

    /// Sets up and enables queue `i` starting at avail index `base`; returns the guest side of it as
    /// a `Machine` (its memory is the memfd, its kick and irq the eventfds sent to the daemon).
    pub fn start_queue(&mut self, i: usize, base: u16) -> Machine {
        let layout = Self::layout(i);
        let q = layout.queue;
        self.frontend.set_vring_num(i, q.size).unwrap();
        self.frontend.set_vring_base(i, base).unwrap();
        let addrs = VringConfigData {
            queue_max_size: q.size,
            queue_size: q.size,
            flags: 0,
            desc_table_addr: self.ram.user_addr(q.desc_table),
            used_ring_addr: self.ram.user_addr(q.used_ring),
            avail_ring_addr: self.ram.user_addr(q.avail_ring),
            log_addr: None,
        };
        self.frontend.set_vring_addr(i, &addrs).unwrap();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        self.frontend.set_vring_call(i, &call).unwrap();
        self.frontend.set_vring_kick(i, &kick).unwrap();
        self.frontend.set_vring_enable(i, true).unwrap();
        let machine = Machine {
            mem: self.ram.mem.clone(),
            layout,
            kick: notifier(&kick),
            irq: notifier(&call),
        };
        self.eventfds[i] = Some((kick, call));
        machine
    }
}

/// An `EventNotifier` on the same eventfd as `fd`.
pub fn notifier(fd: &EventFd) -> EventNotifier {
    let dup = fd.try_clone().unwrap();
    // SAFETY: `into_raw_fd` hands over ownership of the duplicated descriptor.
    let owned = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(dup)) };
    EventNotifier::from_eventfd(owned).unwrap()
}

/// vhost-user message codes the raw front end sends.
pub mod code {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_CONFIG: u32 = 24;
}

const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;

/// What the daemon did with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A reply with this u64 payload (REPLY_ACK: 0 accepted, nonzero refused).
    U64(u64),
    /// A reply with another payload.
    Bytes(Vec<u8>),
    /// The daemon closed the connection.
    Closed,
}

/// A front end that writes messages by hand, for what a well-behaved library would not send.
pub struct RawFrontEnd {
    pub sock: UnixStream,
}

impl RawFrontEnd {
    pub fn connect(socket: &Path) -> RawFrontEnd {
        let sock = UnixStream::connect(socket).unwrap();
        sock.set_read_timeout(Some(tests::BOUND)).unwrap();
        RawFrontEnd { sock }
    }

    /// Sends a message: header (code, flags, `body.len()`) and body, with `fds` attached.
    pub fn send(&mut self, code: u32, need_reply: bool, body: &[u8], fds: &[RawFd]) {
        let flags = VERSION | if need_reply { NEED_REPLY } else { 0 };
        self.send_header(code, flags, body.len() as u32, body, fds);
    }

    /// Sends a header claiming `size` body bytes, followed by `body` (which may be shorter or longer).
    pub fn send_header(&mut self, code: u32, flags: u32, size: u32, body: &[u8], fds: &[RawFd]) {
        let mut msg = Vec::with_capacity(12 + body.len());
        msg.extend_from_slice(&code.to_le_bytes());
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&size.to_le_bytes());
        msg.extend_from_slice(body);
        let sent = self.sock.send_with_fds(&[&msg[..]], fds).unwrap();
        assert_eq!(sent, msg.len());
    }

    /// Reads one reply, or sees the connection closed (a reset counts as closed).
    pub fn answer(&mut self) -> Answer {
        let mut hdr = [0u8; 12];
        match self.sock.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ) =>
            {
                return Answer::Closed
            }
            Err(e) => panic!("reading a reply: {e}"),
        }
        let flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
        assert_ne!(flags & REPLY, 0, "a reply carries the reply flag");
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        let mut body = vec![0; size];
        self.sock.read_exact(&mut body).unwrap();
        if size == 8 {
            Answer::U64(u64::from_le_bytes(body.try_into().unwrap()))
        } else {
            Answer::Bytes(body)
        }
    }

    /// The daemon closes the connection (after any replies still queued).
    pub fn assert_closed(&mut self) {
        loop {
            match self.answer() {
                Answer::Closed => return,
                Answer::U64(v) => assert_ne!(v, 0, "a refusal before the close"),
                Answer::Bytes(_) => {}
            }
        }
    }

    /// A u64 request with REPLY_ACK asked for; returns the answer.
    pub fn u64_msg(&mut self, code: u32, value: u64) -> Answer {
        self.send(code, true, &value.to_le_bytes(), &[]);
        self.answer()
    }

    /// The negotiation a front end starts with: every feature offered, REPLY_ACK on.
    pub fn negotiate(&mut self) {
        self.send(code::GET_FEATURES, false, &[], &[]);
        let Answer::U64(features) = self.answer() else {
            panic!("GET_FEATURES got no u64")
        };
        self.send(code::SET_FEATURES, false, &features.to_le_bytes(), &[]);
        self.send(code::GET_PROTOCOL_FEATURES, false, &[], &[]);
        let Answer::U64(protocol) = self.answer() else {
            panic!("GET_PROTOCOL_FEATURES got no u64")
        };
        self.send(
            code::SET_PROTOCOL_FEATURES,
            false,
            &protocol.to_le_bytes(),
            &[],
        );
        self.send(code::SET_OWNER, true, &[], &[]);
        assert_eq!(self.answer(), Answer::U64(0), "SET_OWNER acked");
    }
}

/// A SET_MEM_TABLE body: (guest address, size, user address, mmap offset) per region.
pub fn mem_table(regions: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(regions.len() as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    for &(gpa, size, user, offset) in regions {
        for v in [gpa, size, user, offset] {
            body.extend_from_slice(&v.to_le_bytes());
        }
    }
    body
}

/// A vring-state body (SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE).
pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
    let mut body = index.to_le_bytes().to_vec();
    body.extend_from_slice(&num.to_le_bytes());
    body
}

/// A SET_VRING_ADDR body.
pub fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    let mut body = index.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [desc, used, avail, 0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body
}

/// Waits up to `ms` for `sock` to have room to write (poll, not a sleep: it returns as soon as there is).
pub fn wait_writable(sock: &UnixStream, ms: i32) {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll reads and writes one live pollfd.
    let ret = unsafe { libc::poll(&mut pfd, 1, ms) };
    assert!(ret >= 0, "poll: {}", io::Error::last_os_error());
}

/// Writes the whole of `data` to `w` (for the truncated-message case).
pub fn write_raw(w: &mut UnixStream, data: &[u8]) {
    w.write_all(data).unwrap();
}
