//! The virtio-blk device's untrusted input: a split virtqueue and the requests on it, all written by the
//! guest. [`check_virtqueue`] lays arbitrary bytes out as guest memory holding a descriptor table and
//! rings, lets the device's own code take and parse every published chain and complete it, and checks
//! what the parser accepted and what the device put on the used ring.

use examples::virtio_blk::device::{complete, make_queue, take_chains};
use examples::virtio_blk::request::{Limits, Op, Rejected, Request};
use examples::virtio_blk::{GuestMemory, QueueConfig};
use virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// Descriptors in the fuzzed queue.
pub const QUEUE_SIZE: u16 = 16;
/// Guest address of the descriptor table (16 bytes per descriptor).
pub const DESC_TABLE: u64 = 0;
/// Guest address of the available ring: flags, idx, ring[QUEUE_SIZE], used_event.
pub const AVAIL_RING: u64 = 0x100;
/// Guest address of the used ring.
pub const USED_RING: u64 = 0x200;
/// The guest's memory: two regions with a hole between them, so addresses can fall in the gap and
/// segments can straddle it.
pub const REGIONS: [(u64, usize); 2] = [(0, 0x2000), (0x3000, 0x2000)];

/// The device limits the fuzzed queue is served with: small enough for a 16-descriptor chain to
/// exceed them.
pub fn limits() -> Limits {
    Limits {
        max_segments: 8,
        max_transfer: 64 << 10,
        max_ranges: 4,
        max_range_bytes: 256 << 10,
        ..Limits::for_capacity(1 << 20)
    }
}

/// Guest memory in the [`REGIONS`] layout, filled from `image` (region after region; the rest zero).
pub fn guest_memory(image: &[u8]) -> GuestMemory {
    let ranges: Vec<_> = REGIONS
        .iter()
        .map(|&(at, len)| (GuestAddress(at), len))
        .collect();
    let mem = GuestMemory::from_ranges(&ranges).expect("mapping guest memory");
    let mut rest = image;
    for &(at, len) in &REGIONS {
        let (part, tail) = rest.split_at(rest.len().min(len));
        mem.write_slice(part, GuestAddress(at))
            .expect("inside the region");
        rest = tail;
    }
    mem
}

/// Runs the device's queue handling on guest memory laid out from `image`: every chain published on the
/// avail ring is parsed (checked by [`check_parsed`]) and completed as the device completes it. Every
/// chain with a valid head gets exactly one used-ring entry; a broken avail ring is refused without one.
/// Returns the requests the parser accepted.
pub fn check_virtqueue(image: &[u8]) -> Vec<Request> {
    let mem = guest_memory(image);
    let config = QueueConfig {
        size: QUEUE_SIZE,
        desc_table: GuestAddress(DESC_TABLE),
        avail_ring: GuestAddress(AVAIL_RING),
        used_ring: GuestAddress(USED_RING),
        event_idx: true,
    };
    let mut queue = make_queue(&mem, &config).expect("the rings fit in guest memory");
    let limits = limits();
    let avail_idx: u16 = mem.read_obj(GuestAddress(AVAIL_RING + 2)).unwrap();
    let used_idx_before: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
    let taken = take_chains(&mut queue, &mem, &limits);
    // An avail index more than a queue ahead of the device breaks the ring; nothing else does.
    assert_eq!(
        taken.is_err(),
        avail_idx > QUEUE_SIZE,
        "avail index {avail_idx}"
    );
    let Ok(chains) = taken else {
        return Vec::new();
    };
    let mut used = 0u16;
    for (head, parsed) in &chains {
        check_parsed(&mem, &limits, parsed);
        let status = match parsed {
            Ok(request) => Some((request.status, VIRTIO_BLK_S_OK as u8)),
            Err(rejected) => rejected.status_addr.zip(rejected.reason.status()),
        };
        let completed = complete(&mut queue, &mem, *head, status, 0);
        assert_eq!(
            completed.is_ok(),
            *head < QUEUE_SIZE,
            "completing head {head}: {completed:?}"
        );
        used += u16::from(completed.is_ok());
        if let Some((at, code)) = status.filter(|_| completed.is_ok()) {
            // Putting the used element may overwrite a status byte the guest placed in the used ring.
            let in_used_ring = (USED_RING..USED_RING + 0x100).contains(&at.raw_value());
            let byte: u8 = mem.read_obj(at).unwrap();
            assert!(
                in_used_ring || byte == code,
                "status byte at {at:?} not written"
            );
        }
    }
    // The device counts from 0 and stores its index after each entry; until the first entry the
    // guest's own bytes stay (a chain whose head is out of range has no status byte to write either).
    let used_idx: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
    let expected = if used == 0 { used_idx_before } else { used };
    assert_eq!(
        used_idx,
        expected,
        "used ring index after {} chains",
        chains.len()
    );
    chains
        .into_iter()
        .filter_map(|(_, parsed)| parsed.ok())
        .collect()
}

/// Checks the parser's promises about one chain: an accepted request lies entirely in guest memory and
/// in the disk and respects `limits`; a rejected one has a status byte in guest memory exactly when its
/// reason has a status to report.
pub fn check_parsed<M: GuestMemoryBackend>(
    mem: &M,
    limits: &Limits,
    parsed: &Result<Request, Rejected>,
) {
    let request = match parsed {
        Ok(request) => request,
        Err(rejected) => {
            let status = rejected.reason.status();
            assert_eq!(rejected.status_addr.is_some(), status.is_some());
            if let Some(at) = rejected.status_addr {
                assert!(mem.check_range(at, 1), "status byte outside guest memory");
            }
            return;
        }
    };
    assert!(mem.check_range(request.status, 1));
    let mut total = 0u64;
    for seg in &request.data {
        assert!(seg.len > 0, "empty segment");
        assert!(
            mem.check_range(seg.addr, seg.len as usize),
            "{seg:?} outside guest memory"
        );
        total += u64::from(seg.len);
    }
    assert_eq!(total, request.data_len);
    match &request.op {
        Op::Read | Op::Write => {
            assert_eq!(request.data_len % 512, 0, "unaligned transfer");
            assert!(request.data.len() <= limits.max_segments);
            assert!(request.data_len <= limits.max_transfer);
            let end = request.offset.checked_add(request.data_len);
            assert!(
                end.is_some_and(|end| end <= limits.capacity),
                "past the disk"
            );
        }
        Op::Discard(ranges) | Op::WriteZeroes(ranges) => {
            assert!(!ranges.is_empty() && ranges.len() <= limits.max_ranges);
            for r in ranges {
                assert!(r.len <= limits.max_range_bytes);
                assert!(r
                    .offset
                    .checked_add(r.len)
                    .is_some_and(|end| end <= limits.capacity));
            }
            if matches!(request.op, Op::Discard(_)) {
                assert!(ranges.iter().all(|r| !r.unmap), "DISCARD takes no flags");
            }
        }
        Op::Flush => assert!(request.data.is_empty()),
        Op::GetId => {}
    }
}
