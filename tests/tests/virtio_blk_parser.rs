//! Properties of the virtio-blk request parser (examples::virtio_blk::request) on arbitrary chains.

use examples::virtio_blk::request::{parse, Limits, Op};
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const MEM: u64 = 0x10000;

/// A descriptor the way virtio-queue yields it: any address, length and direction.
fn desc() -> impl Strategy<Value = (u64, u32, bool)> {
    (
        prop_oneof![0..MEM + 0x100, Just(u64::MAX - 8), any::<u64>()],
        prop_oneof![0u32..0x2000, any::<u32>()],
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever the guest writes, the parser returns (no panic), and what it accepts lies in
    /// guest memory and in the disk.
    #[test]
    fn accepted_requests_stay_inside_memory_and_disk(
        kind in prop_oneof![0u32..16, any::<u32>()],
        sector in prop_oneof![0u64..0x1000, any::<u64>()],
        ranges in proptest::collection::vec(any::<u8>(), 32),
        middle in proptest::collection::vec(desc(), 0..8),
        framed in any::<bool>(),
    ) {
        // Half the chains are framed like a real request (header first, status byte last), so
        // that the accepting paths are explored as much as the rejecting ones.
        let mut descs = middle;
        if framed {
            descs.insert(0, (0, 16, false));
            descs.push((0x100, 1, true));
        }
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&header, GuestAddress(0)).unwrap();
        mem.write_slice(&ranges, GuestAddress(16)).unwrap();
        let limits = Limits::for_capacity(1 << 20);
        let chain = descs.iter().map(|&(addr, len, write)| {
            let flags = if write { virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16 } else { 0 };
            virtio_queue::desc::split::Descriptor::new(addr, len, flags, 0)
        });
        match parse(&mem, chain, &limits) {
            Ok(req) => {
                prop_assert!(mem.check_range(req.status, 1));
                let mut total = 0u64;
                for seg in &req.data {
                    prop_assert!(seg.len > 0 && mem.check_range(seg.addr, seg.len as usize));
                    total += u64::from(seg.len);
                }
                prop_assert_eq!(total, req.data_len);
                match &req.op {
                    Op::Read | Op::Write => {
                        prop_assert!(req.offset + req.data_len <= limits.capacity);
                        prop_assert!(req.data_len <= limits.max_transfer);
                    }
                    Op::Discard(rs) | Op::WriteZeroes(rs) => {
                        for r in rs {
                            prop_assert!(r.offset + r.len <= limits.capacity);
                        }
                    }
                    Op::Flush | Op::GetId => {}
                }
            }
            Err(rejected) => {
                if let Some(at) = rejected.status_addr {
                    prop_assert!(mem.check_range(at, 1));
                    prop_assert!(rejected.reason.status().is_some());
                }
            }
        }
    }
}
