//! The fixed newstyle handshake: greeting, client flags, then options until `GO` or `EXPORT_NAME`
//! selects the export (or the client aborts).

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::export::Export;
use super::proto::{self, info, opt, rep};

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
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Runs the server side of the handshake on `stream`.
///
/// Errors (the caller closes the connection): I/O errors, a bad option magic, unknown client flags,
/// option data over [`proto::MAX_OPTION_DATA`], `EXPORT_NAME` for an unknown export (that option has no
/// way to report errors), any other option from a client that is not fixed newstyle, too many options.
pub(crate) async fn handshake<S>(stream: &mut S, export: &Export) -> io::Result<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&proto::greeting()).await?;
    let mut flags = [0; 4];
    stream.read_exact(&mut flags).await?;
    let client = proto::parse_client_flags(&flags)?;
    let mut reply = Vec::new();
    for _ in 0..MAX_OPTIONS {
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
        let done = match option {
            opt::EXPORT_NAME => {
                if !export.matches(&data) {
                    return Err(invalid("EXPORT_NAME for an unknown export"));
                }
                let size = export.limits.size;
                reply =
                    proto::export_name_reply(size, export.transmission_flags(), client.no_zeroes);
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
            opt::INFO | opt::GO => answer_info(&mut reply, option, &data, export),
            _ => {
                proto::encode_option_reply(&mut reply, option, rep::ERR_UNSUP, &[]);
                None
            }
        };
        stream.write_all(&reply).await?;
        if let Some(outcome) = done {
            return Ok(outcome);
        }
    }
    Err(invalid("too many options"))
}

/// Answers `INFO` or `GO`; returns `Some(Transmission)` if a `GO` succeeded.
fn answer_info(reply: &mut Vec<u8>, option: u32, data: &[u8], export: &Export) -> Option<Outcome> {
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
    let export_info = proto::info_export(export.limits.size, export.transmission_flags());
    proto::encode_option_reply(reply, option, rep::INFO, &export_info);
    if request.info_types.contains(&info::BLOCK_SIZE) {
        let (min, preferred, max) = export.block_sizes();
        let sizes = proto::info_block_size(min, preferred, max);
        proto::encode_option_reply(reply, option, rep::INFO, &sizes);
    }
    proto::encode_option_reply(reply, option, rep::ACK, &[]);
    (option == opt::GO).then_some(Outcome::Transmission)
}
