//! One client connection: the handshake, then a reader that parses requests and spawns one task per
//! request on the connection's IOThread; tasks queue their replies as they finish (out of order) and
//! one writer sends whatever is queued in one socket write (see `replies`).

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use aioctx::JoinHandle;
use futures::future::{self, Either};
use futures::io::{BufReader, ReadHalf};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite};
use slab::Slab;

use super::commands::execute;
use super::export::{Export, MAX_STATUS_EXTENTS};
use super::framing::{self, Framing};
use super::handshake::{greet, options, Outcome, TlsPhase};
use super::proto::{self, cmd, Negotiated};
use super::replies::Replies;
use super::server::{Activity, ShutdownSignal};
use super::tls::Tls;

/// Requests of one connection in flight at once; the reader stops reading while this many run.
const MAX_REQUESTS: usize = 64;
/// Payload bytes (read data and write payloads) of one connection held at once, unless a single
/// request needs more (up to [`proto::MAX_PAYLOAD`]).
const MAX_BYTES: usize = 64 * 1024 * 1024;
/// What a connection shares with the server.
pub(crate) struct Shared {
    pub(crate) export: Arc<Export>,
    pub(crate) shutdown: ShutdownSignal,
    pub(crate) activity: Arc<Activity>,
    /// How long a closing connection waits for its in-flight requests before it aborts them.
    pub(crate) drain_timeout: Duration,
    /// How long the handshake may take (`None`: no limit); with TLS, its TLS handshake included.
    pub(crate) handshake_limit: Option<Duration>,
    /// TLS, when the server requires it.
    pub(crate) tls: Option<Tls>,
}

/// The stream transmission runs on: the socket itself, or TLS over it.
enum Negotiation<S> {
    Plain(S),
    Tls(Box<futures_rustls::server::TlsStream<S>>),
}

/// The handshake: greeting, options, and with TLS configured `STARTTLS`, the TLS handshake and the
/// rest of the options over TLS. `None` when the client aborted.
async fn negotiate<S>(
    mut stream: S,
    export: &Export,
    negotiated: &mut Negotiated,
    tls: Option<&Tls>,
) -> io::Result<Option<Negotiation<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut state = greet(&mut stream).await?;
    let phase = if tls.is_some() {
        TlsPhase::Required
    } else {
        TlsPhase::Off
    };
    match options(&mut stream, export, negotiated, &mut state, phase).await? {
        Outcome::Transmission => return Ok(Some(Negotiation::Plain(stream))),
        Outcome::Aborted => return Ok(None),
        Outcome::StartTls => {}
    }
    let Some(tls) = tls else {
        return Err(io::Error::other("STARTTLS acknowledged without TLS"));
    };
    let mut stream = tls.accept(stream).await?;
    let outcome = options(
        &mut stream,
        export,
        negotiated,
        &mut state,
        TlsPhase::Established,
    )
    .await?;
    Ok(match outcome {
        Outcome::Transmission => Some(Negotiation::Tls(Box::new(stream))),
        Outcome::Aborted | Outcome::StartTls => None,
    })
}

/// Serves one connection until the client disconnects, breaks the protocol, or the server shuts down
/// (then the requests already read are finished and answered first).
pub(crate) async fn serve_connection<S>(stream: S, shared: Shared) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let Shared {
        export,
        shutdown,
        activity,
        drain_timeout,
        handshake_limit,
        tls,
    } = shared;
    let mut negotiated = Negotiated::default();
    let handshake = negotiate(stream, &export, &mut negotiated, tls.as_ref());
    let in_time = async {
        match handshake_limit {
            Some(limit) => aioctx::time::timeout(limit, handshake).await.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("handshake not done within {limit:?} (--handshake-limit)"),
                )
            })?,
            None => handshake.await,
        }
    };
    let outcome = match future::select(Box::pin(in_time), shutdown.clone()).await {
        Either::Left((outcome, _)) => outcome,
        Either::Right(_) => return Ok(()),
    };
    let stream = match outcome {
        Ok(Some(stream)) => stream,
        Ok(None) => return Ok(()),
        Err(e) if client_gone(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    let transmission = Transmission {
        export,
        negotiated,
        shutdown,
        activity,
        drain_timeout,
    };
    match stream {
        Negotiation::Plain(stream) => transmission.run(stream).await,
        Negotiation::Tls(stream) => transmission.run(*stream).await,
    }
}

/// What transmission needs once the handshake is done.
struct Transmission {
    export: Arc<Export>,
    negotiated: Negotiated,
    shutdown: ShutdownSignal,
    activity: Arc<Activity>,
    drain_timeout: Duration,
}

impl Transmission {
    /// Reads requests and sends replies on `stream` until the client leaves, breaks the protocol or
    /// the server shuts down.
    async fn run<S>(self, stream: S) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let Transmission {
            export,
            negotiated,
            shutdown,
            activity,
            drain_timeout,
        } = self;
        let (reader, writer) = stream.split();
        let conn = Rc::new(Connection {
            export,
            negotiated,
            framing: Framing(negotiated.mode),
            replies: Replies::new(),
            budget: Rc::new(Budget::new(activity)),
        });
        // The writer is a task of its own: a reply queued must not wake (and re-poll) the reader.
        let writer = aioctx::spawn_local({
            let conn = Rc::clone(&conn);
            async move {
                let _ = conn.replies.write_all(writer).await;
            }
        });
        let reader = BufReader::new(reader);
        let result = read_requests(reader, &conn, shutdown, drain_timeout).await;
        // Let the requests already read finish and answer. A client that does not read its replies could
        // hold them (and their buffers) for ever: past the drain timeout they are dropped (the aborted
        // tasks drop theirs when they next run).
        if aioctx::time::timeout(drain_timeout, conn.budget.idle())
            .await
            .is_err()
        {
            conn.budget.abort_all();
            conn.replies.close();
        }
        // Everything is written (or given up): the writer goes, and with it the socket.
        writer.abort();
        match result {
            Err(e) if client_gone(&e) => Ok(()),
            other => other,
        }
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

/// One connection in transmission, shared by its reader and its request tasks.
pub(crate) struct Connection {
    pub(crate) export: Arc<Export>,
    negotiated: Negotiated,
    pub(crate) framing: Framing,
    pub(crate) replies: Replies<Permit>,
    budget: Rc<Budget>,
}

/// Runs `work` unless `stop` resolves first (then `None`).
async fn unless<T>(work: impl Future<Output = T>, stop: impl Future + Unpin) -> Option<T> {
    match future::select(pin!(work), stop).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}

/// Reads requests until `DISC`, end of stream, a protocol error or shutdown. Shutdown stops it between
/// requests and while it waits for room in the budget; a request whose header has arrived gets
/// `drain_timeout` more for its payload.
async fn read_requests<S>(
    mut reader: BufReader<ReadHalf<S>>,
    conn: &Rc<Connection>,
    mut shutdown: ShutdownSignal,
    drain_timeout: Duration,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let mut past_drain = Box::pin({
        let shutdown = shutdown.clone();
        async move {
            let _ = shutdown.await;
            aioctx::time::sleep(drain_timeout).await;
        }
    });
    let limits = conn.export.limits;
    let negotiated = conn.negotiated;
    let mut header = [0; proto::EXTENDED_REQUEST_LEN];
    let header = &mut header[..negotiated.request_len()];
    loop {
        let Some(read) = unless(reader.read_exact(header), &mut shutdown).await else {
            return Ok(());
        };
        read?;
        let request = negotiated.parse_request(header)?;
        let payload_len = request.payload_len(negotiated.extended());
        if let Err(refused) = proto::check_request(&request, &limits, &negotiated) {
            // Error replies count against the budget too: a client sending nothing but bad requests
            // and reading no replies must not grow the queue.
            let Some(permit) = unless(Budget::acquire(&conn.budget, 0), &mut shutdown).await else {
                return Ok(());
            };
            if payload_len > 0 {
                match unless(skip_payload(&mut reader, payload_len), &mut past_drain).await {
                    Some(skipped) => skipped?,
                    None => return Ok(()),
                }
            }
            let reply = conn
                .framing
                .error(&request, refused.errno, refused.reason, permit);
            conn.replies.push(reply);
            continue;
        }
        if request.command == cmd::DISC {
            return Ok(());
        }
        // check_request bounds READ and WRITE to MAX_PAYLOAD.
        let bytes = match request.command {
            cmd::READ | cmd::WRITE => request.length as usize,
            cmd::BLOCK_STATUS => framing::block_status_bytes(MAX_STATUS_EXTENTS),
            _ => 0,
        };
        let Some(permit) = unless(Budget::acquire(&conn.budget, bytes), &mut shutdown).await else {
            return Ok(());
        };
        // Only a WRITE has a payload once checked (it may be empty).
        let payload = if request.command == cmd::WRITE {
            let mut block = conn.export.payload_buffer(bytes);
            match unless(reader.read_exact(block.data_mut()), &mut past_drain).await {
                Some(read) => read?,
                None => return Ok(()),
            }
            Some(block)
        } else {
            None
        };
        let key = permit.key;
        let task = aioctx::spawn_local(execute(Rc::clone(conn), request, payload, permit));
        conn.budget.track(key, task);
    }
}

/// Discards the payload of a refused request (a `WRITE`, or with extended headers any request flagged
/// `PAYLOAD_LEN`), so the stream stays in step. A payload too long to be worth reading ends the
/// connection instead (the protocol allows it; nothing else can be sent).
async fn skip_payload<R: AsyncRead + Unpin>(reader: &mut R, length: u64) -> io::Result<()> {
    if length > u64::from(proto::MAX_PAYLOAD) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a payload of {length} bytes: over the maximum, not skipped"),
        ));
    }
    let copied = futures::io::copy(reader.take(length), &mut futures::io::sink()).await?;
    if copied < length {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Bounds what one connection holds: at most [`MAX_REQUESTS`] requests and [`MAX_BYTES`] of buffers,
/// and keeps their tasks so they can be aborted. Only the connection's own task waits on it, so one
/// waker suffices.
struct Budget {
    requests: Cell<usize>,
    bytes: Cell<usize>,
    waiter: Cell<Option<Waker>>,
    /// The running request tasks, by the key of their permit.
    tasks: RefCell<Slab<Option<JoinHandle<()>>>>,
    activity: Arc<Activity>,
}

impl Budget {
    fn new(activity: Arc<Activity>) -> Budget {
        Budget {
            requests: Cell::new(0),
            bytes: Cell::new(0),
            waiter: Cell::new(None),
            tasks: RefCell::new(Slab::with_capacity(MAX_REQUESTS)),
            activity,
        }
    }

    /// Waits until a request of `bytes` fits, and takes its share.
    async fn acquire(budget: &Rc<Budget>, bytes: usize) -> Permit {
        poll_fn(|cx| {
            let (requests, held) = (budget.requests.get(), budget.bytes.get());
            let fits = requests == 0 || (requests < MAX_REQUESTS && held + bytes <= MAX_BYTES);
            if fits {
                budget.requests.set(requests + 1);
                budget.bytes.set(held + bytes);
                // No stale waker: a permit given back later must not wake a task that is not waiting.
                budget.waiter.take();
                Poll::Ready(())
            } else {
                budget.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        budget.activity.requests.fetch_add(1, Ordering::Relaxed);
        Permit {
            budget: Rc::clone(budget),
            bytes,
            key: budget.tasks.borrow_mut().insert(None),
        }
    }

    /// Records the task that holds the permit `key` (it has not run yet: spawned tasks run later).
    fn track(&self, key: usize, task: JoinHandle<()>) {
        if let Some(slot) = self.tasks.borrow_mut().get_mut(key) {
            *slot = Some(task);
        }
    }

    /// Aborts every request task; each drops its future (and permit) when its context next runs it.
    fn abort_all(&self) {
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        for task in tasks.into_iter().filter_map(|(_, task)| task) {
            task.abort();
        }
    }

    /// Waits until no request is in flight.
    async fn idle(&self) {
        poll_fn(|cx| {
            if self.requests.get() == 0 {
                self.waiter.take();
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
pub(crate) struct Permit {
    budget: Rc<Budget>,
    bytes: usize,
    key: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let budget = &self.budget;
        budget.requests.set(budget.requests.get() - 1);
        budget.bytes.set(budget.bytes.get() - self.bytes);
        budget.activity.requests.fetch_sub(1, Ordering::Relaxed);
        // Detaches this task's own handle (its key may be gone after abort_all).
        let handle = budget.tasks.borrow_mut().try_remove(self.key);
        drop(handle);
        if let Some(waker) = budget.waiter.take() {
            waker.wake();
        }
    }
}
