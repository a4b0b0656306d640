//! The proptest twins of the fuzz targets in `tests/fuzz`: the same checks (`tests::fuzzing`), on
//! structured inputs that reach the accepting paths, for a bounded number of cases so they run in CI.
//! The fuzz targets explore raw bytes; these make sure the interesting inputs are always covered.

use std::io::ErrorKind;

use examples::nbd::proto::{opt, Negotiated, ReplyMode, IHAVEOPT, MAX_OPTION_DATA};
use examples::nbd::replay::HandshakeReplay;
use examples::nbd::{HandshakeOutcome, MAX_OPTIONS};
use examples::virtio_blk::Op;
use proptest::prelude::*;
use tests::fuzzing::nbd::{self, EXPORT_NAME};
use tests::fuzzing::virtio_blk::{self, AVAIL_RING, DESC_TABLE, QUEUE_SIZE};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

#[path = "app_fuzz_properties/nbd_transmission.rs"]
mod nbd_transmission;

thread_local! {
    static REPLAY: HandshakeReplay = nbd::replay_target();
}

/// An export name a client may ask for: ours, the default, or another.
fn export_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(EXPORT_NAME.as_bytes().to_vec()),
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

/// A metadata context query: the context, the namespace alone, another namespace, or anything.
fn meta_query() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(b"base:allocation".to_vec()),
        1 => Just(b"base:".to_vec()),
        1 => Just(b"qemu:dirty-bitmap:x".to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..8),
    ]
}

/// One option as a client sends it (header and data), valid or not.
fn client_option() -> impl Strategy<Value = Vec<u8>> {
    let info_types =
        proptest::collection::vec(prop_oneof![Just(3u16), Just(0), any::<u16>()], 0..4);
    let (info, go) = (Just(opt::INFO), Just(opt::GO));
    let option_and_data = prop_oneof![
        4 => (prop_oneof![info, go], export_name(), info_types, 0..8usize).prop_map(
            |(option, name, types, damage)| {
                let mut data = nbd::info_data(&name, &types);
                // Now and then cut the data short or leave a byte over.
                match damage {
                    0 => data.truncate(data.len() / 2),
                    1 => data.push(0),
                    _ => {}
                }
                (option, data)
            }
        ),
        2 => export_name().prop_map(|name| (opt::EXPORT_NAME, name)),
        1 => Just((opt::ABORT, Vec::new())),
        2 => prop_oneof![Just(Vec::new()), Just(vec![1])].prop_map(|data| (opt::LIST, data)),
        2 => (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..8)),
        // Structured replies and extended headers: mostly without data, as they must be.
        3 => (prop_oneof![Just(opt::STRUCTURED_REPLY), Just(opt::EXTENDED_HEADERS)], 0..6u8)
            .prop_map(|(option, junk)| (option, if junk == 0 { vec![1] } else { Vec::new() })),
        4 => (
            prop_oneof![Just(opt::LIST_META_CONTEXT), Just(opt::SET_META_CONTEXT)],
            export_name(),
            proptest::collection::vec(meta_query(), 0..3),
            0..10usize,
        )
            .prop_map(|(option, name, queries, damage)| {
                let queries: Vec<&[u8]> = queries.iter().map(|q| q.as_slice()).collect();
                let mut data = nbd::meta_data(&name, &queries);
                match damage {
                    0 => data.truncate(data.len() / 2),
                    1 => data.push(0),
                    _ => {}
                }
                (option, data)
            }),
    ];
    (option_and_data, 0..20u8).prop_map(|((option, data), twist)| {
        let mut bytes = option_bytes(option, &data);
        match twist {
            0 => bytes[7] ^= 1,
            1 => bytes[12..16].copy_from_slice(&(MAX_OPTION_DATA + 1).to_be_bytes()),
            _ => {}
        }
        bytes
    })
}

/// One option as a client sends it: magic, number, length, data.
fn option_bytes(number: u32, data: &[u8]) -> Vec<u8> {
    let mut bytes = IHAVEOPT.to_be_bytes().to_vec();
    bytes.extend_from_slice(&number.to_be_bytes());
    bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// A raw descriptor: anywhere in guest memory, across the hole, or anywhere at all.
fn descriptor() -> impl Strategy<Value = (u64, u32, bool)> {
    (
        prop_oneof![
            3 => 0x1000u64..0x1e00,
            2 => 0x3000u64..0x4e00,
            1 => 0x1f00u64..0x3100,
            1 => any::<u64>(),
        ],
        prop_oneof![3 => Just(512u32), 2 => Just(4096), 2 => 0u32..0x2000, 1 => any::<u32>()],
        any::<bool>(),
    )
}

/// A request chain: its type and sector, the descriptors between header and status, whether it is
/// framed like a real request (header first, status byte last) or just raw descriptors, and whether its
/// data descriptors are tidied to fit the type (direction, sector multiples, the range list).
type Chain = (u32, u64, Vec<(u64, u32, bool)>, bool, bool);

fn chain() -> impl Strategy<Value = Chain> {
    let kind = prop_oneof![
        Just(VIRTIO_BLK_T_IN),
        Just(VIRTIO_BLK_T_OUT),
        Just(VIRTIO_BLK_T_FLUSH),
        Just(VIRTIO_BLK_T_GET_ID),
        Just(VIRTIO_BLK_T_DISCARD),
        Just(VIRTIO_BLK_T_WRITE_ZEROES),
        any::<u32>(),
    ];
    let sector = prop_oneof![3 => 0u64..2000, 1 => any::<u64>()];
    let ranges = prop_oneof![Just((0x800, 16, false)), Just((0x800, 48, false))];
    let middle = proptest::collection::vec(prop_oneof![4 => descriptor(), 1 => ranges], 0..6);
    let framed = prop::bool::weighted(0.8);
    (kind, sector, middle, framed, prop::bool::weighted(0.7))
}

/// The descriptors of `chain` between header and status, tidied if asked.
fn data_descriptors(&(kind, _, ref middle, _, tidy): &Chain) -> Vec<(u64, u32, bool)> {
    if !tidy {
        return middle.clone();
    }
    match kind {
        VIRTIO_BLK_T_FLUSH => Vec::new(),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => vec![(0x800, 48, false)],
        _ => {
            let write = matches!(kind, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);
            // Up to 2 KiB somewhere in the first 4 KiB of a region: always inside guest memory.
            let place = |i: usize, addr: u64| [0x1000, 0x3000][i % 2] + addr % 0x800;
            let sectors = |len: u32| (len / 512).clamp(1, 4) * 512;
            let tidied = middle.iter().enumerate();
            tidied
                .map(|(i, &(addr, len, _))| (place(i, addr), sectors(len), write))
                .collect()
        }
    }
}

/// Writes `value` little-endian at `at`.
fn put(image: &mut [u8], at: u64, value: &[u8]) {
    image[at as usize..at as usize + value.len()].copy_from_slice(value);
}

/// Guest memory for `chains`: the descriptors linked in the table, the headers at 0x400, the
/// DISCARD/WRITE_ZEROES ranges at 0x800, the heads on the avail ring. `indirect` moves the first chain
/// into an indirect table at 0xc00; `avail_idx` overrides the published count.
fn queue_image(chains: &[Chain], ranges: &[u8], indirect: bool, avail_idx: Option<u16>) -> Vec<u8> {
    let mut image = vec![0u8; 0x4000];
    put(&mut image, 0x800, ranges);
    let mut next_free = 0u16;
    let mut heads = Vec::new();
    for (i, chain) in chains.iter().enumerate() {
        let &(kind, sector, _, framed, _) = chain;
        let header_at = 0x400 + 32 * i as u64;
        put(&mut image, header_at, &kind.to_le_bytes());
        put(&mut image, header_at + 8, &sector.to_le_bytes());
        let mut descs = data_descriptors(chain);
        if framed {
            descs.insert(0, (header_at, 16, false));
            descs.push((0x600 + i as u64, 1, true));
        }
        let into_indirect = indirect && i == 0 && !descs.is_empty();
        let (table, base) = if into_indirect {
            (0xc00, 0)
        } else {
            (DESC_TABLE, next_free)
        };
        for (j, &(addr, len, write)) in descs.iter().enumerate() {
            let index = base + j as u16;
            if !into_indirect && index >= QUEUE_SIZE {
                break;
            }
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if j + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = table + 16 * u64::from(index);
            put(&mut image, at, &addr.to_le_bytes());
            put(&mut image, at + 8, &len.to_le_bytes());
            put(&mut image, at + 12, &flags.to_le_bytes());
            put(&mut image, at + 14, &(index + 1).to_le_bytes());
        }
        if next_free >= QUEUE_SIZE {
            break;
        }
        heads.push(next_free);
        if into_indirect {
            let at = DESC_TABLE + 16 * u64::from(next_free);
            put(&mut image, at, &0xc00u64.to_le_bytes());
            put(&mut image, at + 8, &(16 * descs.len() as u32).to_le_bytes());
            put(
                &mut image,
                at + 12,
                &(VRING_DESC_F_INDIRECT as u16).to_le_bytes(),
            );
            next_free += 1;
        } else {
            next_free = next_free.saturating_add(descs.len().max(1) as u16);
        }
    }
    for (slot, head) in heads.iter().enumerate() {
        put(
            &mut image,
            AVAIL_RING + 4 + 2 * slot as u64,
            &head.to_le_bytes(),
        );
    }
    let idx = avail_idx.unwrap_or(heads.len() as u16);
    put(&mut image, AVAIL_RING + 2, &idx.to_le_bytes());
    image
}

const CASES: u32 = 512;

/// Runs `check` on [`CASES`] values of `strategy` (shrinking a failure) and returns what each run
/// returned, so that a test can also show its inputs reached the paths that matter.
fn run_cases<S: Strategy, R>(strategy: S, check: impl Fn(S::Value) -> R) -> Vec<R> {
    let config = ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let seen = std::cell::RefCell::new(Vec::new());
    let result = proptest::test_runner::TestRunner::new(config).run(&strategy, |value| {
        seen.borrow_mut().push(check(value));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    seen.into_inner()
}

/// Twin of `nbd_handshake_options`: option sequences, some malformed, some cut short, replayed into
/// the server's handshake and checked reply by reply; each option's data through the parsers.
#[test]
fn handshake_answers_every_option_as_the_protocol_says() {
    // What real clients send first (qemu-img 10: EXTENDED_HEADERS, STRUCTURED_REPLY,
    // SET_META_CONTEXT), in any order and number, so that negotiated transmissions are common.
    let set_base = option_bytes(
        opt::SET_META_CONTEXT,
        &nbd::meta_data(b"", &[b"base:allocation"]),
    );
    let (extended, structured) = (
        option_bytes(opt::EXTENDED_HEADERS, &[]),
        option_bytes(opt::STRUCTURED_REPLY, &[]),
    );
    let qemu_img = vec![extended.clone(), structured.clone(), set_base.clone()];
    let libnbd = vec![structured.clone(), set_base.clone()];
    let any_order = proptest::collection::vec(
        prop_oneof![Just(extended), Just(structured), Just(set_base)],
        0..4,
    );
    let prologue = prop_oneof![1 => Just(qemu_img), 1 => Just(libnbd), 2 => any_order];
    // And often a GO at the end, as every client sends.
    let go = option_bytes(opt::GO, &nbd::info_data(b"", &[3]));
    let epilogue = prop_oneof![2 => Just(Vec::new()), 1 => Just(go)];
    let client_stream = (
        prop_oneof![4 => Just(3u32), 1 => 0u32..4, 1 => any::<u32>()],
        (
            prologue,
            proptest::collection::vec(client_option(), 0..6),
            epilogue,
        ),
        prop_oneof![3 => Just(None), 1 => any::<prop::sample::Index>().prop_map(Some)],
    );
    let negotiated = std::cell::RefCell::new(Vec::new());
    let ends = run_cases(client_stream, |(flags, (prologue, options, go), cut)| {
        let mut client = flags.to_be_bytes().to_vec();
        for option in prologue.iter().chain(&options) {
            nbd::check_option_parsers(&option[16..]);
            nbd::check_option_parsers(option);
            client.extend_from_slice(option);
        }
        client.extend_from_slice(&go);
        if let Some(cut) = cut {
            client.truncate(cut.index(client.len() + 1));
        }
        REPLAY.with(|replay| {
            let ended = nbd::check_handshake(replay, &client);
            if ended == Ok(HandshakeOutcome::Transmission) {
                negotiated
                    .borrow_mut()
                    .push(replay.replay(&client).negotiated);
            }
            ended
        })
    });
    let negotiated = negotiated.into_inner();
    let reached = |f: fn(&Negotiated) -> bool| negotiated.iter().filter(|n| f(n)).count();
    let extended = reached(|n| n.mode == ReplyMode::Extended);
    assert!(
        reached(|n| n.mode == ReplyMode::Structured) > 10,
        "too few structured"
    );
    assert!(extended > 10, "too few extended");
    assert!(
        reached(|n| n.base_allocation) > 10,
        "too few with base:allocation"
    );
    let count = |end: nbd::Ended| ends.iter().filter(|&&e| e == end).count();
    assert!(
        count(Ok(HandshakeOutcome::Transmission)) > 40,
        "too few reach transmission"
    );
    assert!(count(Ok(HandshakeOutcome::Aborted)) > 15, "too few aborts");
    assert!(
        count(Err(ErrorKind::InvalidData)) > 80,
        "too few protocol errors"
    );
    assert!(
        count(Err(ErrorKind::UnexpectedEof)) > 80,
        "too few cut-short streams"
    );
}

/// Twin of `virtio_blk_request`: queues of linked chains (framed requests or raw descriptors, one
/// possibly through an indirect table) taken, parsed and completed by the device's own code.
#[test]
fn device_takes_parses_and_completes_every_chain() {
    let ranges = prop_oneof![
        proptest::collection::vec(any::<u8>(), 48),
        (0u64..2048, 1u32..64, 0u32..2).prop_map(|(sector, count, flags)| {
            let mut range = sector.to_le_bytes().to_vec();
            range.extend_from_slice(&count.to_le_bytes());
            range.extend_from_slice(&flags.to_le_bytes());
            range.repeat(3)
        }),
    ];
    let queue = (
        proptest::collection::vec(chain(), 1..5),
        ranges,
        prop::bool::weighted(0.2),
        prop_oneof![9 => Just(None), 1 => any::<u16>().prop_map(Some)],
    );
    let accepted = run_cases(queue, |(chains, ranges, indirect, avail_idx)| {
        virtio_blk::check_virtqueue(&queue_image(&chains, &ranges, indirect, avail_idx))
    });
    let ops: Vec<&Op> = accepted.iter().flatten().map(|r| &r.op).collect();
    let count = |f: fn(&Op) -> bool| ops.iter().filter(|op| f(op)).count();
    assert!(
        count(|op| matches!(op, Op::Read)) > 25,
        "too few reads accepted"
    );
    assert!(
        count(|op| matches!(op, Op::Write)) > 25,
        "too few writes accepted"
    );
    assert!(
        count(|op| matches!(op, Op::Flush | Op::GetId)) > 80,
        "too few flushes/GET_IDs"
    );
    let range_ops = |op: &Op| matches!(op, Op::Discard(_) | Op::WriteZeroes(_));
    assert!(
        count(range_ops) > 25,
        "too few DISCARD/WRITE_ZEROES accepted"
    );
}

/// The option limit, beyond the reach of the fuzzer's default 4 KiB inputs: the last allowed option
/// still selects the export, one more unknown option ends the handshake.
#[test]
fn handshake_gives_up_after_max_options() {
    let mut client = 3u32.to_be_bytes().to_vec();
    for _ in 1..MAX_OPTIONS {
        client.extend_from_slice(&option_bytes(99, &[]));
    }
    let mut last_allowed = client.clone();
    last_allowed.extend_from_slice(&option_bytes(opt::GO, &nbd::info_data(b"", &[])));
    client.extend_from_slice(&option_bytes(99, &[]));
    client.extend_from_slice(&option_bytes(opt::GO, &nbd::info_data(b"", &[])));
    REPLAY.with(|replay| {
        let ended = nbd::check_handshake(replay, &last_allowed);
        assert_eq!(ended, Ok(HandshakeOutcome::Transmission));
        let ended = nbd::check_handshake(replay, &client);
        assert_eq!(ended, Err(ErrorKind::InvalidData));
    });
}

/// vhost-user message codes the twin of `vhost_user_messages` sends.
mod vu {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const GET_CONFIG: u32 = 24;
    /// Where the (fuzzing) front end has the guest memory mapped.
    pub const USER: u64 = 0x7000_0000;
    /// Fd picks: the memfd, an eventfd, the other eventfd, a socket.
    pub const MEMFD: u8 = 1;
    pub const EVENTFD: u8 = 2;
    pub const EVENTFD2: u8 = 4;
    pub const SOCKET: u8 = 8;
}

/// One vhost-user message record: (fd picks, header + body).
fn vu_message(code: u32, need_reply: bool, body: Vec<u8>, fds: u8) -> (u8, Vec<u8>) {
    let mut bytes = code.to_le_bytes().to_vec();
    bytes.extend_from_slice(&(0x1u32 | if need_reply { 0x8 } else { 0 }).to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&body);
    (fds, bytes)
}

fn le(values: &[u64], widths: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    for (v, w) in values.iter().zip(widths) {
        out.extend_from_slice(&v.to_le_bytes()[..*w]);
    }
    out
}

/// The setup a front end does for `queues` rings of 16 entries, every message valid and acked.
fn vu_valid_setup(queues: u32, reply: bool) -> Vec<(u8, Vec<u8>)> {
    use tests::fuzzing::vhost_user::GUEST_MEM;
    let features = examples::vhost_user_blk::config::virtio_features(false);
    let protocol = examples::vhost_user_blk::config::protocol_features().bits();
    let mut msgs = vec![
        vu_message(vu::GET_FEATURES, false, vec![], 0),
        vu_message(vu::SET_FEATURES, reply, features.to_le_bytes().to_vec(), 0),
        vu_message(vu::GET_PROTOCOL_FEATURES, false, vec![], 0),
        vu_message(
            vu::SET_PROTOCOL_FEATURES,
            reply,
            protocol.to_le_bytes().to_vec(),
            0,
        ),
        vu_message(vu::SET_OWNER, reply, vec![], 0),
        vu_message(
            vu::SET_MEM_TABLE,
            reply,
            le(
                &[1, 0, 1 << 32, GUEST_MEM, vu::USER, 0],
                &[4, 4, 8, 8, 8, 8],
            ),
            vu::MEMFD,
        ),
    ];
    for q in 0..u64::from(queues) {
        let base = vu::USER + q * 0x4000;
        msgs.extend([
            vu_message(vu::SET_VRING_NUM, reply, le(&[q, 16], &[4, 4]), 0),
            vu_message(vu::SET_VRING_BASE, reply, le(&[q, 0], &[4, 4]), 0),
            vu_message(
                vu::SET_VRING_ADDR,
                reply,
                le(
                    &[q, 0, base, base + 0x2000, base + 0x1000, 0],
                    &[4, 4, 8, 8, 8, 8],
                ),
                0,
            ),
            vu_message(
                vu::SET_VRING_CALL,
                reply,
                q.to_le_bytes().to_vec(),
                vu::EVENTFD2,
            ),
            vu_message(
                vu::SET_VRING_KICK,
                reply,
                q.to_le_bytes().to_vec(),
                vu::EVENTFD,
            ),
            vu_message(vu::SET_VRING_ENABLE, reply, le(&[q, 1], &[4, 4]), 0),
        ]);
    }
    msgs.push(vu_message(
        vu::GET_CONFIG,
        false,
        le(&[0, 60, 0], &[4, 4, 4])
            .into_iter()
            .chain([0; 60])
            .collect(),
        0,
    ));
    msgs.push(vu_message(
        vu::GET_VRING_BASE,
        false,
        le(&[0, 0], &[4, 4]),
        0,
    ));
    msgs
}

/// A message a front end might send, valid or not: the setup messages with values near and past
/// their limits, fds right or wrong, and random bytes.
fn vu_any_message() -> impl Strategy<Value = (u8, Vec<u8>)> {
    use tests::fuzzing::vhost_user::GUEST_MEM;
    let index = prop_oneof![4 => 0u64..2, 1 => 0u64..300];
    let fds = prop_oneof![
        Just(0u8),
        Just(vu::MEMFD),
        Just(vu::EVENTFD),
        Just(vu::SOCKET),
        0u8..16
    ];
    let reply = any::<bool>();
    prop_oneof![
        (reply, any::<u64>(), fds.clone()).prop_map(|(r, f, fds)| {
            let features = examples::vhost_user_blk::config::virtio_features(false);
            vu_message(
                vu::SET_FEATURES,
                r,
                (if f % 2 == 0 { features } else { f })
                    .to_le_bytes()
                    .to_vec(),
                fds,
            )
        }),
        (
            reply,
            0u64..4,
            prop_oneof![
                Just(GUEST_MEM),
                Just(0u64),
                Just(4096),
                Just(1 << 40),
                any::<u64>()
            ],
            prop_oneof![Just(0u64), Just(1 << 32), any::<u64>()],
            prop_oneof![Just(0u64), Just(4096), Just(13)],
            fds.clone()
        )
            .prop_map(|(r, n, size, gpa, off, fds)| {
                let mut body = le(&[n, 0], &[4, 4]);
                for i in 0..n {
                    body.extend(le(
                        &[
                            gpa + i * size.min(1 << 40),
                            size,
                            vu::USER + i * (1 << 41),
                            off,
                        ],
                        &[8, 8, 8, 8],
                    ));
                }
                vu_message(vu::SET_MEM_TABLE, r, body, fds)
            }),
        (
            reply,
            index.clone(),
            prop_oneof![
                Just(16u64),
                Just(256),
                Just(100),
                Just(65536),
                any::<u32>().prop_map(u64::from)
            ]
        )
            .prop_map(|(r, q, n)| vu_message(
                vu::SET_VRING_NUM,
                r,
                le(&[q, n], &[4, 4]),
                0
            )),
        (
            reply,
            index.clone(),
            any::<u16>(),
            0u64..0x20000,
            0u64..0x20000,
            0u64..0x20000
        )
            .prop_map(|(r, q, flags, d, u, a)| vu_message(
                vu::SET_VRING_ADDR,
                r,
                le(
                    &[
                        q,
                        u64::from(flags & 1),
                        vu::USER + d,
                        vu::USER + u,
                        vu::USER + a,
                        0
                    ],
                    &[4, 4, 8, 8, 8, 8]
                ),
                0
            )),
        (reply, index.clone(), any::<u32>()).prop_map(|(r, q, b)| vu_message(
            vu::SET_VRING_BASE,
            r,
            le(&[q, u64::from(b % 70000)], &[4, 4]),
            0
        )),
        (reply, index.clone(), any::<bool>(), fds.clone()).prop_map(|(r, q, nofd, fds)| {
            vu_message(
                vu::SET_VRING_KICK,
                r,
                (q | if nofd { 0x100 } else { 0 }).to_le_bytes().to_vec(),
                fds,
            )
        }),
        (reply, index.clone(), fds.clone()).prop_map(|(r, q, fds)| vu_message(
            vu::SET_VRING_CALL,
            r,
            q.to_le_bytes().to_vec(),
            fds
        )),
        (reply, index.clone(), 0u64..3).prop_map(|(r, q, e)| vu_message(
            vu::SET_VRING_ENABLE,
            r,
            le(&[q, e], &[4, 4]),
            0
        )),
        index
            .clone()
            .prop_map(|q| vu_message(vu::GET_VRING_BASE, false, le(&[q, 0], &[4, 4]), 0)),
        (0u64..300, 0u64..300).prop_map(|(o, s)| vu_message(
            vu::GET_CONFIG,
            false,
            le(&[o, s, 0], &[4, 4, 4])
                .into_iter()
                .chain(std::iter::repeat_n(0, s as usize))
                .collect(),
            0
        )),
        (fds, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(fds, bytes)| (fds, bytes)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Twin of `vhost_user_messages`: a valid setup, then anything; the daemon's handling takes the
    /// valid part whole, refuses or survives the rest, and every ring stops when the front end goes.
    #[test]
    fn vhost_user_messages_after_a_valid_setup(
        queues in 1u32..3,
        reply in any::<bool>(),
        tail in proptest::collection::vec(vu_any_message(), 0..12),
    ) {
        let setup = vu_valid_setup(queues, reply);
        let valid = setup.len();
        let mut records = setup;
        records.extend(tail);
        let records: Vec<_> = records.into_iter().filter(|(_, b)| b.len() <= 510).collect();
        let accepted = tests::fuzzing::vhost_user::check_messages(&tests::fuzzing::vhost_user::encode(&records));
        prop_assert!(accepted >= valid, "only {accepted} of the {valid} valid setup messages were taken");
    }
}
