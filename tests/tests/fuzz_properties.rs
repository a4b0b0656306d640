//! The proptest twins of the fuzz targets in `tests/fuzz`: the same checks (`tests::fuzzing`), on
//! structured inputs that reach the accepting paths, for a bounded number of cases so they run in CI.
//! The fuzz targets explore raw bytes; these make sure the interesting inputs are always covered.

use examples::nbd::proto::{opt, ExportLimits, Request, IHAVEOPT, MAX_OPTION_DATA};
use examples::nbd::replay::HandshakeReplay;
use proptest::prelude::*;
use tests::fuzzing::nbd::{self, EXPORT_NAME};
use tests::fuzzing::virtio_blk::{self, AVAIL_RING, DESC_TABLE, QUEUE_SIZE};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

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

/// One option as a client sends it (header and data), valid or not.
fn client_option() -> impl Strategy<Value = Vec<u8>> {
    let info_types = proptest::collection::vec(prop_oneof![Just(3u16), Just(0), any::<u16>()], 0..4);
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
    ];
    (option_and_data, 0..20u8).prop_map(|((option, data), twist)| {
        let magic = if twist == 0 { IHAVEOPT ^ 1 } else { IHAVEOPT };
        let length = if twist == 1 { MAX_OPTION_DATA + 1 } else { data.len() as u32 };
        let mut bytes = magic.to_be_bytes().to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(&data);
        bytes
    })
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

/// A request chain: its type and sector, the descriptors between header and status, and whether it is
/// framed like a real request (header first, status byte last) or just raw descriptors.
fn chain() -> impl Strategy<Value = (u32, u64, Vec<(u64, u32, bool)>, bool)> {
    let kind = prop_oneof![
        Just(VIRTIO_BLK_T_IN),
        Just(VIRTIO_BLK_T_OUT),
        Just(VIRTIO_BLK_T_FLUSH),
        Just(VIRTIO_BLK_T_GET_ID),
        Just(VIRTIO_BLK_T_DISCARD),
        Just(VIRTIO_BLK_T_WRITE_ZEROES),
        any::<u32>(),
    ];
    let sector = prop_oneof![0u64..2048, any::<u64>()];
    let ranges = prop_oneof![Just((0x800, 16, false)), Just((0x800, 48, false))];
    let middle = proptest::collection::vec(prop_oneof![4 => descriptor(), 1 => ranges], 0..6);
    (kind, sector, middle, prop_oneof![4 => Just(true), 1 => Just(false)])
}

/// Writes `value` little-endian at `at`.
fn put(image: &mut [u8], at: u64, value: &[u8]) {
    image[at as usize..at as usize + value.len()].copy_from_slice(value);
}

/// Guest memory for `chains`: the descriptors linked in the table, the headers at 0x400, the
/// DISCARD/WRITE_ZEROES ranges at 0x800, the heads on the avail ring. `indirect` moves the first chain
/// into an indirect table at 0xc00; `avail_idx` overrides the published count.
fn queue_image(
    chains: &[(u32, u64, Vec<(u64, u32, bool)>, bool)],
    ranges: &[u8],
    indirect: bool,
    avail_idx: Option<u16>,
) -> Vec<u8> {
    let mut image = vec![0u8; 0x4000];
    put(&mut image, 0x800, ranges);
    let mut next_free = 0u16;
    let mut heads = Vec::new();
    for (i, (kind, sector, middle, framed)) in chains.iter().enumerate() {
        let header_at = 0x400 + 32 * i as u64;
        put(&mut image, header_at, &kind.to_le_bytes());
        put(&mut image, header_at + 8, &sector.to_le_bytes());
        let mut descs = middle.clone();
        if *framed {
            descs.insert(0, (header_at, 16, false));
            descs.push((0x600 + i as u64, 1, true));
        }
        let into_indirect = indirect && i == 0 && !descs.is_empty();
        let (table, base) = if into_indirect { (0xc00, 0) } else { (DESC_TABLE, next_free) };
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
            put(&mut image, at + 12, &(VRING_DESC_F_INDIRECT as u16).to_le_bytes());
            next_free += 1;
        } else {
            next_free = next_free.saturating_add(descs.len().max(1) as u16);
        }
    }
    for (slot, head) in heads.iter().enumerate() {
        put(&mut image, AVAIL_RING + 4 + 2 * slot as u64, &head.to_le_bytes());
    }
    let idx = avail_idx.unwrap_or(heads.len() as u16);
    put(&mut image, AVAIL_RING + 2, &idx.to_le_bytes());
    image
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Twin of `nbd_handshake_options`: option sequences, some malformed, some cut short, replayed into
    /// the server's handshake and checked reply by reply; each option's data through the parsers.
    #[test]
    fn handshake_answers_every_option_as_the_protocol_says(
        flags in prop_oneof![4 => Just(3u32), 1 => 0u32..4, 1 => any::<u32>()],
        options in proptest::collection::vec(client_option(), 0..6),
        cut in prop_oneof![3 => Just(None), 1 => any::<prop::sample::Index>().prop_map(Some)],
    ) {
        let mut client = flags.to_be_bytes().to_vec();
        for option in &options {
            nbd::check_option_parsers(&option[16..]);
            nbd::check_option_parsers(option);
            client.extend_from_slice(option);
        }
        if let Some(cut) = cut {
            client.truncate(cut.index(client.len() + 1));
        }
        REPLAY.with(|replay| nbd::check_handshake(replay, &client));
    }

    /// Twin of `nbd_request`: requests near the export's edges and alignment, with the limits encoded
    /// after the header the way the fuzz target reads them.
    #[test]
    fn accepted_requests_are_servable_as_they_are(
        command in prop_oneof![4 => 0u16..8, 1 => any::<u16>()],
        flags in prop_oneof![4 => 0u16..4, 1 => any::<u16>()],
        cookie: u64,
        size_sectors in prop_oneof![0u64..4096, any::<u64>().prop_map(|s| s / 512)],
        offset_sectors in prop_oneof![0u64..4096, any::<u64>().prop_map(|s| s / 512)],
        length in prop_oneof![(0u32..64).prop_map(|n| n * 512), 0u32..4096, any::<u32>()],
        nudge in prop_oneof![3 => Just(0u64), 1 => 0u64..512],
        read_only: bool,
        block_shift in 0u8..13,
        bad_magic in prop::bool::weighted(0.05),
    ) {
        let limits = ExportLimits {
            size: size_sectors * 512,
            read_only,
            min_block: 1 << block_shift,
        };
        let request = Request { flags, command, cookie, offset: offset_sectors * 512 + nudge, length };
        let mut input = nbd::request_bytes(&request).to_vec();
        if bad_magic {
            input[0] ^= 0x80;
        }
        input.extend_from_slice(&limits.size.to_be_bytes());
        input.extend_from_slice(&[u8::from(read_only), block_shift]);
        let (header, decoded) = nbd::split_request_input(&input);
        prop_assert_eq!(decoded, limits);
        nbd::check_request(header, &limits);
    }

    /// Twin of `virtio_blk_request`: queues of linked chains (framed requests or raw descriptors, one
    /// possibly through an indirect table) taken, parsed and completed by the device's own code.
    #[test]
    fn device_takes_parses_and_completes_every_chain(
        chains in proptest::collection::vec(chain(), 1..5),
        ranges in prop_oneof![
            proptest::collection::vec(any::<u8>(), 48),
            (0u64..2048, 1u32..64, 0u32..2).prop_map(|(sector, count, flags)| {
                let mut range = sector.to_le_bytes().to_vec();
                range.extend_from_slice(&count.to_le_bytes());
                range.extend_from_slice(&flags.to_le_bytes());
                range.repeat(3)
            }),
        ],
        indirect in prop::bool::weighted(0.2),
        avail_idx in prop_oneof![9 => Just(None), 1 => any::<u16>().prop_map(Some)],
    ) {
        virtio_blk::check_virtqueue(&queue_image(&chains, &ranges, indirect, avail_idx));
    }
}
