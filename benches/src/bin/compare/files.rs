//! Block I/O scenarios: 4 KiB random reads and writes on a file of real (not sparse) data.
//!
//! Each runtime uses its idiomatic best for positional I/O: aioctx `aioctx::fs::File` (io_uring
//! when the kernel has it), compio and monoio their io_uring files, glommio `BufferedFile` (page
//! cache) and `DmaFile` (O_DIRECT); tokio and smol, which have no positional async file I/O, run
//! `FileExt::{read_at, write_at}` on their blocking pools (`spawn_blocking`, `blocking::unblock`).
//! Every runtime keeps `depth` requests in flight from `depth` tasks and picks offsets from the
//! same seeded generator. The CPU column is the whole process's CPU time per operation (blocking
//! pools and the kernel's io_uring workers included: they are threads of the process).

use std::fs::OpenOptions as StdOpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aioctx::fs::{AlignedBuf, OpenOptions};

use crate::cpu;
use crate::harness::{
    aioctx_context, per_second, tokio_current_thread, Config, Metric, Scenario, Side, Table,
};
use crate::runtimes::{Compio, Executor, Glommio, Monoio, Smol};

const BLOCK: usize = 4096;

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "file_randread_qd32",
        table: Table::Peers,
        metrics: &[
            Metric::higher("4 KiB random reads, page cache", "IOPS"),
            Metric::lower("CPU per read, page cache", "us"),
        ],
        run: |side, config| run(side, config, Kind::Read, 32, false),
    },
    Scenario {
        name: "file_randread_qd1",
        table: Table::Peers,
        metrics: &[
            Metric::higher("4 KiB random reads, page cache", "IOPS"),
            Metric::lower("CPU per read, page cache", "us"),
        ],
        run: |side, config| run(side, config, Kind::Read, 1, false),
    },
    Scenario {
        name: "file_randread_qd32_direct",
        table: Table::Peers,
        metrics: &[
            Metric::higher("4 KiB random reads, O_DIRECT", "IOPS"),
            Metric::lower("CPU per read, O_DIRECT", "us"),
        ],
        run: |side, config| run(side, config, Kind::Read, 32, true),
    },
    Scenario {
        name: "file_randwrite_qd32",
        table: Table::Peers,
        metrics: &[
            Metric::higher("4 KiB random writes + 1 sync_data", "IOPS"),
            Metric::lower("CPU per write", "us"),
        ],
        run: |side, config| run(side, config, Kind::Write, 32, false),
    },
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// The shared data file, written once per process with random bytes (so no block is a hole) and
/// left in the page cache by the writing.
fn data_file(config: &Config) -> io::Result<&'static Path> {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = FILE.get() {
        return Ok(path);
    }
    let size = config.pick(256usize << 20, 16 << 20);
    let path = config.scratch.join("randio.dat");
    let mut file = std::fs::File::create(&path)?;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..size / chunk.len() {
        rng.fill(&mut chunk);
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    Ok(FILE.get_or_init(|| path))
}

/// A uniformly random block-aligned offset inside a file of `blocks` blocks.
fn offset(rng: &mut fastrand::Rng, blocks: u64) -> u64 {
    rng.u64(0..blocks) * BLOCK as u64
}

/// What every runtime's run of one file scenario needs.
#[derive(Clone, Copy)]
struct Job {
    path: &'static Path,
    blocks: u64,
    kind: Kind,
    depth: usize,
    direct: bool,
    window: Duration,
}

fn run(
    side: Side,
    config: &Config,
    kind: Kind,
    depth: usize,
    direct: bool,
) -> io::Result<Vec<f64>> {
    let path = data_file(config)?;
    if direct {
        probe_direct(path)?;
    }
    let job = Job {
        path,
        blocks: std::fs::metadata(path)?.len() / BLOCK as u64,
        kind,
        depth,
        direct,
        window: config.window(),
    };
    let (ops, elapsed, cpu) = match side {
        Side::Aioctx => aioctx_run(job)?,
        Side::Tokio => tokio_run(job)?,
        Side::Compio => compio_run(job)?,
        Side::Monoio => monoio_run(job)?,
        Side::Smol => smol_run(job)?,
        Side::Glommio => glommio_run(job)?,
    };
    Ok(vec![per_second(ops, elapsed), cpu::us_per(cpu, ops)])
}

/// Spawns `job.depth` workers with `$spawn`, each moving blocks with `$transfer(file, buf, at)`
/// (`$file` is cloned into each worker), and sums what they did: `(ops, Started)`.
macro_rules! drive_workers {
    ($job:ident, $spawn:path, $file:ident, $new_buf:expr, $joined:expr, $transfer:expr) => {{
        let start = Started::now()?;
        let workers: Vec<_> = (0..$job.depth)
            .map(|seed| {
                let file = $file.clone();
                $spawn(worker(seed, $job, start.time, $new_buf, move |buf, at| {
                    $transfer(file.clone(), buf, at)
                }))
            })
            .collect();
        let mut ops = 0;
        for worker in workers {
            ops += $joined(worker.await)?;
        }
        io::Result::Ok((ops, start))
    }};
}

/// When the workers started, in wall-clock and process CPU time (after the runtime was built and
/// the file opened: glommio's executor takes milliseconds to build).
#[derive(Clone, Copy)]
struct Started {
    time: Instant,
    cpu: Duration,
}

/// Operations done, their wall-clock time and the process's CPU time.
type Done = (u64, Duration, Duration);

impl Started {
    fn now() -> io::Result<Started> {
        Ok(Started {
            time: Instant::now(),
            cpu: cpu::process()?,
        })
    }

    fn finish(self, ops: u64) -> io::Result<Done> {
        Ok((
            ops,
            self.time.elapsed(),
            cpu::process()?.saturating_sub(self.cpu),
        ))
    }
}

fn aioctx_run(job: Job) -> io::Result<Done> {
    aioctx_context()?.block_on(async move {
        let file = OpenOptions::new()
            .read(true)
            .write(job.kind == Kind::Write)
            .direct(job.direct)
            .open(job.path)
            .await?;
        let file = Rc::new(file);
        let (ops, start) = drive_workers!(
            job,
            aioctx::spawn_local,
            file,
            || AlignedBuf::new(BLOCK, BLOCK),
            |r: Result<io::Result<u64>, aioctx::JoinError>| r.map_err(io::Error::other)?,
            |file: Rc<aioctx::fs::File>, buf, at| async move {
                Ok(match job.kind {
                    Kind::Read => file.read_at(buf, at).await,
                    Kind::Write => file.write_at(buf, at).await,
                })
            }
        )?;
        if job.kind == Kind::Write {
            file.sync_data().await?;
        }
        start.finish(ops)
    })
}

/// A std file opened for `job`, with O_DIRECT when it asks.
fn std_file(job: Job) -> io::Result<std::fs::File> {
    StdOpenOptions::new()
        .read(true)
        .write(job.kind == Kind::Write)
        .custom_flags(if job.direct { libc::O_DIRECT } else { 0 })
        .open(job.path)
}

/// One positional transfer on a blocking thread: the tokio and smol way.
fn blocking_transfer(
    file: &std::fs::File,
    kind: Kind,
    mut buf: AlignedBuf,
    at: u64,
) -> (io::Result<usize>, AlignedBuf) {
    let res = match kind {
        Kind::Read => file.read_at(&mut buf, at),
        Kind::Write => file.write_at(&buf, at),
    };
    (res, buf)
}

fn tokio_run(job: Job) -> io::Result<Done> {
    tokio_current_thread()?.block_on(async move {
        let file = Arc::new(std_file(job)?);
        let (ops, start) =
            drive_workers!(
                job,
                tokio::spawn,
                file,
                || AlignedBuf::new(BLOCK, BLOCK),
                |r: Result<io::Result<u64>, tokio::task::JoinError>| r?,
                |file: Arc<std::fs::File>, buf, at| async move {
                    Ok(tokio::task::spawn_blocking(move || {
                        blocking_transfer(&file, job.kind, buf, at)
                    })
                    .await?)
                }
            )?;
        if job.kind == Kind::Write {
            let file = file.clone();
            tokio::task::spawn_blocking(move || file.sync_data()).await??;
        }
        start.finish(ops)
    })
}

fn smol_run(job: Job) -> io::Result<Done> {
    Smol::block_on(async move {
        let file = Arc::new(std_file(job)?);
        let (ops, start) = drive_workers!(
            job,
            Smol::spawn_local,
            file,
            || AlignedBuf::new(BLOCK, BLOCK),
            |r: io::Result<u64>| r,
            |file: Arc<std::fs::File>, buf, at| async move {
                Ok(blocking::unblock(move || blocking_transfer(&file, job.kind, buf, at)).await)
            }
        )?;
        if job.kind == Kind::Write {
            let file = file.clone();
            blocking::unblock(move || file.sync_data()).await?;
        }
        start.finish(ops)
    })?
}

fn compio_run(job: Job) -> io::Result<Done> {
    Compio::runtime()?.block_on(async move {
        let mut options = compio::fs::OpenOptions::new();
        options.read(true).write(job.kind == Kind::Write);
        if job.direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let file = Rc::new(options.open(job.path).await?);
        let (ops, start) = drive_workers!(
            job,
            compio::runtime::spawn,
            file,
            PooledBlock::take,
            |r: Result<io::Result<u64>, compio::runtime::JoinError>| {
                r.map_err(|e| io::Error::other(format!("{e:?}")))?
            },
            |file: Rc<compio::fs::File>, buf: PooledBlock, at| async move {
                let block = buf.into_block();
                let compio::BufResult(res, block) = match job.kind {
                    Kind::Read => compio::io::AsyncReadAt::read_at(&*file, block, at).await,
                    Kind::Write => {
                        let mut file = &*file;
                        compio::io::AsyncWriteAt::write_at(&mut file, block, at).await
                    }
                };
                Ok((res, PooledBlock(Some(block))))
            }
        )?;
        if job.kind == Kind::Write {
            file.sync_data().await?;
        }
        start.finish(ops)
    })
}

fn monoio_run(job: Job) -> io::Result<Done> {
    Monoio::runtime()?.block_on(async move {
        let mut options = monoio::fs::OpenOptions::new();
        options.read(true).write(job.kind == Kind::Write);
        if job.direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let file = Rc::new(options.open(job.path).await?);
        let (ops, start) = drive_workers!(
            job,
            monoio::spawn,
            file,
            PooledBlock::take,
            |r: io::Result<u64>| r,
            |file: Rc<monoio::fs::File>, buf: PooledBlock, at| async move {
                let block = buf.into_block();
                let (res, block) = match job.kind {
                    Kind::Read => file.read_at(block, at).await,
                    Kind::Write => file.write_at(block, at).await,
                };
                Ok((res, PooledBlock(Some(block))))
            }
        )?;
        if job.kind == Kind::Write {
            file.sync_data().await?;
        }
        start.finish(ops)
    })
}

/// glommio's own files: `BufferedFile` through the page cache, `DmaFile` for O_DIRECT. Their reads
/// return glommio's buffers, so the worker's buffer only carries what a write sends.
fn glommio_run(job: Job) -> io::Result<Done> {
    Glommio::block_on(async move {
        let file = Rc::new(if job.direct {
            GlommioFile::Direct(
                glommio::io::DmaFile::open(job.path)
                    .await
                    .map_err(io::Error::from)?,
            )
        } else if job.kind == Kind::Write {
            GlommioFile::Buffered(
                glommio::io::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .buffered_open(job.path)
                    .await
                    .map_err(io::Error::from)?,
            )
        } else {
            GlommioFile::Buffered(
                glommio::io::BufferedFile::open(job.path)
                    .await
                    .map_err(io::Error::from)?,
            )
        });
        let (ops, start) = drive_workers!(
            job,
            glommio::spawn_local,
            file,
            || vec![0u8; BLOCK],
            |r: io::Result<u64>| r,
            |file: Rc<GlommioFile>, buf: Vec<u8>, at| async move {
                let res = match (&*file, job.kind) {
                    (GlommioFile::Buffered(f), Kind::Read) => {
                        f.read_at(at, BLOCK).await.map(|r| r.len())
                    }
                    (GlommioFile::Buffered(f), Kind::Write) => f.write_at(buf.clone(), at).await,
                    (GlommioFile::Direct(f), Kind::Read) => {
                        f.read_at_aligned(at, BLOCK).await.map(|r| r.len())
                    }
                    (GlommioFile::Direct(f), Kind::Write) => {
                        let mut dma = f.alloc_dma_buffer(BLOCK);
                        dma.as_bytes_mut().copy_from_slice(&buf);
                        f.write_at(dma, at).await
                    }
                };
                Ok((res.map_err(io::Error::from), buf))
            }
        )?;
        if job.kind == Kind::Write {
            if let GlommioFile::Buffered(f) = &*file {
                f.fdatasync().await.map_err(io::Error::from)?;
            }
        }
        start.finish(ops)
    })?
}

enum GlommioFile {
    Buffered(glommio::io::BufferedFile),
    Direct(glommio::io::DmaFile),
}

/// A page-aligned block (O_DIRECT's alignment) that io_uring runtimes can own while the kernel
/// writes it: `&'static mut` because compio and monoio take owned buffers of `'static` lifetime.
/// Blocks are allocated once per process and go back to the pool when their worker ends, so the
/// benchmark keeps at most one block per concurrent worker.
#[repr(C, align(4096))]
struct AlignedBlock([u8; BLOCK]);

static BLOCK_POOL: Mutex<Vec<&'static mut [u8; BLOCK]>> = Mutex::new(Vec::new());

/// A block of the pool, given back when dropped; unwrapped for the length of each transfer.
struct PooledBlock(Option<&'static mut [u8; BLOCK]>);

impl PooledBlock {
    fn take() -> PooledBlock {
        let pooled = BLOCK_POOL.lock().expect("block pool poisoned").pop();
        PooledBlock(Some(pooled.unwrap_or_else(|| {
            let block: &'static mut AlignedBlock = Box::leak(Box::new(AlignedBlock([0; BLOCK])));
            &mut block.0
        })))
    }

    /// The block itself, to move into a transfer; `PooledBlock(Some(block))` wraps it again.
    fn into_block(mut self) -> &'static mut [u8; BLOCK] {
        self.0
            .take()
            .expect("a pooled block holds its block until unwrapped")
    }
}

impl Drop for PooledBlock {
    fn drop(&mut self) {
        if let Some(block) = self.0.take() {
            BLOCK_POOL.lock().expect("block pool poisoned").push(block);
        }
    }
}

/// Fails with `Unsupported` when the file system refuses O_DIRECT (tmpfs on old kernels, ...).
fn probe_direct(path: &Path) -> io::Result<()> {
    match StdOpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the scratch file system does not support O_DIRECT",
        )),
        Err(e) => Err(e),
    }
}

/// One of `job.depth` workers, each keeping one request in flight until `job.window` has passed
/// since `start`: the same offsets (seeded by `seed`) and checks on every runtime; only `transfer`,
/// which moves one block at an offset and hands the buffer back, is the runtime's own.
async fn worker<B, F, Fut>(
    seed: usize,
    job: Job,
    start: Instant,
    new_buf: impl FnOnce() -> B,
    mut transfer: F,
) -> io::Result<u64>
where
    F: FnMut(B, u64) -> Fut,
    Fut: std::future::Future<Output = io::Result<(io::Result<usize>, B)>>,
{
    let mut rng = fastrand::Rng::with_seed(seed as u64);
    let mut buf = new_buf();
    let mut ops = 0u64;
    while start.elapsed() < job.window {
        let (res, back) = transfer(buf, offset(&mut rng, job.blocks)).await?;
        buf = back;
        expect_full_block(res)?;
        ops += 1;
    }
    Ok(ops)
}

fn expect_full_block(res: io::Result<usize>) -> io::Result<()> {
    match res? {
        BLOCK => Ok(()),
        n => Err(io::Error::other(format!("short transfer of {n} bytes"))),
    }
}
