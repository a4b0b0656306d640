//! Random request sequences, pipelined in batches, checked against an in-memory model of the export,
//! in each reply framing: simple replies, structured replies and extended headers (with
//! `base:allocation`). The export starts sparse; structured `READ`s come back as data and hole chunks,
//! reassembled and compared with the model, and `BLOCK_STATUS` may call a hole only what the model
//! says reads as zeroes.

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::client::*;
use super::structured::{Answer, Sent, ENOTSUP, HOLE_ZERO};

/// The modelled range (the export is twice as big; the bystander works past it).
const SIZE: u64 = 1 << 20;
const EXPORT_SIZE: u64 = 2 * SIZE;
const MAX_LEN: u32 = 65536;

#[derive(Clone, Debug)]
enum Op {
    Read {
        off: u64,
        len: u32,
        df: bool,
    },
    Write {
        off: u64,
        len: u32,
        seed: u8,
        fua: bool,
    },
    Zeroes {
        off: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
        fast: bool,
    },
    Trim {
        off: u64,
        len: u32,
    },
    Flush,
    Cache {
        off: u64,
        len: u32,
    },
    /// Sent only when `base:allocation` is negotiated.
    Status {
        off: u64,
        len: u32,
        req_one: bool,
    },
    /// A read or write that ends past the export: EINVAL.
    OutOfRange {
        write: bool,
        off: u64,
        len: u32,
    },
}

impl Op {
    fn range(&self) -> Option<(u64, u64)> {
        match *self {
            Op::Read { off, len, .. }
            | Op::Write { off, len, .. }
            | Op::Zeroes { off, len, .. }
            | Op::Trim { off, len }
            | Op::Status { off, len, .. } => Some((off, off + u64::from(len))),
            Op::Flush | Op::Cache { .. } | Op::OutOfRange { .. } => None,
        }
    }

    /// The request: command, flags, offset, length.
    fn request(&self) -> (u16, u16, u64, u32) {
        let bit = |on: bool, flag: u16| if on { flag } else { 0 };
        match *self {
            Op::Read { off, len, df } => (CMD_READ, bit(df, CMD_FLAG_DF), off, len),
            Op::Write { off, len, fua, .. } => (CMD_WRITE, bit(fua, FLAG_FUA), off, len),
            Op::Zeroes {
                off,
                len,
                fua,
                no_hole,
                fast,
            } => {
                let flags =
                    bit(fua, FLAG_FUA) | bit(no_hole, FLAG_NO_HOLE) | bit(fast, FLAG_FAST_ZERO);
                (CMD_WRITE_ZEROES, flags, off, len)
            }
            Op::Trim { off, len } => (CMD_TRIM, 0, off, len),
            Op::Flush => (CMD_FLUSH, 0, 0, 0),
            Op::Cache { off, len } => (CMD_CACHE, 0, off, len),
            Op::Status { off, len, req_one } => {
                (CMD_BLOCK_STATUS, bit(req_one, FLAG_REQ_ONE), off, len)
            }
            Op::OutOfRange { write, off, len } => {
                (if write { CMD_WRITE } else { CMD_READ }, 0, off, len)
            }
        }
    }
}

fn in_range() -> impl Strategy<Value = (u64, u32)> {
    (0..SIZE, 1..=MAX_LEN).prop_map(|(off, len)| (off, len.min((SIZE - off) as u32)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (in_range(), prop::bool::weighted(0.2))
            .prop_map(|((off, len), df)| Op::Read { off, len, df }),
        3 => (in_range(), any::<u8>(), any::<bool>())
            .prop_map(|((off, len), seed, fua)| Op::Write { off, len, seed, fua }),
        1 => (in_range(), any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|((off, len), fua, no_hole, fast)| Op::Zeroes { off, len, fua, no_hole, fast }),
        1 => in_range().prop_map(|(off, len)| Op::Trim { off, len }),
        1 => Just(Op::Flush),
        1 => in_range().prop_map(|(off, len)| Op::Cache { off, len }),
        2 => (in_range(), any::<bool>())
            .prop_map(|((off, len), req_one)| Op::Status { off, len, req_one }),
        1 => (any::<bool>(), EXPORT_SIZE - 1000..EXPORT_SIZE * 2, 1001..=MAX_LEN)
            .prop_map(|(write, off, len)| Op::OutOfRange { write, off, len }),
    ]
}

fn pattern(seed: u8, len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 253) as u8))
        .collect()
}

/// What one run saw, to show the structured paths were taken.
#[derive(Default)]
struct Seen {
    hole_chunks: usize,
    hole_extents: usize,
    fast_zero_refused: usize,
}

/// Sends each batch at once (requests of a batch touch disjoint ranges, so their order does not
/// matter), reads the replies in whatever order they come, and checks them against the model.
fn run_case(
    server: &TestServer,
    bystander: &mut Client,
    batches: &[Vec<Op>],
    mode: Mode,
    seen: &mut Seen,
) {
    let mut c = server.client_in(mode, mode != Mode::Simple);
    // The model starts from what the export holds now; `None` marks trimmed bytes (undefined).
    let whole = Sent {
        command: CMD_READ,
        flags: 0,
        offset: 0,
        length: SIZE,
    };
    let start = c.call(whole, &[]).data.expect("the export's contents");
    let mut model: Vec<Option<u8>> = start.into_iter().map(Some).collect();
    // Bytes the model knows read as zeroes (or may read as anything): what a hole may cover.
    let zero_or_undefined = |model: &[Option<u8>], off: u64, len: u64| {
        model[off as usize..(off + len) as usize]
            .iter()
            .all(|b| matches!(b, None | Some(0)))
    };
    for (n, batch) in batches.iter().enumerate() {
        let mut kept: Vec<&Op> = Vec::new();
        for op in batch {
            let overlaps = |other: &&Op| match (op.range(), other.range()) {
                (Some((a0, a1)), Some((b0, b1))) => a0 < b1 && b0 < a1,
                _ => false,
            };
            let needs_status = matches!(op, Op::Status { .. }) && c.context.is_none();
            if !needs_status && !kept.iter().any(overlaps) {
                kept.push(op);
            }
        }
        let mut bytes = Vec::new();
        let mut sent = HashMap::new();
        for (cookie, op) in kept.iter().enumerate() {
            let cookie = cookie as u64;
            let (command, mut flags, offset, len) = op.request();
            if mode == Mode::Simple {
                flags &= !CMD_FLAG_DF;
            }
            bytes.extend(c.header(command, flags, cookie, offset, len.into()));
            match **op {
                Op::Write { seed, .. } => bytes.extend(pattern(seed, len)),
                Op::OutOfRange { write: true, .. } => bytes.extend(vec![0x99; len as usize]),
                _ => {}
            }
            let length = len.into();
            sent.insert(
                cookie,
                Sent {
                    command,
                    flags,
                    offset,
                    length,
                },
            );
        }
        c.s.write_all(&bytes).unwrap();
        let mut pending: HashMap<u64, &Op> = kept
            .iter()
            .copied()
            .enumerate()
            .map(|(i, op)| (i as u64, op))
            .collect();
        let mut updates = Vec::new();
        while !pending.is_empty() {
            let (cookie, answer) = c.answer(&sent);
            let op = pending
                .remove(&cookie)
                .unwrap_or_else(|| panic!("unknown or repeated cookie {cookie}: {answer:?}"));
            if let Some(update) = check(op, &answer, &model, zero_or_undefined, seen) {
                updates.push(update);
            }
        }
        for (off, data) in updates {
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        // Another connection is still served after each batch (past the modelled range).
        round_trip(bystander, SIZE + 4096, n as u8);
    }
    c.send(CMD_DISC, 0, 0, 0, 0);
    assert!(c.closed_by_server());
}

type ZeroCheck = fn(&[Option<u8>], u64, u64) -> bool;

/// Checks one answer against the model; returns the model update a write makes.
fn check(
    op: &Op,
    answer: &Answer,
    model: &[Option<u8>],
    zero: ZeroCheck,
    seen: &mut Seen,
) -> Option<(u64, Vec<Option<u8>>)> {
    let fast_refused = matches!(op, Op::Zeroes { fast: true, .. }) && answer.error == ENOTSUP;
    match *op {
        Op::OutOfRange { .. } => assert_eq!(answer.error, EINVAL, "{op:?}"),
        _ if fast_refused => seen.fast_zero_refused += 1,
        _ => assert_eq!(answer.error, 0, "{op:?}: {:?}", answer.message),
    }
    match *op {
        Op::Read { off, len, .. } => {
            let data = answer.data.as_ref().expect("READ data");
            assert_eq!(data.len(), len as usize);
            for (i, byte) in data.iter().enumerate() {
                if let Some(expected) = model[off as usize + i] {
                    assert_eq!(*byte, expected, "{op:?}: byte {i}");
                }
            }
            for &(at, hole_len, hole) in &answer.content {
                if hole {
                    assert!(zero(model, at, hole_len), "{op:?}: a hole chunk over data");
                    seen.hole_chunks += 1;
                }
            }
            None
        }
        Op::Status { off, .. } => {
            let mut at = off;
            for &(len, flags) in &answer.extents {
                if flags == HOLE_ZERO {
                    assert!(zero(model, at, len), "{op:?}: a hole extent over data");
                    seen.hole_extents += 1;
                }
                at += len;
            }
            None
        }
        Op::Write { off, len, seed, .. } => {
            Some((off, pattern(seed, len).into_iter().map(Some).collect()))
        }
        Op::Zeroes { .. } if fast_refused => None,
        Op::Zeroes { off, len, .. } => Some((off, vec![Some(0); len as usize])),
        Op::Trim { off, len } => Some((off, vec![None; len as usize])),
        Op::Flush | Op::Cache { .. } | Op::OutOfRange { .. } => None,
    }
}

/// The export: pseudo-random data with zero 4 KiB blocks left as holes in the file.
fn sparse_contents() -> Vec<u8> {
    (0..EXPORT_SIZE)
        .map(|i| {
            let block = i / 4096;
            if block % 5 == 1 || block % 17 < 6 {
                0
            } else {
                (i * 7 % 251) as u8 + 1
            }
        })
        .collect()
}

fn random_sequences(mode: Mode) -> Seen {
    // The model covers the first SIZE bytes; the bystander uses the rest.
    let server = TestServer::start(Setup {
        iothreads: 2,
        contents: sparse_contents(),
        sparse: true,
        ..Setup::default()
    });
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let batches = prop::collection::vec(prop::collection::vec(op(), 1..8), 1..12);
    let bystander = std::cell::RefCell::new(server.client());
    let seen = std::cell::RefCell::new(Seen::default());
    runner
        .run(&batches, |batches| {
            let mut bystander = bystander.borrow_mut();
            run_case(
                &server,
                &mut bystander,
                &batches,
                mode,
                &mut seen.borrow_mut(),
            );
            Ok(())
        })
        .unwrap();
    // Another client still gets served after all of it.
    round_trip(&mut server.client(), 0, 42);
    seen.into_inner()
}

#[test]
fn random_request_sequences_match_an_in_memory_model() {
    let seen = random_sequences(Mode::Simple);
    assert_eq!(seen.hole_chunks + seen.hole_extents, 0);
}

#[test]
fn structured_replies_match_the_model_holes_included() {
    let seen = random_sequences(Mode::Structured);
    assert!(seen.hole_chunks > 20, "{} hole chunks", seen.hole_chunks);
    assert!(seen.hole_extents > 20, "{} hole extents", seen.hole_extents);
}

#[test]
fn extended_headers_match_the_model_holes_included() {
    let seen = random_sequences(Mode::Extended);
    assert!(seen.hole_chunks > 20, "{} hole chunks", seen.hole_chunks);
    assert!(seen.hole_extents > 20, "{} hole extents", seen.hole_extents);
}
