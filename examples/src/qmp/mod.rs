//! A QMP monitor (QEMU's Machine Protocol) on a Unix socket, served the way QEMU serves it
//! (monitor/qmp.c): a monitor IOThread accepts, parses and writes; in-band commands are queued (at
//! most [`QUEUE_LEN`] per connection) and run in order on the main loop's iohandler context, so a
//! nested wait of the main context never runs them; `exec-oob` commands run at once on the monitor
//! IOThread and are answered while the main thread is busy.
//!
//! The protocol is QEMU's (docs/interop/qmp-spec.rst), shaped like qemu-storage-daemon's so the
//! same clients and scripts work on both: the greeting offers the `oob` capability; until
//! `qmp_capabilities` succeeds every other command gets `CommandNotFound`; replies echo the
//! request's `id`; errors carry QEMU's `class` and `desc`; events carry a `timestamp`; output is one
//! JSON object per line (CRLF); input is a JSON stream (objects back to back, no newline needed)
//! with a bounded buffer ([`MAX_INPUT`]).
//!
//! Commands: `qmp_capabilities`, `query-version`, `query-commands`, `qom-list` (`/objects` lists
//! one `child<iothread>` per IOThread), `qom-get`/`qom-set` of an IOThread's `poll-max-ns`,
//! `poll-grow`, `poll-shrink`, `aio-max-batch`, `poll-weight` (the weight of the block-time averages;
//! not a property of QEMU 10.0's iothread) and `x-aioctx-poll-min-hit-percent` (the
//! polling gate), applied to the running IOThread and read back from it; `query-iothreads` (the
//! system emulator's shape plus those two and `x-aioctx-stats`: iterations, poll hits and misses, ns spent polling,
//! eventfd writes made and avoided, io_uring enters; allowed out of band, unlike QEMU: it needs no main
//! thread, but it asks each IOThread for its parameters, so an IOThread stuck in a callback delays it),
//! `query-block-exports` and `quit` (replies, sends the `SHUTDOWN` event and stops the main loop).
//!
//! Bad input gets QEMU's replies and the monitor serves on: malformed JSON (`JSON parse error,
//! ...`, serde_json's wording after QEMU's prefix; one error per malformed top-level value),
//! input that is not an object, unknown members, oversized input (`JSON token size limit
//! exceeded`), wrong argument types, unknown commands, commands before negotiation. A client that
//! disconnects mid-command costs nothing but its own replies.

mod commands;
mod conn;
mod wire;

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aioctx::{IoThread, JoinHandle, MainLoop, PollParams, Remote};
use futures::channel::mpsc;
use serde_json::{json, Value};

pub use wire::MAX_INPUT;

/// In-band requests queued per connection before the monitor stops reading its input (QEMU's
/// `QMP_REQ_QUEUE_LEN_MAX`).
pub const QUEUE_LEN: usize = 8;

/// Lines (replies and events) queued for one client before the monitor stops reading its input;
/// events that find the queue full are dropped for that client.
pub const OUT_QUEUE_LEN: usize = 64;

/// How long [`Monitor::shutdown`] waits for a client to take the replies and events queued for it.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// How long the monitor waits before accepting again after a failed accept (at the fd limit, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One entry of `query-block-exports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockExport {
    /// The export's id.
    pub id: String,
    /// `nbd` or `vhost-user-blk`.
    pub kind: String,
    /// The block node it exports.
    pub node_name: String,
    /// Whether the export is going away.
    pub shutting_down: bool,
}

type ExportsFn = Box<dyn Fn() -> Vec<BlockExport> + Send + Sync>;
type QuitFn = Box<dyn Fn() + Send + Sync>;

/// Configures a [`Monitor`].
///
/// ```no_run
/// use std::sync::Arc;
/// use examples::qmp::Monitor;
///
/// let ml = aioctx::MainLoop::new()?;
/// let io0 = Arc::new(aioctx::IoThread::spawn("io0")?);
/// let monitor = Monitor::builder()
///     .main_loop(&ml)
///     .iothread(Arc::clone(&io0))
///     .bind("/tmp/qmp.sock")?;
/// ml.run(); // until `quit`, SIGINT or SIGTERM
/// monitor.shutdown();
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "a monitor builder does nothing until .bind() is called"]
pub struct MonitorBuilder {
    iothreads: Vec<Arc<IoThread>>,
    exports: Option<ExportsFn>,
    version: Value,
    dispatch: Option<(Remote, QuitFn)>,
    quit_hooks: Vec<QuitFn>,
}

impl std::fmt::Debug for MonitorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorBuilder")
            .field("iothreads", &self.iothreads)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl MonitorBuilder {
    /// Shows `io` in the QOM tree (`/objects/<name>`) and in `query-iothreads`.
    ///
    /// ```
    /// let io = std::sync::Arc::new(aioctx::IoThread::spawn("io0")?);
    /// let _builder = examples::qmp::Monitor::builder().iothread(io);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn iothread(mut self, io: Arc<IoThread>) -> Self {
        self.iothreads.push(io);
        self
    }

    /// What `query-block-exports` lists, asked each time on the main thread.
    ///
    /// ```
    /// use examples::qmp::{BlockExport, Monitor};
    /// let _builder = Monitor::builder().block_exports(|| {
    ///     vec![BlockExport {
    ///         id: "disk".into(),
    ///         kind: "nbd".into(),
    ///         node_name: "file0".into(),
    ///         shutting_down: false,
    ///     }]
    /// });
    /// ```
    pub fn block_exports(
        mut self,
        list: impl Fn() -> Vec<BlockExport> + Send + Sync + 'static,
    ) -> Self {
        self.exports = Some(Box::new(list));
        self
    }

    /// The version in the greeting and `query-version` (default: this crate's, package
    /// `aioctx-examples`).
    ///
    /// ```
    /// let _builder = examples::qmp::Monitor::builder().version(10, 0, 2, "aioctx");
    /// ```
    pub fn version(mut self, major: u64, minor: u64, micro: u64, package: &str) -> Self {
        self.version = version(major, minor, micro, package);
        self
    }

    /// Runs in-band commands on `ml`'s iohandler context (as QEMU runs them on `iohandler_ctx`)
    /// and makes `quit` stop `ml`'s [`run`](MainLoop::run). Required.
    ///
    /// ```
    /// let ml = aioctx::MainLoop::builder()
    ///     .context(aioctx::glib::MainContext::new())
    ///     .handle_signals(false)
    ///     .build()?;
    /// let _builder = examples::qmp::Monitor::builder().main_loop(&ml);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn main_loop(mut self, ml: &MainLoop) -> Self {
        let handle = ml.handle();
        self.dispatch = Some((
            ml.iohandler_context().remote(),
            Box::new(move || handle.quit()),
        ));
        self
    }

    /// Also runs `hook` on the main thread when `quit` succeeds, after its reply and the SHUTDOWN
    /// event (e.g. to stop a server whose `serve` runs the main loop).
    ///
    /// ```
    /// let _builder = examples::qmp::Monitor::builder().on_quit(|| eprintln!("quitting"));
    /// ```
    pub fn on_quit(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.quit_hooks.push(Box::new(hook));
        self
    }

    /// Listens on `path` (a stale socket there is replaced, as QEMU's socket chardev does) and
    /// starts the monitor IOThread.
    ///
    /// Errors: no [`main_loop`](Self::main_loop) was given (`InvalidInput`), the socket cannot be
    /// bound, the IOThread cannot start.
    ///
    /// ```no_run
    /// let ml = aioctx::MainLoop::new()?;
    /// let monitor = examples::qmp::Monitor::builder().main_loop(&ml).bind("/tmp/qmp.sock")?;
    /// assert_eq!(monitor.path(), std::path::Path::new("/tmp/qmp.sock"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind(self, path: impl AsRef<Path>) -> io::Result<Monitor> {
        let Some((dispatch_remote, quit_main_loop)) = self.dispatch else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a QMP monitor needs a main loop to run its in-band commands",
            ));
        };
        let path = path.as_ref().to_owned();
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(&path)?;
        }
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
        let shared = Arc::new(Shared {
            version: self.version,
            iothreads: self
                .iothreads
                .into_iter()
                .map(|io| IoThreadEntry { io })
                .collect(),
            exports: self.exports,
            dispatch_remote,
            on_quit: {
                let hooks = self.quit_hooks;
                Box::new(move || {
                    quit_main_loop();
                    hooks.iter().for_each(|hook| hook());
                })
            },
            clients: Mutex::new(slab::Slab::new()),
            connections: Mutex::new(Vec::new()),
        });
        let thread = IoThread::builder().name("mon_iothread").spawn()?;
        let accept = thread.remote().spawn_local_with({
            let shared = Arc::clone(&shared);
            move || accept_loop(listener, shared)
        });
        Ok(Monitor {
            shared,
            thread: Some(thread),
            accept,
            path,
        })
    }
}

async fn accept_loop(listener: std::os::unix::net::UnixListener, shared: Arc<Shared>) {
    let Ok(listener) = aioctx::net::UnixListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: the monitor stays up and its clients are served; accepting again
            // at once would spin on the still-readable listener.
            aioctx::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let task = aioctx::spawn_local(conn::serve(stream, Arc::clone(&shared)));
        let mut connections = lock(&shared.connections);
        connections.retain(|t| !t.is_finished());
        connections.push(task);
    }
}

fn version(major: u64, minor: u64, micro: u64, package: &str) -> Value {
    json!({"qemu": {"major": major, "minor": minor, "micro": micro}, "package": package})
}

/// A running QMP monitor (see the [module docs](self)). Dropping it without
/// [`shutdown`](Self::shutdown) shuts it down too.
pub struct Monitor {
    shared: Arc<Shared>,
    thread: Option<IoThread>,
    accept: JoinHandle<()>,
    path: PathBuf,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// A builder: no IOThreads, no exports, this crate's version.
    ///
    /// ```
    /// let _builder = examples::qmp::Monitor::builder();
    /// ```
    pub fn builder() -> MonitorBuilder {
        MonitorBuilder {
            iothreads: Vec::new(),
            exports: None,
            version: version(
                0,
                0,
                0,
                concat!("aioctx-examples ", env!("CARGO_PKG_VERSION")),
            ),
            dispatch: None,
            quit_hooks: Vec::new(),
        }
    }

    /// The socket's path.
    ///
    /// ```no_run
    /// let ml = aioctx::MainLoop::new()?;
    /// let monitor = examples::qmp::Monitor::builder().main_loop(&ml).bind("/tmp/m.sock")?;
    /// println!("QMP on {}", monitor.path().display());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends an event to every client past negotiation, with the current time as its timestamp.
    ///
    /// ```no_run
    /// let ml = aioctx::MainLoop::new()?;
    /// let monitor = examples::qmp::Monitor::builder().main_loop(&ml).bind("/tmp/m.sock")?;
    /// monitor.event("SHUTDOWN", serde_json::json!({"guest": false, "reason": "host-signal"}));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn event(&self, name: &str, data: Value) {
        self.shared.event(name, data);
    }

    /// Stops accepting, flushes every reply and event already produced to its client, closes the
    /// connections, stops the monitor IOThread and removes the socket.
    ///
    /// ```no_run
    /// let ml = aioctx::MainLoop::new()?;
    /// let monitor = examples::qmp::Monitor::builder().main_loop(&ml).bind("/tmp/m.sock")?;
    /// ml.run();
    /// monitor.shutdown();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shutdown(mut self) {
        self.close();
    }

    fn close(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.accept.abort();
        for task in lock(&self.shared.connections).drain(..) {
            task.abort();
        }
        let clients: Vec<Client> = lock(&self.shared.clients).drain().collect();
        // Each writer flushes what is queued, then closes; one whose client does not read is
        // aborted after FLUSH_LIMIT.
        let flushes: Vec<JoinHandle<()>> = clients
            .into_iter()
            .map(|mut client| {
                let _ = client.out.try_send(conn::Out::Close);
                drop(client.out);
                let mut writer = client.writer;
                thread.remote().spawn(async move {
                    if aioctx::time::timeout(FLUSH_LIMIT, &mut writer)
                        .await
                        .is_err()
                    {
                        writer.abort();
                    }
                })
            })
            .collect();
        for flush in flushes {
            let _ = flush.join_blocking();
        }
        thread.stop();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.close();
    }
}

/// An IOThread the monitor shows.
struct IoThreadEntry {
    io: Arc<IoThread>,
}

impl IoThreadEntry {
    /// Sets one of the iothread's int properties on the running IOThread.
    fn set(&self, property: &str, value: u64) -> io::Result<()> {
        if property == "aio-max-batch" {
            let max_batch = usize::try_from(value).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "aio-max-batch too large")
            })?;
            return self.io.set_max_batch(max_batch);
        }
        let mut params = self.io.poll_params()?;
        let field = poll_param(&mut params, property).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no property {property}"),
            )
        })?;
        *field = value;
        self.io.set_poll_params(params)
    }
}

/// The `PollParams` field an iothread property names (qom-get and qom-set share it); `None` for
/// `aio-max-batch`, `type` and unknown names.
fn poll_param<'a>(params: &'a mut PollParams, property: &str) -> Option<&'a mut u64> {
    Some(match property {
        "poll-max-ns" => &mut params.max_ns,
        "poll-grow" => &mut params.grow,
        "poll-shrink" => &mut params.shrink,
        "poll-weight" => &mut params.weight,
        "x-aioctx-poll-min-hit-percent" => &mut params.min_hit_percent,
        _ => return None,
    })
}

/// A connection past its greeting, as events reach it.
struct Client {
    session: Arc<Session>,
    out: mpsc::Sender<conn::Out>,
    writer: JoinHandle<()>,
}

/// A connection's negotiation state, read by both threads.
#[derive(Debug, Default)]
struct Session {
    negotiated: AtomicBool,
    oob: AtomicBool,
}

impl Session {
    fn oob_enabled(&self) -> bool {
        // Acquire pairs with the Release stores of `qmp_capabilities` on the main thread.
        self.oob.load(Ordering::Acquire)
    }
}

/// What the monitor IOThread, the main loop's dispatchers and the [`Monitor`] share.
struct Shared {
    version: Value,
    iothreads: Vec<IoThreadEntry>,
    exports: Option<ExportsFn>,
    dispatch_remote: Remote,
    on_quit: QuitFn,
    clients: Mutex<slab::Slab<Client>>,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn greeting(&self) -> Value {
        json!({"QMP": {"version": self.version, "capabilities": ["oob"]}})
    }

    fn add_client(&self, client: Client) -> usize {
        lock(&self.clients).insert(client)
    }

    fn remove_client(&self, key: usize) {
        let mut clients = lock(&self.clients);
        if clients.contains(key) {
            clients.remove(key);
        }
    }

    fn event(&self, name: &str, data: Value) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = wire::line(&json!({
            "event": name,
            "data": data,
            "timestamp": {"seconds": now.as_secs(), "microseconds": now.subsec_micros()},
        }));
        for (_, client) in lock(&self.clients).iter_mut() {
            if client.session.negotiated.load(Ordering::Acquire) {
                // A client with OUT_QUEUE_LEN lines unread misses the event.
                let _ = client.out.try_send(conn::Out::Line(line.clone()));
            }
        }
    }

    /// `quit` was answered: the SHUTDOWN event (QEMU's system emulator sends it; the storage daemon
    /// does not), then the main loop stops.
    fn quit(&self) {
        self.event(
            "SHUTDOWN",
            json!({"guest": false, "reason": "host-qmp-quit"}),
        );
        (self.on_quit)();
    }
}

/// Locks `m`, ignoring poisoning (every critical section here leaves its data consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
