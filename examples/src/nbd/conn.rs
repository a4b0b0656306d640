//! One client connection: the handshake, then a reader that parses requests and spawns one task per
//! request on the connection's IOThread; tasks reply as they finish (out of order), one at a time
//! through a fair async mutex around the socket's write half.

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use aioctx::sync::Mutex;
use futures::future::{self, Either};
use futures::io::{BufReader, ReadHalf, WriteHalf};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::export::{Block, Export};
use super::handshake::{handshake, Outcome};
use super::proto::{self, cmd, Request};
use super::server::ShutdownSignal;

/// Requests of one connection in flight at once; the reader stops reading while this many run.
const MAX_REQUESTS: usize = 64;
/// Payload bytes (read data and write payloads) of one connection held at once, unless a single
/// request needs more (up to [`proto::MAX_PAYLOAD`]).
const MAX_BYTES: usize = 64 * 1024 * 1024;
/// How long a client may take to choose an export.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shutting-down connection waits for its in-flight requests (a client that stopped
/// reading replies could otherwise hold the server for ever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection until the client disconnects, breaks the protocol, or the server shuts down
/// (then the requests already read are finished and answered first).
pub(crate) async fn serve_connection<S>(
    mut stream: S,
    export: Arc<Export>,
    shutdown: ShutdownSignal,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let negotiated = aioctx::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut stream, &export));
    let outcome = match future::select(Box::pin(negotiated), shutdown.clone()).await {
        Either::Left((Ok(outcome), _)) => outcome,
        Either::Left((Err(elapsed), _)) => Err(elapsed.into()),
        Either::Right(_) => return Ok(()),
    };
    match outcome {
        Ok(Outcome::Transmission) => {}
        Ok(Outcome::Aborted) => return Ok(()),
        Err(e) if client_gone(&e) => return Ok(()),
        Err(e) => return Err(e),
    }
    let (reader, writer) = stream.split();
    let conn = Rc::new(Connection {
        export,
        writer: Mutex::new(writer),
        budget: Rc::new(Budget::default()),
    });
    let result = read_requests(BufReader::new(reader), &conn, shutdown).await;
    // Every spawned request holds the connection; let them finish and answer before closing.
    let _ = aioctx::time::timeout(DRAIN_TIMEOUT, conn.budget.idle()).await;
    match result {
        Err(e) if client_gone(&e) => Ok(()),
        other => other,
    }
}

/// Whether an error only says the client went away.
fn client_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

struct Connection<S> {
    export: Arc<Export>,
    writer: Mutex<WriteHalf<S>>,
    budget: Rc<Budget>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Sends one complete reply; replies never interleave.
    async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut writer = self.writer.lock().await;
        writer.write_all(bytes).await
    }
}

/// Reads requests until `DISC`, end of stream, a protocol error or shutdown.
async fn read_requests<S>(
    mut reader: BufReader<ReadHalf<S>>,
    conn: &Rc<Connection<S>>,
    mut shutdown: ShutdownSignal,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let limits = conn.export.limits;
    loop {
        let mut header = [0; proto::REQUEST_LEN];
        // Shutdown stops the server between requests; a request whose header has arrived is finished.
        match future::select(reader.read_exact(&mut header), &mut shutdown).await {
            Either::Left((read, _)) => read?,
            Either::Right(_) => return Ok(()),
        }
        let request = proto::parse_request(&header)?;
        if let Err(errno) = proto::check_request(&request, &limits) {
            if request.has_payload() {
                skip_payload(&mut reader, request.length).await?;
            }
            conn.send(&proto::simple_reply(errno, request.cookie))
                .await?;
            continue;
        }
        if request.command == cmd::DISC {
            return Ok(());
        }
        let bytes = match request.command {
            cmd::READ | cmd::WRITE => request.length as usize,
            _ => 0,
        };
        let permit = Budget::acquire(&conn.budget, bytes).await;
        let payload = if request.has_payload() {
            let mut block = conn.export.payload_buffer(bytes);
            reader.read_exact(block.data_mut()).await?;
            Some(block)
        } else {
            None
        };
        // Detached: the permit it holds is how the connection waits for it.
        drop(aioctx::spawn_local(execute(
            Rc::clone(conn),
            request,
            payload,
            permit,
        )));
    }
}

/// Discards the payload of a refused `WRITE`, so the stream stays in step. A payload too long to be
/// worth reading ends the connection instead (the protocol allows it; nothing else can be sent).
async fn skip_payload<R: AsyncRead + Unpin>(reader: &mut R, length: u32) -> io::Result<()> {
    if length > proto::MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WRITE of {length} bytes: over the maximum, payload not skipped"),
        ));
    }
    let copied = futures::io::copy(reader.take(length.into()), &mut futures::io::sink()).await?;
    if copied < u64::from(length) {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Runs one request and sends its reply. A reply that cannot be sent means the client is gone; the
/// reader finds out on its own.
async fn execute<S>(
    conn: Rc<Connection<S>>,
    request: Request,
    payload: Option<Block>,
    _permit: Permit,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let export = &conn.export;
    let fua = request.flags & cmd::FLAG_FUA != 0;
    let (offset, length) = (request.offset, request.length);
    let done = match (request.command, payload) {
        (cmd::READ, _) => match export.read(offset, length as usize).await {
            Ok(mut block) => {
                let header = proto::simple_reply(0, request.cookie);
                let _ = conn.send(block.with_header(&header)).await;
                return;
            }
            Err(e) => Err(e),
        },
        (cmd::WRITE, Some(block)) => export.write(block, offset, fua).await,
        (cmd::FLUSH, _) => export.flush().await,
        (cmd::TRIM, _) => export.trim(offset, length.into(), fua).await,
        (cmd::WRITE_ZEROES, _) => export.write_zeroes(offset, length.into(), fua).await,
        // check_request lets nothing else through.
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    let errno = match done {
        Ok(()) => 0,
        Err(e) => proto::errno_for(&e),
    };
    let _ = conn.send(&proto::simple_reply(errno, request.cookie)).await;
}

/// Bounds what one connection holds: at most [`MAX_REQUESTS`] requests and [`MAX_BYTES`] of buffers.
/// Only the connection's reader waits on it, so one waker suffices.
#[derive(Default)]
struct Budget {
    requests: Cell<usize>,
    bytes: Cell<usize>,
    waiter: Cell<Option<Waker>>,
}

impl Budget {
    /// Waits until a request of `bytes` fits, and takes its share.
    async fn acquire(budget: &Rc<Budget>, bytes: usize) -> Permit {
        poll_fn(|cx| {
            let (requests, held) = (budget.requests.get(), budget.bytes.get());
            let fits = requests == 0 || (requests < MAX_REQUESTS && held + bytes <= MAX_BYTES);
            if fits {
                budget.requests.set(requests + 1);
                budget.bytes.set(held + bytes);
                Poll::Ready(())
            } else {
                budget.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        Permit {
            budget: Rc::clone(budget),
            bytes,
        }
    }

    /// Waits until no request is in flight.
    async fn idle(&self) {
        poll_fn(|cx| {
            if self.requests.get() == 0 {
                Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// One request's share of the [`Budget`], given back when the request is answered (or dropped).
struct Permit {
    budget: Rc<Budget>,
    bytes: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let budget = &self.budget;
        budget.requests.set(budget.requests.get() - 1);
        budget.bytes.set(budget.bytes.get() - self.bytes);
        if let Some(waker) = budget.waiter.take() {
            waker.wake();
        }
    }
}
