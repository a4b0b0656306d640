//! One monitor connection: a reader and a writer task on the monitor IOThread, and a dispatcher
//! task on the main loop's iohandler context that runs the in-band commands in order.

use std::rc::Rc;
use std::sync::Arc;

use futures::channel::{mpsc, oneshot};
use futures::{AsyncReadExt, AsyncWriteExt, SinkExt, StreamExt};
use serde_json::Value;

use super::commands::{self, After};
use super::wire::{self, Input, Parser};
use super::{Client, Session, Shared, OUT_QUEUE_LEN, QUEUE_LEN};

/// What the writer task sends.
#[derive(Debug)]
pub(crate) enum Out {
    Line(Vec<u8>),
    /// Flush what came before and close the connection.
    Close,
}

/// An in-band request, or an input error answered in its place in the queue.
struct Request {
    body: Result<Value, String>,
    done: oneshot::Sender<()>,
}

/// Serves one accepted connection until the peer leaves or the monitor shuts down. Runs on the
/// monitor IOThread.
pub(crate) async fn serve(stream: aioctx::net::UnixStream, shared: Arc<Shared>) {
    let stream = Rc::new(stream);
    let session = Arc::new(Session::default());
    // Bounded: a client that does not read its replies stops being read (and its in-band commands
    // stop running) once this many lines wait; see `Shared::event` for events.
    let (mut out_tx, out_rx) = mpsc::channel::<Out>(OUT_QUEUE_LEN);
    let _ = out_tx.send(Out::Line(wire::line(&shared.greeting()))).await;
    let writer = aioctx::spawn_local(write_loop(Rc::clone(&stream), out_rx));
    let key = shared.add_client(Client {
        session: Arc::clone(&session),
        out: out_tx.clone(),
        writer,
    });
    // The dispatcher runs on the main loop; its queue is bounded.
    let (queue_tx, queue_rx) = mpsc::channel::<Request>(QUEUE_LEN - 2);
    let dispatcher = shared.dispatch_remote.spawn(dispatch_loop(
        queue_rx,
        Arc::clone(&shared),
        Arc::clone(&session),
        out_tx.clone(),
    ));
    drop(dispatcher); // detached: it ends when the queue's sender is dropped
    read_loop(&stream, &shared, &session, out_tx.clone(), queue_tx).await;
    // The peer stopped sending (or is gone): no events for it any more. The writer flushes what is
    // queued and closes; replies the dispatcher still sends then go to a closed channel.
    shared.remove_client(key);
    let _ = out_tx.send(Out::Close).await;
}

async fn read_loop(
    stream: &aioctx::net::UnixStream,
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    mut out: mpsc::Sender<Out>,
    mut queue: mpsc::Sender<Request>,
) {
    let mut parser = Parser::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut inputs = Vec::new();
    loop {
        let n = match (&*stream).read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        parser.feed(&buf[..n], &mut inputs);
        for input in inputs.drain(..) {
            let body = match input {
                Input::Value(v) if commands::is_oob(&v) => {
                    // Out of band: at once, here on the monitor IOThread.
                    let (reply, _) = commands::dispatch(shared, session, v);
                    if out.send(Out::Line(wire::line(&reply))).await.is_err() {
                        return;
                    }
                    continue;
                }
                Input::Value(v) => Ok(v),
                Input::Error(desc) => Err(desc),
            };
            let (done, finished) = oneshot::channel();
            if queue.send(Request { body, done }).await.is_err() {
                return;
            }
            // Without OOB, QEMU queues one in-band command at a time: read on once it is answered.
            if !session.oob_enabled() {
                let _ = finished.await;
            }
        }
    }
}

async fn write_loop(stream: Rc<aioctx::net::UnixStream>, mut rx: mpsc::Receiver<Out>) {
    while let Some(out) = rx.next().await {
        match out {
            Out::Line(line) => {
                if (&*stream).write_all(&line).await.is_err() {
                    break;
                }
            }
            Out::Close => break,
        }
    }
    let _ = (&*stream).close().await;
}

/// On the main loop's iohandler context: runs the connection's in-band requests in order.
async fn dispatch_loop(
    mut queue: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    session: Arc<Session>,
    mut out: mpsc::Sender<Out>,
) {
    while let Some(request) = queue.next().await {
        let (reply, after) = match request.body {
            Ok(v) => commands::dispatch(&shared, &session, v),
            Err(desc) => (
                commands::error_reply(commands::generic(desc), None),
                After::Nothing,
            ),
        };
        // Waits while the client does not read (only this connection's commands wait).
        let _ = out.send(Out::Line(wire::line(&reply))).await;
        if after == After::Quit {
            shared.quit();
        }
        let _ = request.done.send(());
    }
}
