//! The server's side of the handshake driven from a client's bytes held in memory: no socket and no
//! IOThread, so fuzz targets and property tests can run the real option negotiation on any input. The
//! export is only described (name, size, flags): the handshake never touches its file.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use aioctx::{AioContext, Backend};
use futures::{AsyncRead, AsyncWrite};

use super::export::Export;
use super::handshake::{handshake, Outcome};
use super::proto::Negotiated;

/// A handshake target: a described export and a small context to run the handshake future on.
pub struct HandshakeReplay {
    ctx: AioContext,
    export: Export,
}

/// What the server did with one client byte stream.
#[derive(Debug)]
pub struct Replayed {
    /// Everything the server wrote: the greeting, then option replies (or the `EXPORT_NAME` answer).
    pub sent: Vec<u8>,
    /// How many of the client's bytes the server read.
    pub consumed: usize,
    /// How the handshake ended; running out of client bytes is an `UnexpectedEof` error.
    pub result: io::Result<Outcome>,
    /// What the client had negotiated when the handshake ended.
    pub negotiated: Negotiated,
}

impl HandshakeReplay {
    /// A replay target for an export called `export_name` of `size` bytes. With `direct`, the export
    /// advertises the 512-byte minimum block size of an `O_DIRECT` export.
    ///
    /// Errors: the context cannot be created, or `/dev/null` (the stand-in file) cannot be opened.
    pub fn new(export_name: &str, size: u64, read_only: bool, direct: bool) -> io::Result<Self> {
        // The poll backend needs no io_uring ring, so a fuzzer may create it in any sandbox.
        let ctx = AioContext::builder().backend(Backend::Poll).build()?;
        let null = std::fs::File::open("/dev/null")?;
        let map = null.try_clone()?;
        // aioctx::fs::File resolves its engine on the current context.
        let file = ctx.block_on(async { aioctx::fs::File::from_std(null) })?;
        let export = Export::new(export_name.to_owned(), file, map, size, read_only, direct);
        Ok(HandshakeReplay { ctx, export })
    }

    /// Runs the handshake with `client` as everything the client sends.
    pub fn replay(&self, client: &[u8]) -> Replayed {
        let mut stream = MemoryStream {
            input: client,
            consumed: 0,
            sent: Vec::new(),
        };
        let mut negotiated = Negotiated::default();
        let result = self
            .ctx
            .block_on(handshake(&mut stream, &self.export, &mut negotiated));
        Replayed {
            sent: stream.sent,
            consumed: stream.consumed,
            result,
            negotiated,
        }
    }
}

/// A stream that reads from a slice (then reports end of file) and keeps what is written to it.
struct MemoryStream<'a> {
    input: &'a [u8],
    consumed: usize,
    sent: Vec<u8>,
}

impl AsyncRead for MemoryStream<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let rest = &this.input[this.consumed..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        this.consumed += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for MemoryStream<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().sent.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
