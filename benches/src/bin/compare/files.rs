//! Block I/O scenarios: 4 KiB random reads and writes on a file of real (not sparse) data.
//!
//! aioctx uses `aioctx::fs::File` on its context (io_uring when the kernel has it); tokio uses its
//! idiomatic best for positional I/O, `spawn_blocking` + `FileExt::{read_at, write_at}`, because
//! `tokio::fs` has no positional reads. Both sides keep `depth` requests in flight from `depth`
//! tasks and pick offsets from the same seeded generator.

use std::fs::OpenOptions as StdOpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aioctx::fs::{AlignedBuf, OpenOptions};

use crate::harness::{
    aioctx_context, per_second, tokio_current_thread, Config, Metric, Scenario, Side, VS_TOKIO,
};

const BLOCK: usize = 4096;

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "file_randread_qd32",
        sides: VS_TOKIO,
        metrics: &[Metric::higher("4 KiB random reads, page cache", "IOPS")],
        run: |side, config| run(side, config, Job::Read, 32, false),
    },
    Scenario {
        name: "file_randread_qd1",
        sides: VS_TOKIO,
        metrics: &[Metric::higher("4 KiB random reads, page cache", "IOPS")],
        run: |side, config| run(side, config, Job::Read, 1, false),
    },
    Scenario {
        name: "file_randread_qd32_direct",
        sides: VS_TOKIO,
        metrics: &[Metric::higher("4 KiB random reads, O_DIRECT", "IOPS")],
        run: |side, config| run(side, config, Job::Read, 32, true),
    },
    Scenario {
        name: "file_randwrite_qd32",
        sides: VS_TOKIO,
        metrics: &[Metric::higher("4 KiB random writes + 1 sync_data", "IOPS")],
        run: |side, config| run(side, config, Job::Write, 32, false),
    },
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Job {
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

fn run(side: Side, config: &Config, job: Job, depth: usize, direct: bool) -> io::Result<Vec<f64>> {
    let path = data_file(config)?;
    if direct {
        probe_direct(path)?;
    }
    let blocks = std::fs::metadata(path)?.len() / BLOCK as u64;
    let window = config.window();
    let (ops, elapsed) = match side {
        Side::Aioctx => aioctx_run(path, blocks, job, depth, direct, window)?,
        Side::Tokio => tokio_run(path, blocks, job, depth, direct, window)?,
    };
    Ok(vec![per_second(ops, elapsed)])
}

fn aioctx_run(
    path: &Path,
    blocks: u64,
    job: Job,
    depth: usize,
    direct: bool,
    window: Duration,
) -> io::Result<(u64, Duration)> {
    aioctx_context()?.block_on(async move {
        let file = OpenOptions::new()
            .read(true)
            .write(job == Job::Write)
            .direct(direct)
            .open(path)
            .await?;
        let file = Rc::new(file);
        let start = Instant::now();
        let workers: Vec<_> = (0..depth)
            .map(|seed| {
                let file = file.clone();
                aioctx::spawn_local(worker(seed, blocks, start, window, move |buf, at| {
                    let file = file.clone();
                    async move {
                        Ok(match job {
                            Job::Read => file.read_at(buf, at).await,
                            Job::Write => file.write_at(buf, at).await,
                        })
                    }
                }))
            })
            .collect();
        let mut ops = 0;
        for worker in workers {
            ops += worker.await??;
        }
        if job == Job::Write {
            file.sync_data().await?;
        }
        Ok((ops, start.elapsed()))
    })
}

fn tokio_run(
    path: &Path,
    blocks: u64,
    job: Job,
    depth: usize,
    direct: bool,
    window: Duration,
) -> io::Result<(u64, Duration)> {
    tokio_current_thread()?.block_on(async move {
        let file = StdOpenOptions::new()
            .read(true)
            .write(job == Job::Write)
            .custom_flags(if direct { libc::O_DIRECT } else { 0 })
            .open(path)?;
        let file = Arc::new(file);
        let start = Instant::now();
        let workers: Vec<_> = (0..depth)
            .map(|seed| {
                let file = file.clone();
                tokio::spawn(worker(seed, blocks, start, window, move |mut buf, at| {
                    let file = file.clone();
                    async move {
                        Ok(tokio::task::spawn_blocking(move || {
                            let res = match job {
                                Job::Read => file.read_at(&mut buf, at),
                                Job::Write => file.write_at(&buf, at),
                            };
                            (res, buf)
                        })
                        .await?)
                    }
                }))
            })
            .collect();
        let mut ops = 0;
        for worker in workers {
            ops += worker.await??;
        }
        if job == Job::Write {
            let file = file.clone();
            tokio::task::spawn_blocking(move || file.sync_data()).await??;
        }
        Ok((ops, start.elapsed()))
    })
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

/// One of `depth` workers, each keeping one request in flight until `window` has passed since
/// `start`: the same offsets (seeded by `seed`) and checks on both runtimes; only `transfer`, which
/// moves one block at an offset and hands the buffer back, is the runtime's own.
async fn worker<F, Fut>(
    seed: usize,
    blocks: u64,
    start: Instant,
    window: Duration,
    mut transfer: F,
) -> io::Result<u64>
where
    F: FnMut(AlignedBuf, u64) -> Fut,
    Fut: std::future::Future<Output = io::Result<(io::Result<usize>, AlignedBuf)>>,
{
    let mut rng = fastrand::Rng::with_seed(seed as u64);
    let mut buf = AlignedBuf::new(BLOCK, BLOCK);
    let mut ops = 0u64;
    while start.elapsed() < window {
        let (res, back) = transfer(buf, offset(&mut rng, blocks)).await?;
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
