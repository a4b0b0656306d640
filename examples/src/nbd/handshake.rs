//! The fixed newstyle handshake: greeting, client flags, then options until `GO` or `EXPORT_NAME`
//! selects the export (or the client aborts). Along the way a client may negotiate structured replies
//! (`STRUCTURED_REPLY`), extended headers (`EXTENDED_HEADERS`, which imply them) and the
//! `base:allocation` metadata context (`LIST_META_CONTEXT`, `SET_META_CONTEXT`), as with qemu-nbd.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::export::Export;
use super::proto::meta::{self, BASE_ALLOCATION, BASE_ALLOCATION_ID};
use super::proto::{self, info, opt, rep, Negotiated, ReplyMode};

/// How many options one client may send before the server gives up on it: a client that never
/// chooses an export must not hold a connection slot for ever.
pub const MAX_OPTIONS: usize = 256;

/// How a handshake ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The export is selected: requests follow.
    Transmission,
    /// The client sent `NBD_OPT_ABORT`.
    Aborted,
    /// `STARTTLS` was acknowledged: the TLS handshake comes next, then the options go on over TLS
    /// (where a second `STARTTLS` is refused).
    StartTls,
}

/// Where the connection is with respect to TLS, which decides what options are allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsPhase {
    /// The server has no TLS: as qemu-nbd, `STARTTLS` gets `ERR_POLICY` ("TLS not configured"),
    /// or `ERR_INVALID` if it carries data, and the options go on.
    Off,
    /// TLS is configured and not started yet: as qemu-nbd, every option but `STARTTLS` gets
    /// `ERR_TLS_REQD` (`ABORT` too, and then the connection ends), `EXPORT_NAME` (which cannot be
    /// refused) closes the connection, and so does a `STARTTLS` with data.
    Required,
    /// The options run over TLS: a second `STARTTLS` is invalid.
    Established,
}

/// What the options phase carries from one stream to the next (across `STARTTLS`).
#[derive(Debug)]
pub(crate) struct OptionState {
    client: proto::ClientFlags,
    /// Options the client may still send.
    left: usize,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Runs the server side of the handshake on `stream`; what the client negotiated for transmission is
/// left in `negotiated` (which starts as nothing negotiated).
///
/// Errors (the caller closes the connection): I/O errors, a bad option magic, unknown client flags,
/// option data over [`proto::MAX_OPTION_DATA`], `EXPORT_NAME` for an unknown export (that option has no
/// way to report errors) or after extended headers (which forbid it), any other option from a client
/// that is not fixed newstyle, too many options.
pub(crate) async fn handshake<S>(
    stream: &mut S,
    export: &Export,
    negotiated: &mut Negotiated,
) -> io::Result<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut state = greet(stream).await?;
    options(stream, export, negotiated, &mut state, TlsPhase::Off).await
}

/// Sends the greeting and reads the client flags: what the options phase starts from.
pub(crate) async fn greet<S>(stream: &mut S) -> io::Result<OptionState>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&proto::greeting()).await?;
    let mut flags = [0; 4];
    stream.read_exact(&mut flags).await?;
    Ok(OptionState {
        client: proto::parse_client_flags(&flags)?,
        left: MAX_OPTIONS,
    })
}

/// The options phase (see [`handshake`]), in TLS phase `tls`. Returns [`Outcome::StartTls`] when the
/// client asked for TLS and got the go-ahead; the caller runs the TLS handshake and calls this again
/// on the TLS stream with the same `state`, in [`TlsPhase::Established`].
pub(crate) async fn options<S>(
    stream: &mut S,
    export: &Export,
    negotiated: &mut Negotiated,
    state: &mut OptionState,
    tls: TlsPhase,
) -> io::Result<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let client = state.client;
    let mut reply = Vec::new();
    while state.left > 0 {
        state.left -= 1;
        let mut header = [0; proto::OPTION_HEADER_LEN];
        stream.read_exact(&mut header).await?;
        let header = proto::parse_option_header(&header)?;
        if header.length > proto::MAX_OPTION_DATA {
            return Err(invalid("option data too long"));
        }
        let mut data = vec![0; header.length as usize];
        stream.read_exact(&mut data).await?;
        reply.clear();
        let option = header.option;
        if tls == TlsPhase::Required {
            if !client.fixed_newstyle {
                return Err(invalid(
                    "a client that is not fixed newstyle cannot start TLS",
                ));
            }
            let done = match option {
                opt::STARTTLS if !data.is_empty() => {
                    return Err(invalid("STARTTLS with data"));
                }
                opt::STARTTLS => {
                    proto::encode_option_reply(&mut reply, option, rep::ACK, &[]);
                    Some(Outcome::StartTls)
                }
                opt::EXPORT_NAME => return Err(invalid("EXPORT_NAME before TLS")),
                _ => {
                    proto::encode_option_reply(&mut reply, option, rep::ERR_TLS_REQD, &[]);
                    (option == opt::ABORT).then_some(Outcome::Aborted)
                }
            };
            stream.write_all(&reply).await?;
            stream.flush().await?;
            if let Some(outcome) = done {
                return Ok(outcome);
            }
            continue;
        }
        let done = match option {
            opt::STARTTLS if tls == TlsPhase::Established && client.fixed_newstyle => {
                proto::encode_option_reply(&mut reply, option, rep::ERR_INVALID, &[]);
                None
            }
            opt::STARTTLS if tls == TlsPhase::Off && client.fixed_newstyle => {
                let answer = if data.is_empty() {
                    rep::ERR_POLICY
                } else {
                    rep::ERR_INVALID
                };
                proto::encode_option_reply(&mut reply, option, answer, &[]);
                None
            }
            opt::EXPORT_NAME => {
                if !export.matches(&data) {
                    return Err(invalid("EXPORT_NAME for an unknown export"));
                }
                if negotiated.extended() {
                    return Err(invalid("EXPORT_NAME after extended headers"));
                }
                let size = export.limits.size;
                let flags = export.transmission_flags(negotiated.mode);
                reply = proto::export_name_reply(size, flags, client.no_zeroes);
                Some(Outcome::Transmission)
            }
            _ if !client.fixed_newstyle => {
                return Err(invalid(
                    "option other than EXPORT_NAME from a non-fixed client",
                ))
            }
            opt::ABORT => {
                proto::encode_option_reply(&mut reply, option, rep::ACK, &[]);
                Some(Outcome::Aborted)
            }
            opt::LIST if data.is_empty() => {
                let entry = proto::list_entry(export.name.as_bytes());
                proto::encode_option_reply(&mut reply, option, rep::SERVER, &entry);
                proto::encode_option_reply(&mut reply, option, rep::ACK, &[]);
                None
            }
            opt::LIST => {
                proto::encode_option_reply(&mut reply, option, rep::ERR_INVALID, &[]);
                None
            }
            opt::INFO | opt::GO => answer_info(&mut reply, option, &data, export, negotiated),
            opt::STRUCTURED_REPLY | opt::EXTENDED_HEADERS => {
                let answer = reply_mode(negotiated, option, &data);
                proto::encode_option_reply(&mut reply, option, answer, &[]);
                None
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                answer_meta(&mut reply, option, &data, export, negotiated);
                None
            }
            _ => {
                proto::encode_option_reply(&mut reply, option, rep::ERR_UNSUP, &[]);
                None
            }
        };
        stream.write_all(&reply).await?;
        // Over TLS, records leave on flush.
        stream.flush().await?;
        if let Some(outcome) = done {
            return Ok(outcome);
        }
    }
    Err(invalid("too many options"))
}

/// Negotiates structured replies or extended headers as qemu-nbd does, returning the reply type:
/// option data is invalid; structured replies once negotiated are invalid, and after extended headers
/// need them; extended headers may follow structured replies, once.
fn reply_mode(negotiated: &mut Negotiated, option: u32, data: &[u8]) -> u32 {
    let (wanted, mode) = (option == opt::EXTENDED_HEADERS, negotiated.mode);
    match mode {
        _ if !data.is_empty() => rep::ERR_INVALID,
        ReplyMode::Extended if !wanted => rep::ERR_EXT_HEADER_REQD,
        ReplyMode::Extended => rep::ERR_INVALID,
        ReplyMode::Structured if !wanted => rep::ERR_INVALID,
        _ => {
            negotiated.mode = if wanted {
                ReplyMode::Extended
            } else {
                ReplyMode::Structured
            };
            rep::ACK
        }
    }
}

/// Answers `LIST_META_CONTEXT` or `SET_META_CONTEXT` (`base:allocation` is the only context). `SET`
/// needs structured replies first, and replaces the selection even when it fails.
fn answer_meta(
    reply: &mut Vec<u8>,
    option: u32,
    data: &[u8],
    export: &Export,
    negotiated: &mut Negotiated,
) {
    let list = option == opt::LIST_META_CONTEXT;
    if !list {
        negotiated.base_allocation = false;
        if !negotiated.structured() {
            proto::encode_option_reply(reply, option, rep::ERR_INVALID, &[]);
            return;
        }
    }
    let request = match meta::parse_meta_request(data) {
        Ok(request) => request,
        Err(_) => return proto::encode_option_reply(reply, option, rep::ERR_INVALID, &[]),
    };
    if !export.matches(request.name) {
        return proto::encode_option_reply(reply, option, rep::ERR_UNKNOWN, &[]);
    }
    if meta::selects_base_allocation(&request.queries, list) {
        let id = if list { 0 } else { BASE_ALLOCATION_ID };
        let context = meta::meta_context_reply(id, BASE_ALLOCATION);
        proto::encode_option_reply(reply, option, rep::META_CONTEXT, &context);
        if !list {
            negotiated.base_allocation = true;
        }
    }
    proto::encode_option_reply(reply, option, rep::ACK, &[]);
}

/// Answers `INFO` or `GO`; returns `Some(Transmission)` if a `GO` succeeded.
fn answer_info(
    reply: &mut Vec<u8>,
    option: u32,
    data: &[u8],
    export: &Export,
    negotiated: &Negotiated,
) -> Option<Outcome> {
    let request = match proto::parse_info_request(data) {
        Ok(request) => request,
        Err(_) => {
            proto::encode_option_reply(reply, option, rep::ERR_INVALID, &[]);
            return None;
        }
    };
    if !export.matches(request.name) {
        proto::encode_option_reply(reply, option, rep::ERR_UNKNOWN, &[]);
        return None;
    }
    let flags = export.transmission_flags(negotiated.mode);
    let export_info = proto::info_export(export.limits.size, flags);
    proto::encode_option_reply(reply, option, rep::INFO, &export_info);
    if request.info_types.contains(&info::BLOCK_SIZE) {
        let (min, preferred, max) = export.block_sizes();
        let sizes = proto::info_block_size(min, preferred, max);
        proto::encode_option_reply(reply, option, rep::INFO, &sizes);
    }
    proto::encode_option_reply(reply, option, rep::ACK, &[]);
    (option == opt::GO).then_some(Outcome::Transmission)
}
