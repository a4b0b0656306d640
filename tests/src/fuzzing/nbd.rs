//! The NBD server's handshake and request parsers on arbitrary bytes.
//!
//! [`check_handshake`] replays a client byte stream into the server's real handshake and compares every
//! byte the server sends with a model written here from the protocol document, option by option,
//! including what structured replies, extended headers and metadata contexts change.

use std::io;

use examples::nbd::proto::{
    self, cmd, errno, opt, rep, ExportLimits, Negotiated, ProtoError, ReplyMode, Request,
    EXTENDED_REQUEST_LEN, EXTENDED_REQUEST_MAGIC, IHAVEOPT, MAX_OPTION_DATA, MAX_PAYLOAD,
    OPTION_HEADER_LEN, OPTION_REPLY_MAGIC, REQUEST_LEN, REQUEST_MAGIC,
};
use examples::nbd::replay::HandshakeReplay;
use examples::nbd::{HandshakeOutcome, MAX_OPTIONS};

use super::{be32, be64};

/// The name of the export the handshake replays run against.
pub const EXPORT_NAME: &str = "disk";
/// Its size.
pub const EXPORT_SIZE: u64 = 1 << 30;

/// A replay target for [`EXPORT_NAME`]: writable, not `O_DIRECT`.
pub fn replay_target() -> HandshakeReplay {
    HandshakeReplay::new(EXPORT_NAME, EXPORT_SIZE, false, false)
        .unwrap_or_else(|e| panic!("creating the handshake replay: {e}"))
}

/// Runs the client-flags, option-header and `INFO`/`GO` parsers on `data` and checks that whatever
/// they accept says exactly what the bytes say, and that every refusal has the right reason.
pub fn check_option_parsers(data: &[u8]) {
    match proto::parse_client_flags(data) {
        Ok(flags) => {
            let word = be32(data, 0);
            assert_eq!(word & !3, 0, "unknown client flags {word:#x} accepted");
            assert_eq!(
                flags.fixed_newstyle,
                word & proto::CLIENT_FIXED_NEWSTYLE != 0
            );
            assert_eq!(flags.no_zeroes, word & proto::CLIENT_NO_ZEROES != 0);
        }
        Err(ProtoError::Short { .. }) => assert!(data.len() < 4),
        Err(ProtoError::UnknownClientFlags(word)) => assert_eq!(word, be32(data, 0)),
        Err(e) => panic!("client flags: unexpected error {e}"),
    }
    match proto::parse_option_header(data) {
        Ok(header) => {
            assert_eq!(be64(data, 0), IHAVEOPT);
            assert_eq!(header.option, be32(data, 8));
            assert_eq!(header.length, be32(data, 12));
        }
        Err(ProtoError::Short { .. }) => assert!(data.len() < OPTION_HEADER_LEN),
        Err(ProtoError::BadMagic { found, .. }) => {
            assert_eq!(found, be64(data, 0));
            assert_ne!(found, IHAVEOPT);
        }
        Err(e) => panic!("option header: unexpected error {e}"),
    }
    match proto::parse_info_request(data) {
        // Accepted data is exactly its own encoding: nothing skipped, nothing left over.
        Ok(request) => assert_eq!(info_data(request.name, &request.info_types), data),
        Err(ProtoError::Short { .. }) => assert!(data.len() < 6),
        Err(ProtoError::Malformed(_)) => {}
        Err(e) => panic!("INFO/GO data: unexpected error {e}"),
    }
    let parsed = proto::meta::parse_meta_request(data);
    assert_eq!(
        parsed.as_ref().ok().map(|r| (r.name, r.queries.clone())),
        meta_request(data),
        "meta context data"
    );
    match parsed {
        Ok(request) => assert_eq!(meta_data(request.name, &request.queries), data),
        Err(ProtoError::Short { .. }) => assert!(data.len() < 8),
        Err(ProtoError::Malformed(_)) => {}
        Err(e) => panic!("meta context data: unexpected error {e}"),
    }
}

/// `LIST_META_CONTEXT`/`SET_META_CONTEXT` data: name length, name, query count, queries.
pub fn meta_data(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
    let mut out = (name.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(name);
    out.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        out.extend_from_slice(&(q.len() as u32).to_be_bytes());
        out.extend_from_slice(q);
    }
    out
}

/// Meta context data as the protocol defines it: u32-prefixed name (at most 4096 bytes), u32 count,
/// u32-prefixed queries, nothing after, no NUL byte in any string. `None` if malformed.
fn meta_request(data: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    fn string<'a>(data: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
        let len = be32(data.get(*at..*at + 4)?, 0) as usize;
        let s = data.get(*at + 4..(*at + 4).checked_add(len)?)?;
        *at += 4 + len;
        (!s.contains(&0)).then_some(s)
    }
    let mut at = 0;
    let name = string(data, &mut at).filter(|n| n.len() <= 4096)?;
    let count = be32(data.get(at..at + 4)?, 0);
    at += 4;
    let mut queries = Vec::new();
    for _ in 0..count {
        queries.push(string(data, &mut at)?);
    }
    (at == data.len()).then_some((name, queries))
}

/// The transmission flags the export advertises to a client in `mode`: HAS_FLAGS, SEND_FLUSH,
/// SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN, SEND_CACHE, SEND_FAST_ZERO, and SEND_DF
/// once replies are structured.
pub fn export_flags(mode: ReplyMode) -> u16 {
    let always = 1 | 4 | 8 | 32 | 64 | 256 | 1024 | 2048;
    if mode == ReplyMode::Simple {
        always
    } else {
        always | 128
    }
}

/// `INFO`/`GO` option data: name length, name, count, info types.
pub fn info_data(name: &[u8], info_types: &[u16]) -> Vec<u8> {
    let mut out = (name.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(name);
    out.extend_from_slice(&(info_types.len() as u16).to_be_bytes());
    for t in info_types {
        out.extend_from_slice(&t.to_be_bytes());
    }
    out
}

/// How a handshake ended: an outcome or the kind of its error.
pub type Ended = Result<HandshakeOutcome, io::ErrorKind>;

/// Replays `client` into the server's handshake (on `target`, from [`replay_target`]) and checks the
/// greeting, every option reply, the `EXPORT_NAME` answer, how many bytes the server read and how the
/// handshake ended against the protocol. Returns how it ended.
pub fn check_handshake(target: &HandshakeReplay, client: &[u8]) -> Ended {
    let replayed = target.replay(client);
    let greeting = proto::greeting();
    assert!(
        replayed.sent.starts_with(&greeting),
        "the server must greet first"
    );
    let mut server = ServerOutput {
        bytes: &replayed.sent[greeting.len()..],
    };
    let (expected, consumed, negotiated) = expect_options(client, &mut server);
    let got = replayed.result.as_ref().map(|o| *o).map_err(|e| e.kind());
    assert_eq!(got, expected, "handshake result ({:?})", replayed.result);
    if got == Ok(HandshakeOutcome::Transmission) {
        assert_eq!(replayed.negotiated, negotiated, "what transmission uses");
    }
    assert_eq!(replayed.consumed, consumed, "client bytes read");
    assert!(
        server.bytes.is_empty(),
        "{} unexpected bytes after the last reply",
        server.bytes.len()
    );
    got
}

/// The server's output after the greeting, consumed reply by reply.
struct ServerOutput<'a> {
    bytes: &'a [u8],
}

impl ServerOutput<'_> {
    /// Takes one option reply, checking its magic and that it answers `option`: (type, data).
    fn reply(&mut self, option: u32) -> (u32, Vec<u8>) {
        assert!(self.bytes.len() >= 20, "option reply missing");
        assert_eq!(be64(self.bytes, 0), OPTION_REPLY_MAGIC);
        assert_eq!(be32(self.bytes, 8), option, "reply to another option");
        let kind = be32(self.bytes, 12);
        let len = be32(self.bytes, 16) as usize;
        assert!(self.bytes.len() >= 20 + len, "option reply data cut short");
        let data = self.bytes[20..20 + len].to_vec();
        self.bytes = &self.bytes[20 + len..];
        (kind, data)
    }

    /// Takes a reply that must be of type `kind` with `data`.
    fn expect(&mut self, option: u32, kind: u32, data: &[u8]) {
        let (got_kind, got_data) = self.reply(option);
        assert_eq!(
            (got_kind, got_data.as_slice()),
            (kind, data),
            "reply to {option}"
        );
    }
}

/// Walks the client's options as the protocol says the server must answer them, taking the server's
/// replies from `server`; returns how the handshake must end, how many client bytes it reads, and what
/// was negotiated.
fn expect_options(client: &[u8], server: &mut ServerOutput<'_>) -> (Ended, usize, Negotiated) {
    use io::ErrorKind::{InvalidData, UnexpectedEof};
    let mut state = Negotiated::default();
    let Some(flags) = client.get(..4) else {
        return (Err(UnexpectedEof), client.len(), state);
    };
    let Ok(flags) = proto::parse_client_flags(flags) else {
        return (Err(InvalidData), 4, state);
    };
    let (ended, at) = walk_options(client, server, flags, &mut state);
    (ended, at, state)
}

/// The option loop of [`expect_options`], after the client flags.
fn walk_options(
    client: &[u8],
    server: &mut ServerOutput<'_>,
    flags: proto::ClientFlags,
    state: &mut Negotiated,
) -> (Ended, usize) {
    use io::ErrorKind::{InvalidData, UnexpectedEof};
    let mut at = 4;
    for _ in 0..MAX_OPTIONS {
        let Some(header) = client.get(at..at + OPTION_HEADER_LEN) else {
            return (Err(UnexpectedEof), client.len());
        };
        at += OPTION_HEADER_LEN;
        let Ok(header) = proto::parse_option_header(header) else {
            return (Err(InvalidData), at);
        };
        if header.length > MAX_OPTION_DATA {
            return (Err(InvalidData), at);
        }
        let Some(data) = client.get(at..at + header.length as usize) else {
            return (Err(UnexpectedEof), client.len());
        };
        at += data.len();
        let option = header.option;
        let known_name = data.is_empty() || data == EXPORT_NAME.as_bytes();
        let export_flags = export_flags(state.mode);
        match option {
            // Extended headers forbid EXPORT_NAME; it cannot say no, so the server hangs up.
            opt::EXPORT_NAME if state.mode == ReplyMode::Extended => return (Err(InvalidData), at),
            opt::EXPORT_NAME if known_name => {
                let answer = proto::export_name_reply(EXPORT_SIZE, export_flags, flags.no_zeroes);
                assert_eq!(server.bytes, answer.as_slice(), "EXPORT_NAME answer");
                server.bytes = &[];
                return (Ok(HandshakeOutcome::Transmission), at);
            }
            opt::EXPORT_NAME => return (Err(InvalidData), at),
            _ if !flags.fixed_newstyle => return (Err(InvalidData), at),
            opt::ABORT => {
                server.expect(option, rep::ACK, &[]);
                return (Ok(HandshakeOutcome::Aborted), at);
            }
            opt::LIST if data.is_empty() => {
                server.expect(
                    option,
                    rep::SERVER,
                    &proto::list_entry(EXPORT_NAME.as_bytes()),
                );
                server.expect(option, rep::ACK, &[]);
            }
            opt::LIST => server.expect(option, rep::ERR_INVALID, &[]),
            opt::INFO | opt::GO => match proto::parse_info_request(data) {
                Err(_) => server.expect(option, rep::ERR_INVALID, &[]),
                Ok(req) if !(req.name.is_empty() || req.name == EXPORT_NAME.as_bytes()) => {
                    server.expect(option, rep::ERR_UNKNOWN, &[])
                }
                Ok(req) => {
                    let export = proto::info_export(EXPORT_SIZE, export_flags);
                    server.expect(option, rep::INFO, &export);
                    if req.info_types.contains(&proto::info::BLOCK_SIZE) {
                        let sizes = proto::info_block_size(1, 4096, MAX_PAYLOAD);
                        server.expect(option, rep::INFO, &sizes);
                    }
                    server.expect(option, rep::ACK, &[]);
                    if option == opt::GO {
                        return (Ok(HandshakeOutcome::Transmission), at);
                    }
                }
            },
            opt::STRUCTURED_REPLY | opt::EXTENDED_HEADERS => {
                let extended = option == opt::EXTENDED_HEADERS;
                let answer = match state.mode {
                    _ if !data.is_empty() => rep::ERR_INVALID,
                    ReplyMode::Extended if !extended => rep::ERR_EXT_HEADER_REQD,
                    ReplyMode::Extended => rep::ERR_INVALID,
                    ReplyMode::Structured if !extended => rep::ERR_INVALID,
                    _ => {
                        state.mode = if extended {
                            ReplyMode::Extended
                        } else {
                            ReplyMode::Structured
                        };
                        rep::ACK
                    }
                };
                server.expect(option, answer, &[]);
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                expect_meta(server, option, data, state)
            }
            _ => server.expect(option, rep::ERR_UNSUP, &[]),
        }
    }
    (Err(InvalidData), at)
}

/// The answer to a meta context option: `SET` needs structured replies and always replaces the
/// selection; an unknown export is `ERR_UNKNOWN`; `base:allocation` is listed (id 0) for `LIST` with no
/// query or a `base:` or `base:allocation` query, and selected (any id, which later `BLOCK_STATUS`
/// chunks carry) by a `SET` naming it.
fn expect_meta(server: &mut ServerOutput<'_>, option: u32, data: &[u8], state: &mut Negotiated) {
    let list = option == opt::LIST_META_CONTEXT;
    if !list {
        state.base_allocation = false;
        if state.mode == ReplyMode::Simple {
            return server.expect(option, rep::ERR_INVALID, &[]);
        }
    }
    let Some((name, queries)) = meta_request(data) else {
        return server.expect(option, rep::ERR_INVALID, &[]);
    };
    if !(name.is_empty() || name == EXPORT_NAME.as_bytes()) {
        return server.expect(option, rep::ERR_UNKNOWN, &[]);
    }
    let named = queries.iter().any(|q| *q == b"base:allocation");
    let listed = list && (queries.is_empty() || queries.iter().any(|q| *q == b"base:"));
    if named || listed {
        let (kind, context) = server.reply(option);
        assert_eq!(kind, rep::META_CONTEXT);
        assert_eq!(&context[4..], b"base:allocation");
        if list {
            assert_eq!(be32(&context, 0), 0, "LIST replies carry id 0");
        }
        state.base_allocation = !list || state.base_allocation;
    }
    server.expect(option, rep::ACK, &[]);
}

/// What was negotiated, a request header and the export limits to check it against: the fuzz input
/// layout of `nbd_request`. The first byte picks the reply mode (bits 0-1: simple, structured, extended)
/// and whether `base:allocation` is selected (bit 2); then comes a 28-byte header (32 with extended
/// headers), then the limits (size u64, read-only bit, block-size shift). Missing bytes read as zero.
pub fn split_request_input(data: &[u8]) -> (Negotiated, &[u8], ExportLimits) {
    let (mode, rest) = data.split_first().map_or((0, data), |(m, r)| (*m, r));
    let negotiated = Negotiated {
        mode: match mode & 3 {
            0 => ReplyMode::Simple,
            1 => ReplyMode::Structured,
            _ => ReplyMode::Extended,
        },
        base_allocation: mode & 4 != 0,
    };
    let (header, rest) = rest.split_at(rest.len().min(negotiated.request_len()));
    let mut limit_bytes = [0u8; 10];
    let n = rest.len().min(limit_bytes.len());
    limit_bytes[..n].copy_from_slice(&rest[..n]);
    let limits = ExportLimits {
        size: be64(&limit_bytes, 0),
        read_only: limit_bytes[8] & 1 != 0,
        // Block sizes the server uses are 1 and 512; any power of two up to 4 KiB must behave.
        min_block: 1 << (limit_bytes[9] % 13),
    };
    (negotiated, header, limits)
}

/// The first byte of an `nbd_request` input for `negotiated`.
pub fn mode_byte(negotiated: &Negotiated) -> u8 {
    let mode = match negotiated.mode {
        ReplyMode::Simple => 0,
        ReplyMode::Structured => 1,
        ReplyMode::Extended => 2,
    };
    mode | if negotiated.base_allocation { 4 } else { 0 }
}

/// The bytes of `request` as a client sends them: a compact header (the length cut to 32 bits), or an
/// extended one.
pub fn request_bytes(request: &Request, extended: bool) -> Vec<u8> {
    let magic = if extended {
        EXTENDED_REQUEST_MAGIC
    } else {
        REQUEST_MAGIC
    };
    let mut out = magic.to_be_bytes().to_vec();
    out.extend_from_slice(&request.flags.to_be_bytes());
    out.extend_from_slice(&request.command.to_be_bytes());
    out.extend_from_slice(&request.cookie.to_be_bytes());
    out.extend_from_slice(&request.offset.to_be_bytes());
    if extended {
        out.extend_from_slice(&request.length.to_be_bytes());
    } else {
        out.extend_from_slice(&(request.length as u32).to_be_bytes());
    }
    out
}

/// The flags the protocol lets `command` carry, given what was negotiated (as this server implements
/// them: FUA only where it writes), or `None` for a command the server does not know.
fn valid_flags(command: u16, negotiated: &Negotiated) -> Option<u16> {
    let structured = negotiated.mode != ReplyMode::Simple;
    let extended = negotiated.mode == ReplyMode::Extended;
    Some(match command {
        0 if structured => 1 << 2,   // READ: DF
        0 | 2 | 3 | 5 => 0,          // READ, DISC, FLUSH, CACHE
        1 if extended => 1 | 1 << 5, // WRITE: FUA, PAYLOAD_LEN
        1 | 4 => 1,                  // WRITE, TRIM: FUA
        6 => 1 | 1 << 1 | 1 << 4,    // WRITE_ZEROES: FUA, NO_HOLE, FAST_ZERO
        7 => 1 << 3,                 // BLOCK_STATUS: REQ_ONE
        _ => return None,
    })
}

/// Parses `header` as a request of the negotiated kind and checks it against `limits`: a parsed
/// request re-encodes to the same bytes, the payload is what the protocol says follows the header, and
/// a request `check_request` lets through is one the export can serve as it is. Returns the verdict
/// (the errno of a refusal), or `None` if the header did not parse.
pub fn check_request(
    header: &[u8],
    limits: &ExportLimits,
    negotiated: &Negotiated,
) -> Option<Result<(), u32>> {
    let extended = negotiated.mode == ReplyMode::Extended;
    let (len, magic) = if extended {
        (EXTENDED_REQUEST_LEN, EXTENDED_REQUEST_MAGIC)
    } else {
        (REQUEST_LEN, REQUEST_MAGIC)
    };
    let request = match negotiated.parse_request(header) {
        Ok(request) => request,
        Err(ProtoError::Short { .. }) => {
            assert!(header.len() < len);
            return None;
        }
        Err(ProtoError::BadMagic { found, .. }) => {
            assert_eq!(found, u64::from(be32(header, 0)));
            assert_ne!(be32(header, 0), magic);
            return None;
        }
        Err(e) => panic!("request: unexpected error {e}"),
    };
    assert_eq!(request_bytes(&request, extended), header[..len]);
    let flagged = extended && request.flags & cmd::FLAG_PAYLOAD_LEN != 0;
    let payload = if request.command == cmd::WRITE || flagged {
        request.length
    } else {
        0
    };
    assert_eq!(request.payload_len(extended), payload, "{request:?}");
    let writes = matches!(request.command, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    let verdict = proto::check_request(&request, limits, negotiated).map_err(|r| r.errno);
    match verdict {
        Ok(()) => {
            let Some(allowed) = valid_flags(request.command, negotiated) else {
                panic!("unknown command {} accepted", request.command);
            };
            assert_eq!(request.flags & !allowed, 0, "flags accepted: {request:?}");
            if !matches!(request.command, cmd::DISC | cmd::FLUSH) {
                assert!(!(writes && limits.read_only), "write to a read-only export");
                let end = request.offset.checked_add(request.length);
                assert!(
                    end.is_some_and(|end| end <= limits.size),
                    "{request:?} past the end"
                );
                let unit = u64::from(limits.min_block.max(1));
                assert_eq!(request.offset % unit, 0, "misaligned offset accepted");
                assert_eq!(request.length % unit, 0, "misaligned length accepted");
            }
            if matches!(request.command, cmd::READ | cmd::WRITE | cmd::CACHE) {
                let max = u64::from(MAX_PAYLOAD);
                assert!(request.length <= max, "oversized request accepted");
            }
            if request.command == cmd::BLOCK_STATUS {
                assert!(negotiated.base_allocation, "BLOCK_STATUS without a context");
                assert!(request.length > 0, "BLOCK_STATUS of length 0");
            }
            // Only a WRITE brings a payload the server reads.
            assert!(payload == 0 || request.command == cmd::WRITE);
        }
        Err(errno::EPERM) => assert!(writes && limits.read_only, "EPERM for {request:?}"),
        Err(errno::EINVAL) => {}
        Err(other) => panic!("check_request answered errno {other} for {request:?}"),
    }
    Some(verdict)
}
