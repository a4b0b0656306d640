//! The virtio-blk device model fed malformed descriptor chains by an untrusted guest: one test per
//! kind, each checking the status the guest sees (or that nothing is written where there is no status
//! byte) and that the device still serves correctly afterwards.

#[path = "app_device_model/rig.rs"]
mod rig;

use aioctx::Backend;
use examples::virtio_blk::request::Limits;
use examples::virtio_blk::workload::pattern;
use examples::virtio_blk::DescSpec;
use rig::{range, Rig, BS, DISK_SIZE, IOERR, OK, UNSET, UNSUPP};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::{Bytes, GuestAddress};

/// What one malformed chain must produce, and that the device serves on.
/// The status byte is the rig's usual one, at scratch offset 0.
fn assert_rejected(rig: &mut Rig, chain: &[DescSpec], want: u8) {
    let status_at = rig.scratch(0);
    let rejected = rig.counter(|c| &c.rejected);
    let done = rig.roundtrip(chain);
    assert_eq!(rig.mem().read_obj::<u8>(status_at).unwrap(), want, "status");
    assert_eq!(done.len, 1, "only the status byte was written");
    assert_eq!(rig.counter(|c| &c.rejected), rejected + 1);
    rig.assert_still_serving();
}

#[test]
fn malformed_too_short_header_is_ioerr() {
    let mut rig = Rig::default();
    let h = rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0);
    let chain = [
        DescSpec::read(h.addr, 8),
        DescSpec::write(rig.scratch(0x1000), 512),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &chain, IOERR);
    rig.shutdown();
}

#[test]
fn malformed_wrong_direction_is_ioerr() {
    let mut rig = Rig::default();
    // A read whose data buffer is device-readable.
    let chain = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0),
        DescSpec::read(rig.scratch(0x1000), 512),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &chain, IOERR);
    // A write whose data buffer is device-writable: the guest's buffer is not written either.
    rig.mem()
        .write_slice(&[0x5a; 512], rig.scratch(0x1000))
        .unwrap();
    let chain = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_OUT, 0),
        DescSpec::write(rig.scratch(0x1000), 512),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &chain, IOERR);
    let mut buf = [0u8; 512];
    rig.mem().read_slice(&mut buf, rig.scratch(0x1000)).unwrap();
    assert_eq!(buf, [0x5a; 512]);
    // A readable descriptor after a writable one.
    let chain = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0),
        DescSpec::write(rig.scratch(0x1000), 512),
        DescSpec::read(rig.scratch(0x2000), 512),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &chain, IOERR);
    rig.shutdown();
}

#[test]
fn malformed_without_status_byte_completes_with_nothing_written() {
    let mut rig = Rig::default();
    let cases = [
        // The last descriptor is device-readable.
        vec![
            rig.header(rig.scratch(0x10), VIRTIO_BLK_T_OUT, 0),
            DescSpec::read(rig.scratch(0x1000), 512),
        ],
        // The last descriptor is writable but empty.
        vec![
            rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0),
            DescSpec::write(rig.scratch(0x1000), 512),
            DescSpec::write(rig.scratch(0), 0),
        ],
        // The status byte is outside guest memory.
        vec![
            rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0),
            DescSpec::write(GuestAddress(rig.machine.layout.mem_size), 1),
        ],
    ];
    for chain in cases {
        rig.mem().write_obj(UNSET, rig.scratch(0)).unwrap();
        rig.mem()
            .write_slice(&[0x5a; 512], rig.scratch(0x1000))
            .unwrap();
        let rejected = rig.counter(|c| &c.rejected);
        let done = rig.roundtrip(&chain);
        assert_eq!(done.len, 0, "no status byte: nothing written");
        assert_eq!(rig.mem().read_obj::<u8>(rig.scratch(0)).unwrap(), UNSET);
        let mut buf = [0u8; 512];
        rig.mem().read_slice(&mut buf, rig.scratch(0x1000)).unwrap();
        assert_eq!(buf, [0x5a; 512], "the data buffer was not touched");
        assert_eq!(rig.counter(|c| &c.rejected), rejected + 1);
        rig.assert_still_serving();
    }
    rig.shutdown();
}

#[test]
fn malformed_sector_past_the_end_is_ioerr() {
    let mut rig = Rig::default();
    let last = DISK_SIZE / 512;
    for (sector, len) in [(last, 512u32), (last - 1, 1024), (u64::MAX / 512 + 1, 512)] {
        let chain = [
            rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, sector),
            DescSpec::write(rig.scratch(0x1000), len),
            rig.status(rig.scratch(0)),
        ];
        assert_rejected(&mut rig, &chain, IOERR);
    }
    let r = range(&rig, rig.scratch(0x100), last - 4, 8, 0);
    let chain = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_DISCARD, 0),
        r,
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &chain, IOERR);
    rig.shutdown();
}

#[test]
fn malformed_oversized_request_is_ioerr() {
    let mut rig = Rig::new(Backend::Auto, true, |l| Limits {
        max_transfer: 8192,
        max_segments: 4,
        max_ranges: 1,
        ..l
    });
    let too_long = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0),
        DescSpec::write(rig.scratch(0x1000), 16384),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &too_long, IOERR);
    let mut too_many = vec![rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0)];
    too_many.extend((0..5).map(|i| DescSpec::write(rig.scratch(0x1000 + i * 512), 512)));
    too_many.push(rig.status(rig.scratch(0)));
    assert_rejected(&mut rig, &too_many, IOERR);
    let ranges = [
        range(&rig, rig.scratch(0x100), 0, 8, 0),
        range(&rig, rig.scratch(0x110), 8, 8, 0),
    ];
    let chain = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_DISCARD, 0),
        ranges[0],
        ranges[1],
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &chain, IOERR);
    rig.shutdown();
}

#[test]
fn malformed_unaligned_length_and_guest_address_out_of_memory_are_ioerr() {
    let mut rig = Rig::default();
    let unaligned = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_OUT, 0),
        DescSpec::read(rig.scratch(0x1000), 100),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &unaligned, IOERR);
    let end = rig.machine.layout.mem_size;
    for (addr, len) in [(end, 512), (end - 512, 1024), (u64::MAX - 511, 512)] {
        let chain = [
            rig.header(rig.scratch(0x10), VIRTIO_BLK_T_IN, 0),
            DescSpec::write(GuestAddress(addr), len),
            rig.status(rig.scratch(0)),
        ];
        assert_rejected(&mut rig, &chain, IOERR);
    }
    rig.shutdown();
}

#[test]
fn malformed_unsupported_type_or_flags_is_unsupp() {
    let mut rig = Rig::default();
    let unknown = [
        rig.header(rig.scratch(0x10), 0x77, 0),
        rig.status(rig.scratch(0)),
    ];
    assert_rejected(&mut rig, &unknown, UNSUPP);
    // DISCARD with the unmap flag (only WRITE_ZEROES has it), WRITE_ZEROES with an unknown flag.
    for (kind, flags) in [(VIRTIO_BLK_T_DISCARD, 1), (VIRTIO_BLK_T_WRITE_ZEROES, 2)] {
        let r = range(&rig, rig.scratch(0x100), 0, 8, flags);
        let chain = [
            rig.header(rig.scratch(0x10), kind, 0),
            r,
            rig.status(rig.scratch(0)),
        ];
        assert_rejected(&mut rig, &chain, UNSUPP);
    }
    rig.shutdown();
}

#[test]
fn a_malformed_chain_among_valid_ones_fails_alone() {
    let mut rig = Rig::default();
    let data = pattern(4, 1, BS);
    rig.mem().write_slice(&data, rig.scratch(0x1000)).unwrap();
    let good = [
        rig.header(rig.scratch(0x10), VIRTIO_BLK_T_OUT, 64),
        DescSpec::read(rig.scratch(0x1000), BS as u32),
        rig.status(rig.scratch(0)),
    ];
    let bad = [
        rig.header(rig.scratch(0x20), VIRTIO_BLK_T_IN, DISK_SIZE / 512),
        DescSpec::write(rig.scratch(0x3000), 512),
        rig.status(rig.scratch(1)),
    ];
    let heads = [
        rig.driver.submit(&good).unwrap(),
        rig.driver.submit(&bad).unwrap(),
    ];
    rig.driver.kick().unwrap();
    let mut done = [
        rig.driver.wait_used().unwrap(),
        rig.driver.wait_used().unwrap(),
    ];
    done.sort_by_key(|c| if c.head == heads[0] { 0 } else { 1 });
    assert_eq!(done.iter().map(|c| c.head).collect::<Vec<_>>(), heads);
    assert_eq!(rig.mem().read_obj::<u8>(rig.scratch(0)).unwrap(), OK);
    assert_eq!(rig.mem().read_obj::<u8>(rig.scratch(1)).unwrap(), IOERR);
    assert_eq!(rig.disk_bytes(64 * 512, BS), data);
    rig.shutdown();
}
