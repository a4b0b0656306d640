//! The NBD server's handshake and request parsers on arbitrary bytes.
//!
//! [`check_handshake`] replays a client byte stream into the server's real handshake and compares every
//! byte the server sends with a model written here from the protocol document, option by option.

use std::io;

use examples::nbd::proto::{
    self, cmd, errno, opt, rep, ExportLimits, ProtoError, Request, IHAVEOPT, MAX_OPTION_DATA,
    MAX_PAYLOAD, OPTION_HEADER_LEN, OPTION_REPLY_MAGIC, REQUEST_LEN, REQUEST_MAGIC,
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
    let (expected, consumed) = expect_options(client, &mut server);
    let got = replayed.result.as_ref().map(|o| *o).map_err(|e| e.kind());
    assert_eq!(got, expected, "handshake result ({:?})", replayed.result);
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
/// replies from `server`; returns how the handshake must end and how many client bytes it reads.
fn expect_options(client: &[u8], server: &mut ServerOutput<'_>) -> (Ended, usize) {
    use io::ErrorKind::{InvalidData, UnexpectedEof};
    let Some(flags) = client.get(..4) else {
        return (Err(UnexpectedEof), client.len());
    };
    let Ok(flags) = proto::parse_client_flags(flags) else {
        return (Err(InvalidData), 4);
    };
    let export_flags = proto::tflags::HAS_FLAGS
        | proto::tflags::SEND_FLUSH
        | proto::tflags::CAN_MULTI_CONN
        | proto::tflags::SEND_FUA
        | proto::tflags::SEND_TRIM
        | proto::tflags::SEND_WRITE_ZEROES;
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
        match option {
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
            _ => server.expect(option, rep::ERR_UNSUP, &[]),
        }
    }
    (Err(InvalidData), at)
}

/// A request header followed by the export limits to check it against: the fuzz input layout of
/// `nbd_request`. Missing limit bytes read as zero.
pub fn split_request_input(data: &[u8]) -> (&[u8], ExportLimits) {
    let (header, rest) = data.split_at(data.len().min(REQUEST_LEN));
    let mut limit_bytes = [0u8; 10];
    let n = rest.len().min(limit_bytes.len());
    limit_bytes[..n].copy_from_slice(&rest[..n]);
    let limits = ExportLimits {
        size: be64(&limit_bytes, 0),
        read_only: limit_bytes[8] & 1 != 0,
        // Block sizes the server uses are 1 and 512; any power of two up to 4 KiB must behave.
        min_block: 1 << (limit_bytes[9] % 13),
    };
    (header, limits)
}

/// The bytes of `request` as a client sends them.
pub fn request_bytes(request: &Request) -> [u8; REQUEST_LEN] {
    let mut out = [0; REQUEST_LEN];
    out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&request.flags.to_be_bytes());
    out[6..8].copy_from_slice(&request.command.to_be_bytes());
    out[8..16].copy_from_slice(&request.cookie.to_be_bytes());
    out[16..24].copy_from_slice(&request.offset.to_be_bytes());
    out[24..].copy_from_slice(&request.length.to_be_bytes());
    out
}

/// Parses `header` as a request and checks it against `limits`: a parsed request re-encodes to the same
/// bytes, and a request `check_request` lets through is one the export can serve as it is. Returns
/// the verdict, or `None` if the header did not parse.
pub fn check_request(header: &[u8], limits: &ExportLimits) -> Option<Result<(), u32>> {
    let request = match proto::parse_request(header) {
        Ok(request) => request,
        Err(ProtoError::Short { .. }) => {
            assert!(header.len() < REQUEST_LEN);
            return None;
        }
        Err(ProtoError::BadMagic { found, .. }) => {
            assert_eq!(found, u64::from(be32(header, 0)));
            assert_ne!(be32(header, 0), REQUEST_MAGIC);
            return None;
        }
        Err(e) => panic!("request: unexpected error {e}"),
    };
    assert_eq!(request_bytes(&request), header[..REQUEST_LEN]);
    let writes = matches!(request.command, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    let verdict = proto::check_request(&request, limits);
    match verdict {
        Ok(()) => {
            let allowed = match request.command {
                cmd::READ | cmd::DISC | cmd::FLUSH => 0,
                cmd::WRITE | cmd::TRIM => cmd::FLAG_FUA,
                cmd::WRITE_ZEROES => cmd::FLAG_FUA | cmd::FLAG_NO_HOLE,
                other => panic!("unknown command {other} accepted"),
            };
            assert_eq!(request.flags & !allowed, 0, "flags accepted: {request:?}");
            if writes || request.command == cmd::READ {
                assert!(!(writes && limits.read_only), "write to a read-only export");
                let end = request.offset.checked_add(request.length.into());
                assert!(
                    end.is_some_and(|end| end <= limits.size),
                    "{request:?} past the end"
                );
                let unit = u64::from(limits.min_block.max(1));
                assert_eq!(request.offset % unit, 0, "misaligned offset accepted");
                assert_eq!(
                    u64::from(request.length) % unit,
                    0,
                    "misaligned length accepted"
                );
            }
            if matches!(request.command, cmd::READ | cmd::WRITE) {
                assert!(request.length <= MAX_PAYLOAD, "oversized payload accepted");
            }
        }
        Err(errno::EPERM) => assert!(writes && limits.read_only, "EPERM for {request:?}"),
        Err(errno::EINVAL) => {}
        Err(other) => panic!("check_request answered errno {other} for {request:?}"),
    }
    Some(verdict)
}
