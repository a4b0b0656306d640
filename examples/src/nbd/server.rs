//! The server: binds the listener, opens the file, starts the IOThreads, accepts on the calling
//! thread's own context and hands each connection (a std socket, which is `Send`) round-robin to an
//! IOThread, where it becomes an aioctx stream served by [`serve_connection`].

use std::future::Future;
use std::io::{self, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aioctx::io::Async;
use aioctx::{AioContext, IoThread, JoinHandle, MainLoop};
use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use futures::stream::{FuturesUnordered, StreamExt};

use super::conn::{serve_connection, Shared as ConnShared};
use super::export::Export;
use super::tls::{Tls, TlsConfig};

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address (port 0 picks a free port).
    Tcp(SocketAddr),
    /// A Unix-domain socket path (must not exist; removed when the server stops).
    Unix(PathBuf),
}

/// What to serve and how.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file (or block device) to export; `None` creates a temporary file of `size` bytes, removed
    /// when the server is dropped.
    pub file: Option<PathBuf>,
    /// The size of the temporary file when `file` is `None`.
    pub size: u64,
    /// The export's name (clients asking for the empty name get it too).
    pub export_name: String,
    /// Where to listen.
    pub listen: Listen,
    /// How many IOThreads serve connections (at least 1), named `nbd0`, `nbd1`... Ignored when
    /// `named_iothreads` is not empty.
    pub iothreads: usize,
    /// IOThreads by name (`--iothread ID[,poll-max-ns=NS]`), as QEMU's `-object iothread,id=ID`:
    /// their ids are what a QMP monitor shows (`/objects/ID`).
    pub named_iothreads: Vec<IoThreadSpec>,
    /// Refuse writes with `EPERM`.
    pub read_only: bool,
    /// Open the file with `O_DIRECT` (requests must then be 512-byte aligned; the server says so).
    pub direct: bool,
    /// The IOThreads' busy-polling budget (`None`: the IOThread default).
    pub poll_max_ns: Option<u64>,
    /// Connections served at once (`None`: no limit, as qemu-nbd with `--shared=0`); more are
    /// accepted and closed at once, with a log line. With the per-connection budget (64 requests,
    /// 64 MiB of buffers) a limit bounds what clients can make the server allocate.
    pub max_connections: Option<usize>,
    /// How long a client may take to finish the handshake before it is dropped (`None`: no limit). A
    /// client that connects and stalls would otherwise pin a connection slot and its fd for ever;
    /// qemu-nbd's default `--handshake-limit` is 10 s too.
    pub handshake_limit: Option<Duration>,
    /// How long a closing connection (client EOF, `DISC`, shutdown) waits for its in-flight requests
    /// to be answered before aborting them: a client that never reads its replies cannot pin them.
    pub drain_timeout: Duration,
    /// Require TLS (`NBD_OPT_STARTTLS`) with these x509 credentials (`None`: plain connections).
    pub tls: Option<TlsConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            file: None,
            size: 64 * 1024 * 1024,
            export_name: "disk".into(),
            listen: Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 10809))),
            iothreads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            named_iothreads: Vec::new(),
            read_only: false,
            direct: false,
            poll_max_ns: None,
            max_connections: None,
            handshake_limit: Some(Duration::from_secs(10)),
            drain_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// A named IOThread: `ID[,poll-max-ns=NS]` on the command line.
///
/// ```
/// use examples::nbd::IoThreadSpec;
/// let spec: IoThreadSpec = "io1,poll-max-ns=0".parse().unwrap();
/// assert_eq!(spec, IoThreadSpec { id: "io1".into(), poll_max_ns: Some(0) });
/// assert!("io1,poll-grow=2".parse::<IoThreadSpec>().is_err());
/// assert!("".parse::<IoThreadSpec>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoThreadSpec {
    /// The IOThread's id (QOM path `/objects/ID`; OS thread `IO ID`).
    pub id: String,
    /// Its busy-polling budget (`None`: [`Config::poll_max_ns`], else the IOThread default).
    pub poll_max_ns: Option<u64>,
}

impl std::str::FromStr for IoThreadSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let id = parts.next().unwrap_or_default();
        if id.is_empty() || id.contains('/') || id.contains('=') {
            return Err(format!("{s:?}: expected ID[,poll-max-ns=NS]"));
        }
        let mut spec = IoThreadSpec {
            id: id.to_owned(),
            poll_max_ns: None,
        };
        for part in parts {
            match part.split_once('=') {
                Some(("poll-max-ns", ns)) => {
                    let ns = ns
                        .parse::<u64>()
                        .ok()
                        .filter(|&ns| ns <= i64::MAX as u64)
                        .ok_or_else(|| {
                            format!("{s:?}: poll-max-ns must be an integer in [0, 2^63)")
                        })?;
                    spec.poll_max_ns = Some(ns);
                }
                _ => return Err(format!("{s:?}: unknown option {part:?} (only poll-max-ns)")),
            }
        }
        Ok(spec)
    }
}

/// What the server is doing right now, readable from any thread.
#[derive(Debug, Default)]
pub struct Activity {
    pub(crate) connections: AtomicUsize,
    pub(crate) requests: AtomicUsize,
}

impl Activity {
    /// Connections being served (handshake or transmission).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests read and not yet answered (or aborted), over all connections.
    pub fn requests_in_flight(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Counts a connection for [`Activity`] while it lives.
struct ConnectionCount(Arc<Activity>);

impl ConnectionCount {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionCount(Arc::clone(activity))
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves when the server is asked to stop (shared by the acceptor and every connection).
pub(crate) type ShutdownSignal = Shared<oneshot::Receiver<()>>;

/// Asks a running [`Server`] to stop: from any thread, any number of times.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    sender: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    signals: Arc<Mutex<SignalWatch>>,
}

/// Whether SIGINT/SIGTERM should stop the server, and the context `serve` runs on while it runs.
#[derive(Debug, Default)]
struct SignalWatch {
    requested: bool,
    serving: Option<aioctx::Remote>,
}

impl ShutdownHandle {
    /// Stops accepting; connections finish the requests they have read, answer them and close; the
    /// file is flushed; then [`Server::serve`] returns.
    pub fn shutdown(&self) {
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    ///
    /// ```
    /// use examples::nbd::{Config, Listen, Server};
    /// let server = Server::bind(Config {
    ///     listen: Listen::Tcp("127.0.0.1:0".parse().unwrap()),
    ///     size: 1 << 20,
    ///     ..Config::default()
    /// })?;
    /// let stop = server.shutdown_handle();
    /// assert!(!stop.is_shutting_down());
    /// stop.shutdown();
    /// assert!(stop.is_shutting_down());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_shutting_down(&self) -> bool {
        self.sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Shuts down on the first SIGINT or SIGTERM; a second one exits the process at once with status
    /// 128 + its number. The signals are received on the context `serve` runs its accept loop on
    /// (`aioctx::signal`, no helper thread). Called while `serve` runs, the handlers are installed
    /// when this returns; called before, `serve` installs them first thing.
    pub fn on_termination_signals(&self) -> io::Result<()> {
        let serving = {
            let mut watch = self.signals.lock().unwrap_or_else(|e| e.into_inner());
            watch.requested = true;
            watch.serving.clone()
        };
        match serving {
            Some(remote) => {
                let stop = self.clone();
                remote.call(move || watch_termination_signals(stop))?
            }
            None => Ok(()),
        }
    }
}

/// On the current context: the first SIGINT or SIGTERM stops the server, a second one exits.
fn watch_termination_signals(stop: ShutdownHandle) -> io::Result<()> {
    use aioctx::signal::signal;
    let mut int = signal(libc::SIGINT)?;
    let mut term = signal(libc::SIGTERM)?;
    drop(aioctx::spawn_local(async move {
        let mut first = true;
        loop {
            let signum = futures::select_biased! {
                _ = int.recv().fuse() => libc::SIGINT,
                _ = term.recv().fuse() => libc::SIGTERM,
            };
            if first {
                eprintln!("nbd-server: stopping (finishing in-flight requests)");
                stop.shutdown();
                first = false;
            } else {
                eprintln!("nbd-server: second signal, exiting now");
                std::process::exit(128 + signum);
            }
        }
    }));
    Ok(())
}

enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

/// An NBD server bound and ready to [`serve`](Server::serve).
///
/// ```no_run
/// use examples::nbd::{Config, Listen, Server};
/// let server = Server::bind(Config {
///     listen: Listen::Tcp("127.0.0.1:0".parse().unwrap()),
///     ..Config::default()
/// })?;
/// println!("{}", server.uri());
/// let stop = server.shutdown_handle();
/// let thread = std::thread::spawn(move || server.serve());
/// stop.shutdown();
/// thread.join().unwrap()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Server {
    /// Taken by `serve`.
    listener: Option<Listener>,
    export: Arc<Export>,
    threads: Vec<Arc<IoThread>>,
    export_name: String,
    uri: String,
    handle: ShutdownHandle,
    signal: ShutdownSignal,
    max_connections: Option<usize>,
    handshake_limit: Option<Duration>,
    drain_timeout: Duration,
    tls: Option<Tls>,
    activity: Arc<Activity>,
    /// Removed on drop, after the IOThreads stopped.
    temp_file: Option<TempFile>,
}

impl Server {
    /// Opens (or creates) the file, starts the IOThreads and binds the listener.
    ///
    /// Errors: the file cannot be opened (or is empty), `O_DIRECT` refused, the address or socket
    /// path cannot be bound, an IOThread cannot start.
    pub fn bind(config: Config) -> io::Result<Server> {
        // Bad credentials fail here, not at the first client.
        let tls = config.tls.as_ref().map(Tls::load).transpose()?;
        let (path, temp_file) = match &config.file {
            Some(path) => (path.clone(), None),
            None => {
                let temp = TempFile::create(config.size)?;
                (temp.0.clone(), Some(temp))
            }
        };
        let export = open_export(&config, &path)?;
        let threads = spawn_iothreads(&config)?;
        let (file, size) = export;
        // A second descriptor for what aioctx::fs::File does not do (lseek for holes, fadvise).
        let map = file.try_clone()?;
        // aioctx::fs::File resolves its engine on a context: wrap the file on an IOThread.
        let file = threads[0]
            .remote()
            .call(move || aioctx::fs::File::from_std(file))??;
        let export = Arc::new(Export::new(
            config.export_name.clone(),
            file,
            map,
            size,
            config.read_only,
            config.direct,
        ));
        let name = &config.export_name;
        let (listener, uri) = match &config.listen {
            Listen::Tcp(addr) => {
                let listener = std::net::TcpListener::bind(addr)?;
                let scheme = if tls.is_some() { "nbds" } else { "nbd" };
                let uri = format!("{scheme}://{}/{name}", listener.local_addr()?);
                (Listener::Tcp(listener), uri)
            }
            Listen::Unix(path) => {
                let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("binding {}: {e}", path.display()))
                })?;
                let scheme = if tls.is_some() {
                    "nbds+unix"
                } else {
                    "nbd+unix"
                };
                let uri = format!("{scheme}:///{name}?socket={}", path.display());
                (Listener::Unix(listener, path.clone()), uri)
            }
        };
        let (sender, receiver) = oneshot::channel();
        Ok(Server {
            listener: Some(listener),
            export,
            threads,
            export_name: config.export_name.clone(),
            uri,
            handle: ShutdownHandle {
                sender: Arc::new(Mutex::new(Some(sender))),
                signals: Arc::default(),
            },
            signal: receiver.shared(),
            max_connections: config.max_connections.map(|n| n.max(1)),
            handshake_limit: config.handshake_limit,
            drain_timeout: config.drain_timeout,
            tls,
            activity: Arc::default(),
            temp_file,
        })
    }

    /// The NBD URI clients connect to (`nbd://HOST:PORT/NAME` or `nbd+unix:///NAME?socket=PATH`).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The bound TCP address (`None` for a Unix socket).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match &self.listener {
            Some(Listener::Tcp(l)) => l.local_addr().ok(),
            _ => None,
        }
    }

    /// The exported size in bytes.
    pub fn size(&self) -> u64 {
        self.export.limits.size
    }

    /// The path of the temporary file served when no file was given.
    pub fn temp_file(&self) -> Option<&Path> {
        self.temp_file.as_ref().map(|t| t.0.as_path())
    }

    /// Live counts of connections and requests.
    pub fn activity(&self) -> Arc<Activity> {
        Arc::clone(&self.activity)
    }

    /// The IOThreads serving connections (to show them on a QMP monitor, say).
    ///
    /// ```
    /// use examples::nbd::{Config, Listen, Server};
    /// let server = Server::bind(Config {
    ///     listen: Listen::Tcp("127.0.0.1:0".parse().unwrap()),
    ///     size: 1 << 20,
    ///     named_iothreads: vec!["io0".parse().unwrap(), "io1,poll-max-ns=0".parse().unwrap()],
    ///     ..Config::default()
    /// })?;
    /// let names: Vec<String> = server.iothreads().iter().map(|t| t.name().to_owned()).collect();
    /// assert_eq!(names, ["io0", "io1"]);
    /// assert_eq!(server.iothreads()[1].poll_params()?.max_ns, 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn iothreads(&self) -> Vec<Arc<IoThread>> {
        self.threads.clone()
    }

    /// The export's name.
    ///
    /// ```
    /// use examples::nbd::{Config, Listen, Server};
    /// let server = Server::bind(Config {
    ///     listen: Listen::Tcp("127.0.0.1:0".parse().unwrap()),
    ///     size: 1 << 20,
    ///     export_name: "boot".into(),
    ///     ..Config::default()
    /// })?;
    /// assert_eq!(server.export_name(), "boot");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn export_name(&self) -> &str {
        &self.export_name
    }

    /// A handle that stops [`serve`](Server::serve).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Accepts and serves connections on the calling thread (which runs its own context for the
    /// accept loop) until [`ShutdownHandle::shutdown`]; then stops accepting, waits for every
    /// connection to finish its in-flight requests, flushes the file and returns.
    pub fn serve(self) -> io::Result<()> {
        let ctx = AioContext::new()?;
        self.serve_with(ctx.remote(), &|run| ctx.block_on(run))
    }

    /// [`serve`](Self::serve) on a [`MainLoop`]: the accept loop and the signal handlers run on its
    /// aio context, and glib and the iohandler context (a QMP monitor's in-band commands) run
    /// while it serves.
    ///
    /// ```no_run
    /// use examples::nbd::{Config, Listen, Server};
    /// let ml = aioctx::MainLoop::builder().handle_signals(false).build()?;
    /// let server = Server::bind(Config {
    ///     listen: Listen::Unix("/tmp/nbd.sock".into()),
    ///     ..Config::default()
    /// })?;
    /// server.shutdown_handle().on_termination_signals()?;
    /// server.serve_on(&ml)?; // until SIGINT or SIGTERM
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn serve_on(self, ml: &MainLoop) -> io::Result<()> {
        self.serve_with(ml.aio_context().remote(), &|run| ml.block_on(run))
    }

    fn serve_with(
        mut self,
        remote: aioctx::Remote,
        block_on: &dyn for<'a> Fn(Run<'a>) -> io::Result<()>,
    ) -> io::Result<()> {
        let listener = self
            .listener
            .take()
            .ok_or_else(|| io::Error::other("the listener is gone"))?;
        let socket_path = match &listener {
            Listener::Unix(_, path) => Some(path.clone()),
            Listener::Tcp(_) => None,
        };
        let signals = Arc::clone(&self.handle.signals);
        let requested = {
            let mut watch = signals.lock().unwrap_or_else(|e| e.into_inner());
            watch.serving = Some(remote);
            watch.requested
        };
        let result = block_on(Box::pin(async {
            if requested {
                watch_termination_signals(self.handle.clone())?;
            }
            let accept = AcceptOn::new(listener)?;
            self.accept_loop(accept).await
        }));
        if let Some(path) = socket_path {
            let _ = std::fs::remove_file(path);
        }
        let flushed = match result {
            Ok(()) => {
                let export = Arc::clone(&self.export);
                block_on(Box::pin(async move { export.flush().await }))
            }
            Err(e) => Err(e),
        };
        signals.lock().unwrap_or_else(|e| e.into_inner()).serving = None;
        flushed
    }

    async fn accept_loop(&self, accept: AcceptOn) -> io::Result<()> {
        let mut connections: FuturesUnordered<JoinHandle<io::Result<()>>> = FuturesUnordered::new();
        let mut next_thread = 0;
        let mut shutdown = self.signal.clone();
        let mut limit = FdLimitBackoff::default();
        loop {
            // At the process's fd limit, accepting is paused until a connection ends (freeing its fd)
            // or the backoff elapses: the listener stays readable meanwhile, so accepting at once
            // would spin.
            let pause = limit.pause();
            let paused = limit.paused();
            let next = async {
                if paused {
                    std::future::pending().await
                } else {
                    accept.next().await
                }
            };
            futures::select_biased! {
                _ = (&mut shutdown).fuse() => break,
                done = connections.select_next_some() => {
                    log_connection_end(done);
                    limit.connection_ended();
                }
                () = pause.fuse() => limit.retry(),
                accepted = next.fuse() => {
                    let stream = match accepted {
                        Ok(stream) => stream,
                        Err(e) if is_fd_limit(&e) => {
                            limit.hit(&e, connections.len());
                            continue;
                        }
                        Err(e) => {
                            // The connection went away before it was accepted (ECONNABORTED) or a
                            // transient failure: the next accept is independent of it.
                            eprintln!("nbd-server: accept: {e}");
                            continue;
                        }
                    };
                    limit.accepted();
                    if self.max_connections.is_some_and(|max| connections.len() >= max) {
                        eprintln!(
                            "nbd-server: refusing a connection: {} served (--max-connections)",
                            connections.len()
                        );
                        continue;
                    }
                    let thread = &self.threads[next_thread % self.threads.len()];
                    next_thread += 1;
                    connections.push(self.spawn_connection(thread, stream));
                }
            }
        }
        while let Some(done) = connections.next().await {
            log_connection_end(done);
        }
        Ok(())
    }

    fn spawn_connection(&self, thread: &IoThread, stream: Accepted) -> JoinHandle<io::Result<()>> {
        let count = ConnectionCount::new(&self.activity);
        let shared = ConnShared {
            export: Arc::clone(&self.export),
            shutdown: self.signal.clone(),
            activity: Arc::clone(&self.activity),
            drain_timeout: self.drain_timeout,
            handshake_limit: self.handshake_limit,
            tls: self.tls.clone(),
        };
        thread.remote().spawn_local_with(move || async move {
            let _count = count;
            match stream {
                Accepted::Tcp(s) => {
                    s.set_nodelay(true)?;
                    serve_connection(aioctx::net::TcpStream::from_std(s)?, shared).await
                }
                Accepted::Unix(s) => {
                    serve_connection(aioctx::net::UnixStream::from_std(s)?, shared).await
                }
            }
        })
    }
}

/// A future `serve` drives to completion on its context.
type Run<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + 'a>>;

impl Drop for Server {
    fn drop(&mut self) {
        // Stop the IOThreads (joining them) before the temporary file goes with the fields.
        self.threads.clear();
    }
}

/// A temporary file to export, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn create(size: u64) -> io::Result<TempFile> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("nbd-server-{}-{n}.img", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let temp = TempFile(path);
        file.set_len(size)?;
        Ok(temp)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether an accept failed because the process or the system is out of file descriptors.
fn is_fd_limit(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Accepting at the fd limit: pause, retry after a growing delay (10 ms doubling to 1 s) or as soon
/// as a connection ends, and log once per burst instead of once per failed accept.
#[derive(Default)]
struct FdLimitBackoff {
    /// The current pause, while at the limit.
    delay: Option<Duration>,
    /// Whether accepting is paused right now.
    waiting: bool,
    /// Accepts refused in this burst.
    refused: u64,
}

impl FdLimitBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const LONGEST: Duration = Duration::from_secs(1);

    fn paused(&self) -> bool {
        self.waiting
    }

    /// Sleeps for the current pause, or for ever when accepting is not paused.
    fn pause(&self) -> impl std::future::Future<Output = ()> {
        let delay = self.delay.filter(|_| self.waiting);
        async move {
            match delay {
                Some(d) => aioctx::time::sleep(d).await,
                None => std::future::pending().await,
            }
        }
    }

    fn hit(&mut self, e: &io::Error, served: usize) {
        if self.delay.is_none() {
            eprintln!(
                "nbd-server: accept: {e}; at the fd limit with {served} connections: \
                 pausing accepts until one ends"
            );
        }
        self.refused += 1;
        self.delay = Some(match self.delay {
            None => Self::FIRST,
            Some(d) => (d * 2).min(Self::LONGEST),
        });
        self.waiting = true;
    }

    fn retry(&mut self) {
        self.waiting = false;
    }

    fn connection_ended(&mut self) {
        // Its fd is free: try at once (the backoff stays, in case someone else took the fd).
        self.waiting = false;
    }

    fn accepted(&mut self) {
        if self.delay.take().is_some() {
            eprintln!(
                "nbd-server: accepting again after {} refused accepts",
                self.refused
            );
            self.refused = 0;
        }
    }
}

fn log_connection_end(done: Result<io::Result<()>, aioctx::JoinError>) {
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("nbd-server: connection closed: {e}"),
        Err(e) => eprintln!("nbd-server: connection task failed: {e}"),
    }
}

/// An accepted socket, still a std type so it can travel to its IOThread.
enum Accepted {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// The listener registered with the accepting context.
enum AcceptOn {
    Tcp(Async<std::net::TcpListener>),
    Unix(Async<std::os::unix::net::UnixListener>),
}

impl AcceptOn {
    fn new(listener: Listener) -> io::Result<Self> {
        Ok(match listener {
            Listener::Tcp(l) => AcceptOn::Tcp(Async::new(l)?),
            Listener::Unix(l, _) => AcceptOn::Unix(Async::new(l)?),
        })
    }

    async fn next(&self) -> io::Result<Accepted> {
        match self {
            AcceptOn::Tcp(l) => l
                .read_with(|l| l.accept())
                .await
                .map(|(s, _)| Accepted::Tcp(s)),
            AcceptOn::Unix(l) => l
                .read_with(|l| l.accept())
                .await
                .map(|(s, _)| Accepted::Unix(s)),
        }
    }
}

fn spawn_iothreads(config: &Config) -> io::Result<Vec<Arc<IoThread>>> {
    let specs: Vec<IoThreadSpec> = if config.named_iothreads.is_empty() {
        (0..config.iothreads.max(1))
            .map(|i| IoThreadSpec {
                id: format!("nbd{i}"),
                poll_max_ns: None,
            })
            .collect()
    } else {
        config.named_iothreads.clone()
    };
    specs
        .into_iter()
        .map(|spec| {
            let mut builder = IoThread::builder().name(spec.id);
            if let Some(ns) = spec.poll_max_ns.or(config.poll_max_ns) {
                builder = builder.poll_max_ns(ns);
            }
            builder.spawn().map(Arc::new)
        })
        .collect()
}

/// Opens the export's file and finds its size (seeking works for block devices too).
fn open_export(config: &Config, path: &Path) -> io::Result<(std::fs::File, u64)> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(!config.read_only);
    if config.direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let mut file = options
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    let size = file.seek(SeekFrom::End(0))?;
    if size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is empty: nothing to export", path.display()),
        ));
    }
    Ok((file, size))
}
