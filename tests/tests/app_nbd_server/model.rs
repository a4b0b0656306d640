//! Random request sequences, pipelined in batches, checked against an in-memory model of the export.

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::client::*;

/// The modelled range (the export is twice as big; the bystander works past it).
const SIZE: u64 = 1 << 20;
const EXPORT_SIZE: u64 = 2 * SIZE;
const MAX_LEN: u32 = 65536;

#[derive(Clone, Debug)]
enum Op {
    Read {
        off: u64,
        len: u32,
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
    },
    Trim {
        off: u64,
        len: u32,
    },
    Flush,
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
            Op::Read { off, len }
            | Op::Write { off, len, .. }
            | Op::Zeroes { off, len, .. }
            | Op::Trim { off, len } => Some((off, off + u64::from(len))),
            Op::Flush | Op::OutOfRange { .. } => None,
        }
    }
}

fn in_range() -> impl Strategy<Value = (u64, u32)> {
    (0..SIZE, 1..=MAX_LEN).prop_map(|(off, len)| (off, len.min((SIZE - off) as u32)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => in_range().prop_map(|(off, len)| Op::Read { off, len }),
        3 => (in_range(), any::<u8>(), any::<bool>())
            .prop_map(|((off, len), seed, fua)| Op::Write { off, len, seed, fua }),
        1 => (in_range(), any::<bool>(), any::<bool>())
            .prop_map(|((off, len), fua, no_hole)| Op::Zeroes { off, len, fua, no_hole }),
        1 => in_range().prop_map(|(off, len)| Op::Trim { off, len }),
        1 => Just(Op::Flush),
        1 => (any::<bool>(), EXPORT_SIZE - 1000..EXPORT_SIZE * 2, 1001..=MAX_LEN)
            .prop_map(|(write, off, len)| Op::OutOfRange { write, off, len }),
    ]
}

fn pattern(seed: u8, len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 253) as u8))
        .collect()
}

/// Sends each batch at once (requests of a batch touch disjoint ranges, so their order does not
/// matter), reads the replies in whatever order they come, and checks them against the model.
fn run_case(server: &TestServer, bystander: &mut Client, batches: &[Vec<Op>]) {
    let mut c = server.client();
    // The model starts from what the export holds now; `None` marks trimmed bytes (undefined).
    let mut model: Vec<Option<u8>> = c
        .read(0, SIZE as u32)
        .unwrap()
        .into_iter()
        .map(Some)
        .collect();
    for (n, batch) in batches.iter().enumerate() {
        let mut kept: Vec<&Op> = Vec::new();
        for op in batch {
            let overlaps = |other: &&Op| match (op.range(), other.range()) {
                (Some((a0, a1)), Some((b0, b1))) => a0 < b1 && b0 < a1,
                _ => false,
            };
            if !kept.iter().any(overlaps) {
                kept.push(op);
            }
        }
        let mut bytes = Vec::new();
        for (cookie, op) in kept.iter().enumerate() {
            let cookie = cookie as u64;
            match **op {
                Op::Read { off, len } => {
                    bytes.extend(Client::request_bytes(CMD_READ, 0, cookie, off, len))
                }
                Op::Write {
                    off,
                    len,
                    seed,
                    fua,
                } => {
                    let flags = if fua { FLAG_FUA } else { 0 };
                    bytes.extend(Client::request_bytes(CMD_WRITE, flags, cookie, off, len));
                    bytes.extend(pattern(seed, len));
                }
                Op::Zeroes {
                    off,
                    len,
                    fua,
                    no_hole,
                } => {
                    let flags =
                        if fua { FLAG_FUA } else { 0 } | if no_hole { FLAG_NO_HOLE } else { 0 };
                    bytes.extend(Client::request_bytes(
                        CMD_WRITE_ZEROES,
                        flags,
                        cookie,
                        off,
                        len,
                    ));
                }
                Op::Trim { off, len } => {
                    bytes.extend(Client::request_bytes(CMD_TRIM, 0, cookie, off, len))
                }
                Op::Flush => bytes.extend(Client::request_bytes(CMD_FLUSH, 0, cookie, 0, 0)),
                Op::OutOfRange { write, off, len } => {
                    let command = if write { CMD_WRITE } else { CMD_READ };
                    bytes.extend(Client::request_bytes(command, 0, cookie, off, len));
                    if write {
                        bytes.extend(vec![0x99; len as usize]);
                    }
                }
            }
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
            let reply = c.reply().unwrap();
            let op = pending
                .remove(&reply.cookie)
                .unwrap_or_else(|| panic!("unknown or repeated cookie {reply:?}"));
            match *op {
                Op::OutOfRange { .. } => assert_eq!(reply.error, EINVAL, "{op:?}"),
                _ => assert_eq!(reply.error, 0, "{op:?}"),
            }
            match *op {
                Op::Read { off, len } => {
                    let data = c.read_data(len as usize);
                    for (i, byte) in data.iter().enumerate() {
                        if let Some(expected) = model[off as usize + i] {
                            assert_eq!(*byte, expected, "{op:?}: byte {i}");
                        }
                    }
                }
                Op::Write { off, len, seed, .. } => {
                    updates.push((off, pattern(seed, len).into_iter().map(Some).collect()))
                }
                Op::Zeroes { off, len, .. } => updates.push((off, vec![Some(0); len as usize])),
                Op::Trim { off, len } => updates.push((off, vec![None; len as usize])),
                Op::Flush | Op::OutOfRange { .. } => {}
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

#[test]
fn random_request_sequences_match_an_in_memory_model() {
    // The model covers the first SIZE bytes; the bystander uses the rest.
    let contents: Vec<u8> = (0..EXPORT_SIZE).map(|i| (i * 7 % 256) as u8).collect();
    let server = TestServer::start(Setup {
        iothreads: 2,
        contents,
        ..Setup::default()
    });
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let batches = prop::collection::vec(prop::collection::vec(op(), 1..8), 1..12);
    let bystander = std::cell::RefCell::new(server.client());
    runner
        .run(&batches, |batches| {
            run_case(&server, &mut bystander.borrow_mut(), &batches);
            Ok(())
        })
        .unwrap();
    // Another client still gets served after all of it.
    round_trip(&mut server.client(), 0, 42);
}
