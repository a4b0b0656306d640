//! Properties of the virtio-blk request parser (examples::virtio_blk::request) on arbitrary chains.

use examples::virtio_blk::request::{parse, Limits};
use proptest::prelude::*;
use tests::fuzzing::virtio_blk::check_parsed;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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
        check_parsed(&mem, &limits, &parse(&mem, chain, &limits));
    }
}
