//! The daemon: the image, the IoThreads, the listening socket, and the front end's messages handled
//! on the caller's context as an fd handler (no thread per connection, no read before readiness).

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aioctx::io::Async;
use aioctx::IoThread;
use futures::future::{select, Either};
use vhost::vhost_user::{BackendReqHandler, Error as VhostError};

use super::backend::{BackendConfig, BlkBackend};
use super::framing::{next_message, STALL_LIMIT};
use crate::virtio_blk::{DeviceCounters, Limits};

/// Most bytes one request may move: QEMU's vhost-user-blk front end lets a Linux guest send up to
/// `max_sectors_kb` (1280 KiB by default) in one request, which the 1 MiB default of the in-process
/// device would refuse.
pub const MAX_TRANSFER: u64 = 4 << 20;

/// Most data descriptors in one request (`seg_max`), QEMU's default for a 128-entry queue.
pub const MAX_SEGMENTS: usize = 126;

/// How the daemon serves its image.
#[derive(Clone, Debug)]
pub struct Options {
    /// The raw image or block device.
    pub image: PathBuf,
    /// The Unix socket to listen on (replaced if it exists).
    pub socket: PathBuf,
    /// Virtqueues offered to the front end.
    pub num_queues: u16,
    /// IoThreads serving them (default: one per core, at most `num_queues`), named `vhost-blk-N`.
    /// Ignored when `named_iothreads` is not empty.
    pub iothreads: Option<usize>,
    /// IoThreads by name (`--iothread ID[,poll-max-ns=NS]`), as a QMP monitor shows them
    /// (`/objects/ID`); queues go round-robin over them.
    pub named_iothreads: Vec<crate::nbd::IoThreadSpec>,
    /// Offer VIRTIO_BLK_F_RO and open the image read-only.
    pub read_only: bool,
    /// Open the image with `O_DIRECT` (guest buffers must then be 512-byte aligned, as a Linux
    /// guest's are).
    pub direct: bool,
    /// The IoThreads' busy-polling budget in ns (default: the IoThread default; 0 disables it).
    pub poll_max_ns: Option<u64>,
    /// Create the image with this many bytes if it does not exist, or grow it to this size.
    pub size: Option<u64>,
    /// The event loop backend of the IoThreads (and of the main context, for callers that build it
    /// from these options, as the example binary does).
    pub backend: aioctx::Backend,
    /// How long the front end may leave a message half-sent or its replies unread before it is
    /// dropped (default [`STALL_LIMIT`]).
    pub stall_limit: Duration,
}

impl Options {
    /// Defaults for `image` served on `socket`: one queue, the IoThread defaults, read-write.
    pub fn new(image: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> Self {
        Options {
            image: image.into(),
            socket: socket.into(),
            num_queues: 1,
            iothreads: None,
            named_iothreads: Vec::new(),
            read_only: false,
            direct: false,
            poll_max_ns: None,
            size: None,
            stall_limit: STALL_LIMIT,
            backend: aioctx::Backend::Auto,
        }
    }
}

/// A vhost-user-blk daemon, bound and ready: see [`serve_until`](Self::serve_until).
#[derive(Debug)]
pub struct Daemon {
    backend: Arc<Mutex<BlkBackend>>,
    config: Arc<BackendConfig>,
    listener: UnixListener,
    socket: PathBuf,
    image_path: PathBuf,
    iothreads: Vec<Arc<IoThread>>,
    front_ends: Cell<u64>,
    stall_limit: Duration,
}

fn open_image(options: &Options) -> io::Result<File> {
    let mut open = OpenOptions::new();
    open.read(true).write(!options.read_only);
    if !options.read_only && options.size.is_some() {
        open.create(true);
    }
    if options.direct {
        open.custom_flags(libc::O_DIRECT);
    }
    let mut image = open.open(&options.image).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("opening {}: {e}", options.image.display()),
        )
    })?;
    if let Some(size) = options.size {
        if options.read_only {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--size with --read-only: a read-only image cannot be created or grown",
            ));
        }
        if image.seek(SeekFrom::End(0))? < size {
            image.set_len(size)?;
        }
    }
    Ok(image)
}

impl Daemon {
    /// Opens the image, starts the IoThreads and listens on the socket.
    pub fn bind(options: &Options) -> io::Result<Daemon> {
        if options.num_queues == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "num_queues must be at least 1",
            ));
        }
        let mut image = open_image(options)?;
        // A block device has no length in its metadata; seeking to its end measures it.
        let capacity = image.seek(SeekFrom::End(0))?;
        if capacity < crate::virtio_blk::SECTOR_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} holds {capacity} bytes: less than one sector",
                    options.image.display()
                ),
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = options
            .iothreads
            .unwrap_or(cores)
            .clamp(1, usize::from(options.num_queues));
        let specs: Vec<crate::nbd::IoThreadSpec> = if options.named_iothreads.is_empty() {
            (0..threads)
                .map(|i| crate::nbd::IoThreadSpec {
                    id: format!("vhost-blk-{i}"),
                    poll_max_ns: None,
                })
                .collect()
        } else {
            options.named_iothreads.clone()
        };
        let iothreads = specs
            .into_iter()
            .map(|spec| {
                let mut builder = IoThread::builder().name(spec.id).backend(options.backend);
                if let Some(ns) = spec.poll_max_ns.or(options.poll_max_ns) {
                    builder = builder.poll_max_ns(ns);
                }
                builder.spawn().map(Arc::new)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let limits = Limits {
            max_transfer: MAX_TRANSFER,
            max_segments: MAX_SEGMENTS,
            ..Limits::for_capacity(capacity)
        };
        let config = Arc::new(BackendConfig {
            image,
            limits,
            read_only: options.read_only,
            num_queues: options.num_queues,
            iothreads: iothreads.iter().map(|t| t.remote().clone()).collect(),
        });
        match std::fs::remove_file(&options.socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&options.socket).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("listening on {}: {e}", options.socket.display()),
            )
        })?;
        Ok(Daemon {
            backend: Arc::new(Mutex::new(BlkBackend::new(config.clone()))),
            config,
            listener,
            socket: options.socket.clone(),
            image_path: options.image.clone(),
            iothreads,
            front_ends: Cell::new(0),
            stall_limit: options.stall_limit,
        })
    }

    /// The socket the daemon listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The IoThreads serving the queues.
    pub fn iothreads(&self) -> &[Arc<IoThread>] {
        &self.iothreads
    }

    /// Each queue's counters, totals over every front end so far.
    pub fn counters(&self) -> Vec<Arc<DeviceCounters>> {
        self.lock().counters().to_vec()
    }

    /// Front ends served so far (refused second connections do not count).
    pub fn front_ends(&self) -> u64 {
        self.front_ends.get()
    }

    fn lock(&self) -> MutexGuard<'_, BlkBackend> {
        // A panic while the backend was locked left it as it was between two messages.
        self.backend.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves front ends one at a time until `stop` completes: a second connection while one is
    /// served is closed at once with a log line; a front end that goes away (or sends a message the
    /// device refuses) has its rings stopped and its memory unmapped, and the next one is accepted.
    /// Runs on the current aioctx context (the daemon's main thread).
    pub async fn serve_until(&self, stop: impl Future<Output = ()>) -> io::Result<()> {
        let listener = Async::new(self.listener.try_clone()?)?;
        let mut stop = pin!(stop);
        loop {
            let accept = pin!(listener.read_with(|l| l.accept()));
            let stream = match select(accept, stop.as_mut()).await {
                Either::Left((accepted, _)) => accepted?.0,
                Either::Right(((), _)) => return Ok(()),
            };
            self.front_ends.set(self.front_ends.get() + 1);
            let served = pin!(self.serve_front_end(stream));
            let refusing = pin!(refuse_others(&listener));
            let outcome = select(select(served, refusing), stop.as_mut()).await;
            self.lock().disconnect();
            match outcome {
                Either::Left((Either::Left((res, _)), _)) => {
                    if let Err(e) = res {
                        eprintln!("vhost-user-blk: front end: {e}");
                    }
                }
                Either::Left((Either::Right((res, _)), _)) => return res,
                Either::Right(((), _)) => return Ok(()),
            }
        }
    }

    async fn serve_front_end(&self, stream: UnixStream) -> io::Result<()> {
        let handler = BackendReqHandler::from_stream(stream, self.backend.clone());
        let mut conn = Async::new(handler)?;
        loop {
            // The crate would spin on a socket with no whole message queued (see `framing`).
            if !next_message(&conn, self.stall_limit).await? {
                return Ok(());
            }
            match conn.get_mut().handle_request() {
                Ok(()) => {}
                Err(VhostError::Disconnected) => return Ok(()),
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("closing the connection: {e}"),
                    ))
                }
            }
        }
    }

    /// Stops the daemon: rings stopped (requests in flight finish), IoThreads stopped (once no
    /// one else, a QMP monitor say, holds them), the image flushed, the socket removed.
    pub fn shutdown(self) -> io::Result<()> {
        self.lock().disconnect();
        drop(self.backend);
        drop(self.iothreads);
        let _ = std::fs::remove_file(&self.socket);
        if self.config.read_only {
            return Ok(());
        }
        self.config.image.sync_all()
    }
}

impl Daemon {
    /// Starts a QMP monitor on `path` whose in-band commands run on `ml` (serve with
    /// [`serve_until`](Self::serve_until) inside `ml.block_on`): `qom-list /objects` and
    /// `query-iothreads` show the daemon's IoThreads, `qom-set` tunes them while they serve,
    /// `query-block-exports` lists the export (`type` `vhost-user-blk`, id `vhost-user-blk0`, the
    /// image's file name as `node-name`), and `quit` calls `on_quit` (make it end `serve_until`).
    ///
    /// ```no_run
    /// use examples::vhost_user_blk::{Daemon, Options};
    /// let ml = aioctx::MainLoop::builder().handle_signals(false).build()?;
    /// let daemon = Daemon::bind(&Options::new("disk.img", "/tmp/vhost.sock"))?;
    /// let (quit, quitted) = futures::channel::oneshot::channel::<()>();
    /// let quit = std::sync::Mutex::new(Some(quit));
    /// let monitor = daemon.monitor(&ml, "/tmp/qmp.sock", move || {
    ///     if let Some(quit) = quit.lock().unwrap().take() {
    ///         let _ = quit.send(());
    ///     }
    /// })?;
    /// ml.block_on(daemon.serve_until(async { let _ = quitted.await; }))?;
    /// monitor.shutdown();
    /// daemon.shutdown()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn monitor(
        &self,
        ml: &aioctx::MainLoop,
        path: impl AsRef<Path>,
        on_quit: impl Fn() + Send + Sync + 'static,
    ) -> io::Result<crate::qmp::Monitor> {
        let node_name = self
            .image_path
            .file_name()
            .map_or_else(|| "image".into(), |n| n.to_string_lossy().into_owned());
        let mut builder = crate::qmp::Monitor::builder()
            .main_loop(ml)
            .on_quit(on_quit)
            .block_exports(move || {
                vec![crate::qmp::BlockExport {
                    id: "vhost-user-blk0".into(),
                    kind: "vhost-user-blk".into(),
                    node_name: node_name.clone(),
                    shutting_down: false,
                }]
            });
        for io in &self.iothreads {
            builder = builder.iothread(Arc::clone(io));
        }
        builder.bind(path)
    }
}

/// Accepts and closes connections while a front end is served: vhost-user has no refusal message,
/// so a second front end sees its socket closed.
async fn refuse_others(listener: &Async<UnixListener>) -> io::Result<()> {
    loop {
        let (stream, _) = listener.read_with(|l| l.accept()).await?;
        eprintln!("vhost-user-blk: refusing a second front end: one is connected already");
        drop(stream);
    }
}
