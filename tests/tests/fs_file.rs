//! Block I/O: randomized sequences of writes, reads, write-zeroes, discards, truncations and syncs checked
//! against an in-memory model, on every engine (io_uring on the context's ring, io_uring on a user-SQE ring
//! beside epoll, the thread pool), buffered and O_DIRECT; plus the bad-input and lifetime cases.

use std::time::Duration;

use aioctx::fs::{AlignedBuf, File, IoEngine};
use aioctx::{AioContext, Backend};
use proptest::prelude::*;
use tests::{per_backend, TempPath};

#[derive(Clone, Copy, Debug)]
struct Setup {
    backend: Backend,
    engine: IoEngine,
    direct: bool,
}

const SETUPS: [Setup; 6] = [
    Setup {
        backend: Backend::IoUring,
        engine: IoEngine::IoUring,
        direct: false,
    },
    Setup {
        backend: Backend::Epoll,
        engine: IoEngine::IoUring,
        direct: false,
    },
    Setup {
        backend: Backend::Epoll,
        engine: IoEngine::ThreadPool,
        direct: false,
    },
    Setup {
        backend: Backend::IoUring,
        engine: IoEngine::IoUring,
        direct: true,
    },
    Setup {
        backend: Backend::Poll,
        engine: IoEngine::IoUring,
        direct: true,
    },
    Setup {
        backend: Backend::Epoll,
        engine: IoEngine::ThreadPool,
        direct: true,
    },
];

/// Block size for O_DIRECT cases (safe for 512- and 4096-byte logical blocks).
const BLOCK: u64 = 4096;
const SPAN: u64 = 16 * BLOCK;

#[derive(Clone, Debug)]
enum FileOp {
    Write { off: u64, len: u64, seed: u8 },
    WriteFua { off: u64, len: u64, seed: u8 },
    Writev { off: u64, lens: Vec<u64>, seed: u8 },
    Read { off: u64, len: u64 },
    ReadExact { off: u64, len: u64 },
    Readv { off: u64, lens: Vec<u64> },
    Zeroes { off: u64, len: u64 },
    Discard { off: u64, len: u64 },
    SetLen { len: u64 },
    Sync { data_only: bool },
}

fn op_strategy(direct: bool) -> impl Strategy<Value = FileOp> {
    // Unaligned cases use byte granularity; O_DIRECT cases whole blocks.
    let unit = if direct { BLOCK } else { 1 };
    let max_units = SPAN / unit;
    let off = (0..max_units).prop_map(move |u| u * unit);
    let len = (1..=max_units / 4).prop_map(move |u| u * unit);
    let lens = prop::collection::vec((1..=max_units / 8).prop_map(move |u| u * unit), 1..4);
    prop_oneof![
        (off.clone(), len.clone(), any::<u8>()).prop_map(|(off, len, seed)| FileOp::Write {
            off,
            len,
            seed
        }),
        (off.clone(), len.clone(), any::<u8>()).prop_map(|(off, len, seed)| FileOp::WriteFua {
            off,
            len,
            seed
        }),
        (off.clone(), lens.clone(), any::<u8>()).prop_map(|(off, lens, seed)| FileOp::Writev {
            off,
            lens,
            seed
        }),
        (off.clone(), len.clone()).prop_map(|(off, len)| FileOp::Read { off, len }),
        (off.clone(), len.clone()).prop_map(|(off, len)| FileOp::ReadExact { off, len }),
        (off.clone(), lens).prop_map(|(off, lens)| FileOp::Readv { off, lens }),
        (off.clone(), len.clone()).prop_map(|(off, len)| FileOp::Zeroes { off, len }),
        (off.clone(), len.clone()).prop_map(|(off, len)| FileOp::Discard { off, len }),
        (0..=max_units).prop_map(move |u| FileOp::SetLen { len: u * unit }),
        any::<bool>().prop_map(|data_only| FileOp::Sync { data_only }),
    ]
}

fn pattern(seed: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i * 31 % 251) as u8))
        .collect()
}

/// A buffer of `len` bytes with `data` (aligned for O_DIRECT).
fn out_buf(direct: bool, data: &[u8]) -> AlignedOrVec {
    if direct {
        let mut b = AlignedBuf::new(data.len(), BLOCK as usize);
        b.copy_from_slice(data);
        AlignedOrVec::Aligned(b)
    } else {
        AlignedOrVec::Vec(data.to_vec())
    }
}

enum AlignedOrVec {
    Aligned(AlignedBuf),
    Vec(Vec<u8>),
}

fn model_write(model: &mut Vec<u8>, off: u64, data: &[u8]) {
    let end = off as usize + data.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[off as usize..end].copy_from_slice(data);
}

fn model_read(model: &[u8], off: u64, len: u64) -> Vec<u8> {
    let start = (off as usize).min(model.len());
    let end = ((off + len) as usize).min(model.len());
    model[start..end].to_vec()
}

async fn read_bytes(f: &File, direct: bool, off: u64, len: u64) -> Vec<u8> {
    if direct {
        let (res, buf) = f
            .read_at(AlignedBuf::new(len as usize, BLOCK as usize), off)
            .await;
        let n = res.unwrap();
        buf[..n].to_vec()
    } else {
        let (res, buf) = f.read_at(Vec::with_capacity(len as usize), off).await;
        let n = res.unwrap();
        assert_eq!(buf.len(), n, "a Vec's length is what was read");
        buf
    }
}

async fn apply(f: &File, setup: Setup, model: &mut Vec<u8>, op: &FileOp) {
    let direct = setup.direct;
    match op {
        FileOp::Write { off, len, seed } | FileOp::WriteFua { off, len, seed } => {
            let data = pattern(*seed, *len);
            let fua = matches!(op, FileOp::WriteFua { .. });
            let n = match out_buf(direct, &data) {
                AlignedOrVec::Aligned(b) if fua => f.write_at_fua(b, *off).await.0,
                AlignedOrVec::Aligned(b) => f.write_all_at(b, *off).await.0.map(|()| data.len()),
                AlignedOrVec::Vec(b) if fua => f.write_at_fua(b, *off).await.0,
                AlignedOrVec::Vec(b) => f.write_all_at(b, *off).await.0.map(|()| data.len()),
            };
            assert_eq!(n.unwrap(), data.len());
            model_write(model, *off, &data);
        }
        FileOp::Writev { off, lens, seed } => {
            let parts: Vec<Vec<u8>> = lens
                .iter()
                .enumerate()
                .map(|(i, &l)| pattern(seed.wrapping_add(i as u8), l))
                .collect();
            let all: Vec<u8> = parts.concat();
            let n = if direct {
                let bufs: Vec<AlignedBuf> = parts
                    .iter()
                    .map(|p| {
                        let mut b = AlignedBuf::new(p.len(), BLOCK as usize);
                        b.copy_from_slice(p);
                        b
                    })
                    .collect();
                f.writev_at(bufs, *off).await.0.unwrap()
            } else {
                f.writev_at(parts, *off).await.0.unwrap()
            };
            assert_eq!(n, all.len());
            model_write(model, *off, &all);
        }
        FileOp::Read { off, len } => {
            assert_eq!(
                read_bytes(f, direct, *off, *len).await,
                model_read(model, *off, *len),
                "read_at {off}+{len}"
            );
        }
        FileOp::ReadExact { off, len } => {
            let want = model_read(model, *off, *len);
            let (res, got) = if direct {
                let (r, b) = f
                    .read_exact_at(AlignedBuf::new(*len as usize, BLOCK as usize), *off)
                    .await;
                (r, b[..want.len()].to_vec())
            } else {
                let (r, b) = f
                    .read_exact_at(Vec::with_capacity(*len as usize), *off)
                    .await;
                (r, b)
            };
            if want.len() as u64 == *len {
                res.unwrap();
            } else {
                assert_eq!(res.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
            }
            assert_eq!(got, want, "read_exact_at {off}+{len}");
        }
        FileOp::Readv { off, lens } => {
            let total: u64 = lens.iter().sum();
            let want = model_read(model, *off, total);
            let got: Vec<u8> = if direct {
                let bufs: Vec<AlignedBuf> = lens
                    .iter()
                    .map(|&l| AlignedBuf::new(l as usize, BLOCK as usize))
                    .collect();
                let (res, bufs) = f.readv_at(bufs, *off).await;
                let n = res.unwrap();
                bufs.iter()
                    .flat_map(|b| b.iter().copied())
                    .take(n)
                    .collect()
            } else {
                let bufs: Vec<Vec<u8>> = lens
                    .iter()
                    .map(|&l| Vec::with_capacity(l as usize))
                    .collect();
                let (res, bufs) = f.readv_at(bufs, *off).await;
                let n = res.unwrap();
                let flat: Vec<u8> = bufs.concat();
                assert_eq!(flat.len(), n, "each Vec's length reflects what it received");
                flat
            };
            assert_eq!(got, want, "readv_at {off}+{lens:?}");
        }
        FileOp::Zeroes { off, len } => {
            f.write_zeroes(*off, *len).await.unwrap();
            model_write(model, *off, &vec![0; *len as usize]);
        }
        FileOp::Discard { off, len } => {
            f.discard(*off, *len).await.unwrap();
            let end = ((off + len) as usize).min(model.len());
            if (*off as usize) < end {
                model[*off as usize..end].fill(0);
            }
        }
        FileOp::SetLen { len } => {
            f.set_len(*len).await.unwrap();
            model.resize(*len as usize, 0);
        }
        FileOp::Sync { data_only } => {
            if *data_only {
                f.sync_data().await.unwrap();
            } else {
                f.sync_all().await.unwrap();
            }
        }
    }
    assert_eq!(f.len().unwrap(), model.len() as u64, "size after {op:?}");
}

fn run_sequence(setup: Setup, ops: &[FileOp]) {
    let ctx = AioContext::builder()
        .backend(setup.backend)
        .build()
        .unwrap();
    let path = TempPath::new("model");
    ctx.block_on(async {
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .direct(setup.direct)
            .engine(setup.engine)
            .open(&path.0)
            .await
            .unwrap();
        assert_eq!(f.engine(), setup.engine);
        let mut model = Vec::new();
        for op in ops {
            apply(&f, setup, &mut model, op).await;
        }
        // Everything the model says, the file has, read back in one go.
        let all = read_bytes(&f, setup.direct, 0, SPAN * 2).await;
        assert_eq!(all, model);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn buffered_matches_model(ops in prop::collection::vec(op_strategy(false), 1..24)) {
        for setup in SETUPS.iter().filter(|s| !s.direct) {
            run_sequence(*setup, &ops);
        }
    }

    #[test]
    fn direct_matches_model(ops in prop::collection::vec(op_strategy(true), 1..16)) {
        for setup in SETUPS.iter().filter(|s| s.direct) {
            run_sequence(*setup, &ops);
        }
    }
}

#[test]
fn direct_io_rejects_misaligned_requests_before_submitting() {
    for setup in SETUPS.iter().filter(|s| s.direct) {
        let ctx = AioContext::builder()
            .backend(setup.backend)
            .build()
            .unwrap();
        let path = TempPath::new("misaligned");
        ctx.block_on(async {
            let f = File::options()
                .read(true)
                .write(true)
                .create(true)
                .direct(true)
                .engine(setup.engine)
                .open(&path.0)
                .await
                .unwrap();
            let before = ctx.stats().sqes_submitted;
            let (res, _) = f.write_at(vec![1u8; 100], 0).await; // Vec: misaligned address and length
            let err = res.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains("O_DIRECT"), "{err}");
            let (res, _) = f.read_at(AlignedBuf::new(4096, 4096), 100).await; // misaligned offset
            assert_eq!(res.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
            assert_eq!(ctx.stats().sqes_submitted, before, "nothing was submitted");
        });
    }
}

#[test]
fn reads_past_eof_are_short_and_writes_to_read_only_files_fail() {
    for setup in SETUPS.iter().filter(|s| !s.direct) {
        let ctx = AioContext::builder()
            .backend(setup.backend)
            .build()
            .unwrap();
        let path = TempPath::new("eof");
        std::fs::write(&path.0, b"0123456789").unwrap();
        ctx.block_on(async {
            let f = File::options()
                .read(true)
                .engine(setup.engine)
                .open(&path.0)
                .await
                .unwrap();
            let (res, buf) = f.read_at(Vec::with_capacity(64), 4).await;
            assert_eq!(res.unwrap(), 6);
            assert_eq!(buf, b"456789");
            let (res, buf) = f.read_at(Vec::with_capacity(8), 100).await;
            assert_eq!(res.unwrap(), 0);
            assert!(buf.is_empty());
            let (res, _) = f.write_at(b"x".to_vec(), 0).await;
            assert_eq!(res.unwrap_err().raw_os_error(), Some(libc::EBADF));
            let err = File::open(path.0.join("nope")).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::NotADirectory);
        });
    }
}

per_backend! {
    /// A read dropped while in flight: the buffer must stay valid until the kernel completes it. Run
    /// under valgrind and ASan in CI, which check our own handling of the operation's cell (neither sees
    /// the kernel's write itself; see RELIABILITY.md). On io_uring the read is on the context's ring; on
    /// epoll and poll on the user-SQE ring, whose fd each of them watches its own way.
    fn dropped_in_flight_read_keeps_its_buffer_alive(backend) {
        let ctx = AioContext::builder().backend(backend).build().unwrap();
        let (rd, wr) = std::os::unix::net::UnixStream::pair().unwrap();
        ctx.block_on(async {
            // A socket read blocks in the kernel until data arrives: the op stays in flight.
            let f = File::from_std(std::fs::File::from(std::os::fd::OwnedFd::from(rd))).unwrap();
            let read = f.read_at(vec![0u8; 4096], 0);
            let r = aioctx::time::timeout(Duration::from_millis(5), read).await;
            assert!(r.is_err(), "nothing to read yet");
            // The future is gone; now the kernel writes into the buffer it still owns.
            use std::io::Write;
            (&wr).write_all(&[7u8; 4096]).unwrap();
            for _ in 0..10 {
                aioctx::yield_now().await;
            }
            drop(f);
        });
        // Polling lets the completion arrive and free the buffer.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline && ctx.poll(false) {}
        drop(ctx);
    }
}

per_backend! {
    /// The raw vectored API copies the iovec array: a caller may drop it (and its future) while the
    /// operation is in flight, keeping only the memory the iovecs describe alive.
    fn dropped_in_flight_raw_readv_needs_only_its_memory(backend) {
        let ctx = AioContext::builder().backend(backend).build().unwrap();
        let (rd, wr) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut memory = vec![0u8; 2 * 512];
        ctx.block_on(async {
            let f = File::from_std(std::fs::File::from(std::os::fd::OwnedFd::from(rd))).unwrap();
            let (lo, hi) = memory.split_at_mut(512);
            let mut iovecs = Box::new([
                libc::iovec {
                    iov_base: hi.as_mut_ptr().cast(),
                    iov_len: 512,
                },
                libc::iovec {
                    iov_base: lo.as_mut_ptr().cast(),
                    iov_len: 512,
                },
            ]);
            // SAFETY: the iovecs describe `memory`, which nothing touches until the context has
            // been dropped below (so the operation completed); the array itself may go at once.
            let read = unsafe { f.readv_at_raw(iovecs.as_ptr(), 2, 0) };
            let r = aioctx::time::timeout(Duration::from_millis(5), read).await;
            assert!(r.is_err(), "nothing to read yet");
            // Scribble over the array and free it: the operation must not depend on it any more.
            for iov in iovecs.iter_mut() {
                *iov = libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
            }
            drop(iovecs);
            use std::io::Write;
            let data: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
            (&wr).write_all(&data).unwrap();
            drop(f);
        });
        // The orphaned read completes when the loop reaps it; its last byte lands last.
        let last = memory[..512].as_ptr().wrapping_add(511);
        tests::spin_until("the orphaned read to complete", || {
            ctx.poll(false);
            // SAFETY: `last` points into `memory`; a volatile read sees the kernel's write.
            (unsafe { last.read_volatile() }) != 0
        });
        drop(ctx);
        let expected: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(&memory[512..], &expected[..512], "{backend:?}: first iovec");
        assert_eq!(
            &memory[..512],
            &expected[512..],
            "{backend:?}: second iovec"
        );
    }
}

#[test]
fn file_closed_with_ops_in_flight_completes_them() {
    let ctx = AioContext::builder()
        .backend(Backend::IoUring)
        .build()
        .unwrap();
    let path = TempPath::new("closing");
    ctx.block_on(async {
        let f = File::create(&path.0).await.unwrap();
        let writes: Vec<_> = (0..16u64)
            .map(|i| {
                let f = &f;
                async move { f.write_all_at(vec![i as u8; 4096], i * 4096).await.0 }
            })
            .collect();
        for r in futures::future::join_all(writes).await {
            r.unwrap();
        }
        drop(f);
    });
    let data = std::fs::read(&path.0).unwrap();
    assert_eq!(data.len(), 16 * 4096);
    assert!(data
        .chunks(4096)
        .enumerate()
        .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
}

/// How many of this process's fds refer to `path`.
fn fds_open_on(path: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

per_backend! {
    /// An open on the ring (OPENAT) whose future is dropped while the kernel is still opening: the fd
    /// the kernel returns later is closed, not leaked. A FIFO's open for writing blocks until a reader
    /// comes (`create` keeps io_uring from trying a non-blocking open first).
    fn dropped_open_on_the_ring_closes_the_late_fd(backend) {
        use std::os::unix::fs::OpenOptionsExt;
        let ctx = AioContext::builder().backend(backend).build().unwrap();
        let path = TempPath::new("fifo");
        let c_path = std::ffi::CString::new(path.0.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        ctx.block_on(async {
            let options = File::options()
                .write(true)
                .create(true)
                .engine(IoEngine::IoUring);
            let r = aioctx::time::timeout(Duration::from_millis(5), options.open(&path.0)).await;
            assert!(r.is_err(), "no reader yet: the open is still in flight");
        });
        // The timeout may have fired before the loop submitted the OPENAT (slow machines, valgrind): a
        // few iterations hand it to the kernel, where it blocks without a reader.
        for _ in 0..4 {
            ctx.poll(false);
        }
        // A reader lets the in-flight open finish; the loop must close the fd it returns, which the
        // reader sees as end of file once no writer is left.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path.0)
            .unwrap();
        // The kernel installs the fd before the loop hears of it: see it open first.
        tests::spin_until("the in-flight open to finish", || fds_open_on(&path.0) == 2);
        tests::spin_until("the loop to close the late fd", || {
            use std::io::Read;
            match (&reader).read(&mut [0u8; 8]) {
                Ok(0) => true,
                Ok(n) => panic!("read {n} bytes nobody wrote"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ctx.poll(false);
                    false
                }
                Err(e) => panic!("reading the FIFO: {e}"),
            }
        });
        assert_eq!(fds_open_on(&path.0), 1, "only the reader's fd is open");
    }
}
