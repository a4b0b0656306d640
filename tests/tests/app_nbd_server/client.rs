//! A small blocking NBD client written from the protocol document, independent of the server's own
//! encoders (so a bug shared by both sides cannot hide), plus the test server harness.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use std::sync::Arc;

use examples::nbd::{Activity, Config, Listen, Server, ShutdownHandle};

use super::structured::{Answer, Sent};

pub const NBDMAGIC: u64 = 0x4e42444d41474943;
pub const IHAVEOPT: u64 = 0x49484156454F5054;
pub const OPT_REPLY_MAGIC: u64 = 0x3e889045565a9;
pub const REQUEST_MAGIC: u32 = 0x25609513;
pub const REPLY_MAGIC: u32 = 0x67446698;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const FLAG_FUA: u16 = 1;
pub const FLAG_NO_HOLE: u16 = 2;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const FLAG_REQ_ONE: u16 = 1 << 3;
pub const FLAG_FAST_ZERO: u16 = 1 << 4;
pub const FLAG_PAYLOAD_LEN: u16 = 1 << 5;

pub const EPERM: u32 = 1;
pub const EINVAL: u32 = 22;

/// How long a test client waits for a byte before the test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("aioctx-nbd-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which socket kind a test server listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Unix,
}

/// An in-process server on its own thread, exporting `image` in a temp dir; stopped on drop.
pub struct TestServer {
    pub dir: TempDir,
    pub image: PathBuf,
    pub uri: String,
    pub size: u64,
    pub activity: Arc<Activity>,
    kind: Kind,
    socket: PathBuf,
    tcp: Option<std::net::SocketAddr>,
    stop: ShutdownHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// Options of a test server.
pub struct Setup {
    pub kind: Kind,
    pub iothreads: usize,
    pub read_only: bool,
    pub direct: bool,
    /// The image's initial contents (its length is the export size).
    pub contents: Vec<u8>,
    /// Leave the all-zero 4 KiB blocks of `contents` unwritten: holes in the file.
    pub sparse: bool,
    pub drain_timeout: Duration,
    /// Require TLS with these credentials.
    pub tls: Option<examples::nbd::TlsConfig>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            kind: Kind::Unix,
            iothreads: 3,
            read_only: false,
            direct: false,
            contents: vec![0xee; 8 << 20],
            sparse: false,
            drain_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

impl TestServer {
    pub fn start(setup: Setup) -> TestServer {
        let dir = TempDir::new("srv");
        let image = dir.path("disk.img");
        write_image(&image, &setup.contents, setup.sparse);
        let socket = dir.path("nbd.sock");
        let listen = match setup.kind {
            Kind::Tcp => Listen::Tcp("127.0.0.1:0".parse().unwrap()),
            Kind::Unix => Listen::Unix(socket.clone()),
        };
        let server = Server::bind(Config {
            file: Some(image.clone()),
            listen,
            iothreads: setup.iothreads,
            read_only: setup.read_only,
            direct: setup.direct,
            drain_timeout: setup.drain_timeout,
            tls: setup.tls,
            ..Config::default()
        })
        .unwrap_or_else(|e| panic!("starting the NBD server: {e}"));
        let uri = server.uri().to_owned();
        let tcp = server.tcp_addr();
        let size = server.size();
        assert_eq!(size, setup.contents.len() as u64);
        let stop = server.shutdown_handle();
        let activity = server.activity();
        let thread = std::thread::spawn(move || server.serve());
        TestServer {
            dir,
            image,
            uri,
            size,
            activity,
            kind: setup.kind,
            socket,
            tcp,
            stop,
            thread: Some(thread),
        }
    }

    /// A raw connection (no handshake yet).
    pub fn connect(&self) -> Box<dyn Stream> {
        let stream: Box<dyn Stream> = match self.kind {
            Kind::Unix => {
                let s = UnixStream::connect(&self.socket).unwrap();
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                Box::new(s)
            }
            Kind::Tcp => {
                let s = TcpStream::connect(self.tcp.unwrap()).unwrap();
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                s.set_nodelay(true).unwrap();
                Box::new(s)
            }
        };
        stream
    }

    /// A connection in transmission after `NBD_OPT_GO`.
    pub fn client(&self) -> Client {
        let mut client = Client::new(self.connect());
        client.greeting(true);
        let (size, _flags) = client.go("disk").expect("GO accepted");
        assert_eq!(size, self.size);
        client
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Asks the server to stop and waits for `serve` to return (the temp dir stays until drop).
    pub fn stop(&mut self) -> io::Result<()> {
        self.stop_inner()
    }

    /// Waits for `serve` to return without asking it to stop.
    pub fn wait(&mut self) -> io::Result<()> {
        match self.thread.take() {
            Some(t) => t.join().expect("the server thread panicked"),
            None => Ok(()),
        }
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }

    fn stop_inner(&mut self) -> io::Result<()> {
        self.stop.shutdown();
        match self.thread.take() {
            Some(t) => t.join().expect("the server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Writes `contents` to `path`; with `sparse`, all-zero 4 KiB blocks are left as holes.
pub fn write_image(path: &Path, contents: &[u8], sparse: bool) {
    if !sparse {
        return std::fs::write(path, contents).unwrap();
    }
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path).unwrap();
    file.set_len(contents.len() as u64).unwrap();
    for (i, block) in contents.chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            file.write_all_at(block, i as u64 * 4096).unwrap();
        }
    }
}

/// Waits (bounded by [`IO_TIMEOUT`]) until the server has no connection and no request left.
pub fn wait_until_idle(server: &TestServer) {
    let give_up = std::time::Instant::now() + IO_TIMEOUT;
    while server.activity.connections() != 0 || server.activity.requests_in_flight() != 0 {
        assert!(
            std::time::Instant::now() < give_up,
            "still {} connections and {} requests after {IO_TIMEOUT:?}",
            server.activity.connections(),
            server.activity.requests_in_flight()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One reply to an option.
#[derive(Debug)]
pub struct OptReply {
    pub option: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

/// A simple reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub error: u32,
    pub cookie: u64,
}

/// The reply framing a test client negotiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Simple,
    Structured,
    Extended,
}

pub struct Client {
    pub s: Box<dyn Stream>,
    /// What the handshake negotiated (see `structured.rs`).
    pub mode: Mode,
    /// The id `SET_META_CONTEXT` gave `base:allocation`.
    pub context: Option<u32>,
    /// Replies whose chunks have started to arrive, by cookie.
    pub partial: HashMap<u64, Answer>,
}

impl Client {
    pub fn new(s: Box<dyn Stream>) -> Client {
        Client {
            s,
            mode: Mode::Simple,
            context: None,
            partial: HashMap::new(),
        }
    }

    pub fn u16(&mut self) -> io::Result<u16> {
        let mut b = [0; 2];
        self.s.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    pub fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0; 4];
        self.s.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    pub fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0; 8];
        self.s.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    /// Reads the greeting and sends the client flags (fixed newstyle, and NO_ZEROES if `no_zeroes`).
    pub fn greeting(&mut self, no_zeroes: bool) {
        assert_eq!(self.u64().unwrap(), NBDMAGIC);
        assert_eq!(self.u64().unwrap(), IHAVEOPT);
        let flags = self.u16().unwrap();
        assert_eq!(flags & 3, 3, "fixed newstyle and NO_ZEROES offered");
        let client_flags: u32 = 1 | if no_zeroes { 2 } else { 0 };
        self.s.write_all(&client_flags.to_be_bytes()).unwrap();
    }

    pub fn send_option(&mut self, option: u32, data: &[u8]) -> io::Result<()> {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b)
    }

    pub fn opt_reply(&mut self) -> io::Result<OptReply> {
        assert_eq!(self.u64()?, OPT_REPLY_MAGIC);
        let option = self.u32()?;
        let kind = self.u32()?;
        let len = self.u32()?;
        assert!(len < 1 << 20, "option reply of {len} bytes");
        let mut data = vec![0; len as usize];
        self.s.read_exact(&mut data)?;
        Ok(OptReply { option, kind, data })
    }

    /// INFO/GO data asking for `info_types`.
    pub fn info_data(name: &str, info_types: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(info_types.len() as u16).to_be_bytes());
        for t in info_types {
            d.extend_from_slice(&t.to_be_bytes());
        }
        d
    }

    /// Sends GO (asking for the block sizes) and collects the replies up to the ACK: Ok((size, flags)),
    /// or Err(the error reply type).
    pub fn go(&mut self, name: &str) -> Result<(u64, u16), u32> {
        self.info_or_go(OPT_GO, name)
            .map(|(size, flags, _)| (size, flags))
    }

    /// INFO or GO; also returns the block sizes if the server sent them.
    pub fn info_or_go(
        &mut self,
        option: u32,
        name: &str,
    ) -> Result<(u64, u16, Option<[u32; 3]>), u32> {
        self.send_option(option, &Self::info_data(name, &[3]))
            .unwrap();
        let mut export = None;
        let mut sizes = None;
        loop {
            let r = self.opt_reply().unwrap();
            assert_eq!(r.option, option);
            match r.kind {
                REP_ACK => break,
                REP_INFO => {
                    let kind = u16::from_be_bytes([r.data[0], r.data[1]]);
                    match kind {
                        0 => {
                            assert_eq!(r.data.len(), 12);
                            let size = u64::from_be_bytes(r.data[2..10].try_into().unwrap());
                            let flags = u16::from_be_bytes([r.data[10], r.data[11]]);
                            export = Some((size, flags));
                        }
                        3 => {
                            assert_eq!(r.data.len(), 14);
                            let w =
                                |i: usize| u32::from_be_bytes(r.data[i..i + 4].try_into().unwrap());
                            sizes = Some([w(2), w(6), w(10)]);
                        }
                        other => panic!("unexpected info type {other}"),
                    }
                }
                err if err >= 1 << 31 => return Err(err),
                other => panic!("unexpected option reply {other}"),
            }
        }
        let (size, flags) = export.expect("NBD_INFO_EXPORT before the ACK");
        Ok((size, flags, sizes))
    }

    /// The bytes of one request.
    pub fn request_bytes(command: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&command.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b
    }

    /// Sends a request header in the negotiated framing (see `header`).
    pub fn send(&mut self, command: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
        let b = self.header(command, flags, cookie, offset, len.into());
        self.s.write_all(&b).unwrap();
    }

    pub fn send_write(&mut self, flags: u16, cookie: u64, offset: u64, data: &[u8]) {
        let mut b = self.header(CMD_WRITE, flags, cookie, offset, data.len() as u64);
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    pub fn reply(&mut self) -> io::Result<Reply> {
        let magic = self.u32()?;
        assert_eq!(magic, REPLY_MAGIC, "simple reply magic");
        let error = self.u32()?;
        let cookie = self.u64()?;
        Ok(Reply { error, cookie })
    }

    pub fn read_data(&mut self, len: usize) -> Vec<u8> {
        let mut data = vec![0; len];
        self.s.read_exact(&mut data).unwrap();
        data
    }

    /// READ, waiting for the reply: Ok(data) or Err(errno).
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.read_flags(0, offset, len)
    }

    /// READ with command flags, waiting for the reply: Ok(data) or Err(errno).
    pub fn read_flags(&mut self, flags: u16, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        if self.mode != Mode::Simple {
            let answer = self.call(Sent::new(CMD_READ, flags, offset, len.into()), &[]);
            return answer.data.ok_or(answer.error);
        }
        self.send(CMD_READ, flags, 7, offset, len);
        let r = self.reply().unwrap();
        assert_eq!(r.cookie, 7);
        if r.error != 0 {
            return Err(r.error);
        }
        Ok(self.read_data(len as usize))
    }

    /// A command without payload or data, waiting for the reply: the errno.
    pub fn simple(&mut self, command: u16, flags: u16, offset: u64, len: u32) -> u32 {
        if self.mode != Mode::Simple {
            return self
                .call(Sent::new(command, flags, offset, len.into()), &[])
                .error;
        }
        self.send(command, flags, 9, offset, len);
        let r = self.reply().unwrap();
        assert_eq!(r.cookie, 9);
        r.error
    }

    /// WRITE, waiting for the reply: the errno.
    pub fn write(&mut self, flags: u16, offset: u64, data: &[u8]) -> u32 {
        if self.mode != Mode::Simple {
            let write = Sent::new(CMD_WRITE, flags, offset, data.len() as u64);
            return self.call(write, data).error;
        }
        self.send_write(flags, 8, offset, data);
        let r = self.reply().unwrap();
        assert_eq!(r.cookie, 8);
        r.error
    }

    /// Whether the server closed the connection (EOF or reset), reading at most one reply's worth.
    pub fn closed_by_server(&mut self) -> bool {
        let mut b = [0; 16];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                assert!(
                    !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ),
                    "the server neither answered nor closed within {IO_TIMEOUT:?}"
                );
                true
            }
        }
    }
}

/// A write + read-back round trip on `client` at `offset` (proves the server still serves it).
pub fn round_trip(client: &mut Client, offset: u64, seed: u8) {
    let data: Vec<u8> = (0..4096u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    assert_eq!(client.write(0, offset, &data), 0);
    assert_eq!(client.read(offset, 4096).unwrap(), data);
}
