//! The twins of the NBD transmission fuzz targets: `nbd_request` (request headers in every reply mode),
//! `nbd_reply_chunks` (chunk encodings) and `nbd_extents` (allocation maps to extents and chunks).

use examples::nbd::proto::extents::ReadChunk;
use examples::nbd::proto::{errno, ExportLimits, Negotiated, ReplyMode, Request};
use proptest::prelude::*;
use tests::fuzzing::{nbd, nbd_chunks};

use super::run_cases;

/// Twin of `nbd_request`: requests near the export's edges and alignment, in every reply mode, with the
/// mode and limits encoded around the header the way the fuzz target reads them.
#[test]
fn accepted_requests_are_servable_as_they_are() {
    let request = (
        prop_oneof![4 => 0u16..9, 2 => Just(7u16), 1 => Just(5u16), 1 => any::<u16>()],
        prop_oneof![
            6 => Just(0u16),
            2 => (0u16..6).prop_map(|b| 1 << b),
            1 => 0u16..64,
            1 => any::<u16>()
        ],
        any::<u64>(),
        (
            prop_oneof![3 => 0u64..1024, 1 => any::<u64>().prop_map(|s| s / 512)],
            prop_oneof![3 => Just(0u64), 1 => 0u64..512],
        ),
        prop_oneof![
            3 => (0u64..64).prop_map(|n| n * 512),
            1 => 0u64..4096,
            1 => any::<u32>().prop_map(u64::from),
            1 => any::<u64>(),
        ],
    );
    let limits = (
        prop_oneof![3 => 1024u64..4096, 1 => 0u64..1024, 1 => any::<u64>().prop_map(|s| s / 512)],
        prop::bool::weighted(0.5),
        prop_oneof![3 => 0u8..10, 1 => 0u8..13],
        prop::bool::weighted(0.05),
        (0u8..3, any::<bool>()),
    );
    let verdicts = run_cases((request, limits), |(request, limits)| {
        let (command, flags, cookie, (offset_sectors, nudge), length) = request;
        let (size_sectors, read_only, block_shift, bad_magic, (mode, base_allocation)) = limits;
        let negotiated = Negotiated {
            mode: [
                ReplyMode::Simple,
                ReplyMode::Structured,
                ReplyMode::Extended,
            ][mode as usize],
            base_allocation,
        };
        let extended = negotiated.mode == ReplyMode::Extended;
        let limits = ExportLimits {
            size: size_sectors * 512,
            read_only,
            min_block: 1 << block_shift,
        };
        let request = Request {
            flags,
            command,
            cookie,
            offset: offset_sectors * 512 + nudge,
            // A compact header carries 32 bits.
            length: if extended {
                length
            } else {
                length as u32 as u64
            },
        };
        let mut input = vec![nbd::mode_byte(&negotiated)];
        input.extend(nbd::request_bytes(&request, extended));
        if bad_magic {
            input[1] ^= 0x80;
        }
        input.extend_from_slice(&limits.size.to_be_bytes());
        input.extend_from_slice(&[u8::from(read_only), block_shift]);
        let (decoded_mode, header, decoded) = nbd::split_request_input(&input);
        assert_eq!((decoded_mode, decoded), (negotiated, limits));
        (command, nbd::check_request(header, &limits, &negotiated))
    });
    let count = |v: Option<Result<(), u32>>| verdicts.iter().filter(|&&(_, x)| x == v).count();
    assert!(count(Some(Ok(()))) > 50, "too few requests accepted");
    assert!(
        count(Some(Err(errno::EPERM))) > 10,
        "too few read-only refusals"
    );
    assert!(
        count(Some(Err(errno::EINVAL))) > 50,
        "too few invalid requests"
    );
    assert!(count(None) > 8, "too few bad magics");
    let accepted = |c: u16| verdicts.iter().filter(|&&v| v == (c, Some(Ok(())))).count();
    assert!(accepted(7) > 3, "too few BLOCK_STATUS accepted");
    assert!(accepted(5) > 3, "too few CACHE accepted");
}

/// Twin of `nbd_reply_chunks`: chunks of every type, both framings, read back field by field.
#[test]
fn reply_chunks_round_trip() {
    let checked = run_cases(proptest::collection::vec(any::<u8>(), 0..256), |bytes| {
        nbd_chunks::check_chunk_round_trips(&bytes)
    });
    assert!(
        checked.iter().sum::<usize>() > 1000,
        "too few chunks checked"
    );
}

/// Twin of `nbd_extents`: allocation maps at byte and sector grain, units of 1, 512 and 4096 bytes,
/// caps of 1 to 16 extents, and probes that answer nonsense.
#[test]
fn extents_and_read_chunks_say_only_what_the_map_says() {
    let input = proptest::collection::vec(any::<u8>(), 0..64);
    let results = run_cases(input, |bytes| {
        let input = nbd_chunks::extents_input(&bytes);
        let truthful = input.answers.is_none();
        let (status, chunks) = nbd_chunks::check_extents(&input);
        let holes = chunks
            .iter()
            .filter(|c| matches!(c, ReadChunk::Hole { .. }))
            .count();
        (truthful, status.iter().any(|e| e.hole), holes)
    });
    let truthful_with_holes = results.iter().filter(|r| r.0 && r.1 && r.2 > 0).count();
    assert!(truthful_with_holes > 50, "too few maps with holes");
    assert!(
        results.iter().filter(|r| !r.0).count() > 50,
        "too few nonsense probes"
    );
}
