//! The test client beyond simple replies: it negotiates structured replies or extended headers and
//! `base:allocation`, sends compact or extended requests, and reads replies of any framing, checking
//! every rule of the protocol on the way (chunks decoded by `tests::fuzzing::nbd_chunks`, written from
//! the protocol document, not by the server's encoders).

use std::collections::HashMap;
use std::io::Write;

use tests::fuzzing::nbd_chunks::{self, ChunkHeader, Content};

use super::client::*;

pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_EXT_HEADER_REQD: u32 = (1 << 31) + 10;
pub const ENOTSUP: u32 = 95;
/// `base:allocation` flags of a hole: `NBD_STATE_HOLE | NBD_STATE_ZERO`.
pub const HOLE_ZERO: u64 = 3;

/// A request the client sent and awaits the answer to.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub command: u16,
    pub flags: u16,
    pub offset: u64,
    pub length: u64,
}

impl Sent {
    pub fn new(command: u16, flags: u16, offset: u64, length: u64) -> Sent {
        Sent {
            command,
            flags,
            offset,
            length,
        }
    }
}

/// Everything a reply said.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    /// 0, or the errno of a simple reply or of an error chunk.
    pub error: u32,
    /// The message of an error chunk.
    pub message: Option<String>,
    /// A successful READ's bytes (holes filled with zeroes).
    pub data: Option<Vec<u8>>,
    /// The content chunks of a structured READ: (offset, length, hole).
    pub content: Vec<(u64, u64, bool)>,
    /// BLOCK_STATUS extents: (length, flags).
    pub extents: Vec<(u64, u64)>,
    /// Status chunks received.
    pub status_chunks: usize,
}

/// `LIST_META_CONTEXT`/`SET_META_CONTEXT` data: name, then the queries.
pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

/// The 32 bytes of an extended request header.
pub fn extended_request_bytes(
    command: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    len: u64,
) -> Vec<u8> {
    let mut b = EXTENDED_REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&command.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

impl TestServer {
    /// A connection in transmission that negotiated `mode` and, if `meta`, `base:allocation`.
    pub fn client_in(&self, mode: Mode, meta: bool) -> Client {
        let mut client = Client::new(self.connect());
        client.greeting(true);
        client.negotiate(mode, meta);
        let (size, flags) = client.go("disk").expect("GO accepted");
        assert_eq!(size, self.size);
        assert_eq!(
            flags & (1 << 7) != 0,
            mode != Mode::Simple,
            "SEND_DF iff structured"
        );
        client
    }
}

impl Client {
    /// Negotiates `mode` (each option must be acknowledged) and, if `meta`, selects `base:allocation`.
    pub fn negotiate(&mut self, mode: Mode, meta: bool) {
        let option = match mode {
            Mode::Simple => None,
            Mode::Structured => Some(OPT_STRUCTURED_REPLY),
            Mode::Extended => Some(OPT_EXTENDED_HEADERS),
        };
        if let Some(option) = option {
            self.send_option(option, &[]).unwrap();
            let r = self.opt_reply().unwrap();
            assert_eq!((r.option, r.kind), (option, REP_ACK));
            self.mode = mode;
        }
        if meta {
            let data = meta_data("disk", &["base:allocation"]);
            self.send_option(OPT_SET_META_CONTEXT, &data).unwrap();
            let r = self.opt_reply().unwrap();
            assert_eq!(r.kind, REP_META_CONTEXT, "base:allocation selected");
            assert_eq!(&r.data[4..], b"base:allocation");
            self.context = Some(u32::from_be_bytes(r.data[..4].try_into().unwrap()));
            assert_eq!(self.opt_reply().unwrap().kind, REP_ACK);
        }
    }

    /// The header of a request in this client's framing: extended headers carry 64-bit lengths and
    /// flag a WRITE's payload with PAYLOAD_LEN, as real clients do.
    pub fn header(&self, command: u16, flags: u16, cookie: u64, offset: u64, len: u64) -> Vec<u8> {
        if self.mode != Mode::Extended {
            return Self::request_bytes(command, flags, cookie, offset, len as u32);
        }
        let flags = if command == CMD_WRITE {
            flags | FLAG_PAYLOAD_LEN
        } else {
            flags
        };
        extended_request_bytes(command, flags, cookie, offset, len)
    }

    /// Sends one request (and `payload`) and waits for its answer.
    pub fn call(&mut self, sent: Sent, payload: &[u8]) -> Answer {
        let mut bytes = self.header(sent.command, sent.flags, 77, sent.offset, sent.length);
        bytes.extend_from_slice(payload);
        self.s.write_all(&bytes).unwrap();
        let (cookie, answer) = self.answer(&HashMap::from([(77, sent)]));
        assert_eq!(cookie, 77);
        answer
    }

    /// Reads messages until one request of `sent` is fully answered: its cookie and answer. Checks
    /// the framing negotiated, the cookies, every chunk's layout and place, and the `DONE` rules.
    pub fn answer(&mut self, sent: &HashMap<u64, Sent>) -> (u64, Answer) {
        loop {
            let magic = self.u32().expect("a reply");
            if magic == REPLY_MAGIC {
                assert_ne!(
                    self.mode,
                    Mode::Extended,
                    "a simple reply with extended headers"
                );
                let (error, cookie) = (self.u32().unwrap(), self.u64().unwrap());
                let req = *sent.get(&cookie).expect("a reply to a request sent");
                let structured = self.mode == Mode::Structured;
                assert!(
                    !(structured && req.command == CMD_READ),
                    "simple reply to a READ"
                );
                assert!(
                    !self.partial.contains_key(&cookie),
                    "simple reply after chunks"
                );
                let mut answer = Answer {
                    error,
                    ..Answer::default()
                };
                if error == 0 && req.command == CMD_READ {
                    answer.data = Some(self.read_data(req.length as usize));
                }
                return (cookie, answer);
            }
            let extended = self.mode == Mode::Extended;
            let expected = if extended {
                EXTENDED_REPLY_MAGIC
            } else {
                STRUCTURED_REPLY_MAGIC
            };
            assert_eq!(magic, expected, "reply magic in {:?} mode", self.mode);
            let mut bytes = magic.to_be_bytes().to_vec();
            bytes.extend(self.read_data(nbd_chunks::header_len(extended) - 4));
            let header = nbd_chunks::parse_header(&bytes, extended).unwrap();
            assert!(
                header.length <= 64 << 20,
                "a chunk of {} bytes",
                header.length
            );
            bytes.extend(self.read_data(header.length as usize));
            let (header, content, _) = nbd_chunks::split_chunk(&bytes, extended)
                .unwrap_or_else(|e| panic!("chunk {header:?}: {e}"));
            let req = *sent.get(&header.cookie).expect("a chunk of a request sent");
            if let Some(answer) = self.take_chunk(&req, header, content) {
                return (header.cookie, answer);
            }
        }
    }

    /// Adds a chunk to its reply; returns the reply when the chunk is the last.
    fn take_chunk(&mut self, req: &Sent, header: ChunkHeader, content: Content) -> Option<Answer> {
        if let Some(offset) = header.offset {
            assert_eq!(offset, req.offset, "extended header's offset");
        }
        let end = req.offset + req.length;
        let answer = self.partial.entry(header.cookie).or_default();
        match content {
            Content::None => assert_eq!(header.flags & 1, 1, "NONE without DONE"),
            Content::Data(at, ref data) => {
                assert_eq!(req.command, CMD_READ, "data for {req:?}");
                assert!(
                    at >= req.offset && at + data.len() as u64 <= end,
                    "data outside"
                );
                answer.content.push((at, data.len() as u64, false));
                let buf = answer
                    .data
                    .get_or_insert_with(|| vec![0; req.length as usize]);
                let from = (at - req.offset) as usize;
                buf[from..from + data.len()].copy_from_slice(data);
            }
            Content::Hole(at, len) => {
                assert_eq!(req.command, CMD_READ, "a hole for {req:?}");
                assert!(
                    at >= req.offset && at + u64::from(len) <= end,
                    "hole outside"
                );
                answer.content.push((at, len.into(), true));
                answer
                    .data
                    .get_or_insert_with(|| vec![0; req.length as usize]);
            }
            Content::Status(id, ref extents) => {
                assert_eq!(req.command, CMD_BLOCK_STATUS, "status for {req:?}");
                let kind = if self.mode == Mode::Extended { 6 } else { 5 };
                assert_eq!(
                    header.kind, kind,
                    "status chunk type in {:?} mode",
                    self.mode
                );
                assert_eq!(Some(id), self.context, "the context id SET gave");
                assert!(extents.iter().all(|&(len, _)| len > 0), "an empty extent");
                answer.extents.extend_from_slice(extents);
                answer.status_chunks += 1;
            }
            Content::Error(errno, message, at) => {
                if let Some(at) = at {
                    assert!(
                        at >= req.offset && at < end.max(req.offset + 1),
                        "error offset"
                    );
                }
                answer.error = errno;
                answer.message = Some(message);
            }
        }
        if header.flags & 1 == 0 {
            return None;
        }
        let mut answer = self.partial.remove(&header.cookie).unwrap();
        check_complete(req, &mut answer);
        Some(answer)
    }
}

/// The rules for a whole structured reply: a successful READ's content chunks cover the request
/// exactly, without overlap (at most one chunk with DF); a successful BLOCK_STATUS has one status chunk
/// of at least one extent, exactly one with REQ_ONE, none past the request (this server's choice).
fn check_complete(req: &Sent, answer: &mut Answer) {
    if answer.error != 0 {
        answer.data = None;
        return;
    }
    match req.command {
        CMD_READ => {
            answer.content.sort_unstable();
            let mut pos = req.offset;
            for &(at, len, _) in &answer.content {
                assert_eq!(
                    at, pos,
                    "content chunks overlap or leave a gap: {:?}",
                    answer.content
                );
                pos += len;
            }
            assert_eq!(pos, req.offset + req.length, "READ not covered");
            if req.flags & CMD_FLAG_DF != 0 {
                assert!(
                    answer.content.len() <= 1,
                    "DF: {} chunks",
                    answer.content.len()
                );
                assert!(answer.content.iter().all(|c| !c.2), "DF: a hole chunk");
            }
            answer.data.get_or_insert_with(Vec::new);
        }
        CMD_BLOCK_STATUS => {
            assert_eq!(answer.status_chunks, 1, "one status chunk per context");
            assert!(!answer.extents.is_empty(), "no extent");
            let total: u64 = answer.extents.iter().map(|e| e.0).sum();
            assert!(total <= req.length, "extents past the request");
            if req.flags & FLAG_REQ_ONE != 0 {
                assert_eq!(answer.extents.len(), 1, "REQ_ONE");
            }
            for &(_, flags) in &answer.extents {
                assert!(
                    flags == 0 || flags == HOLE_ZERO,
                    "base:allocation flags {flags}"
                );
            }
        }
        _ => assert!(answer.content.is_empty() && answer.status_chunks == 0),
    }
}
