//! Arbitrary bytes as guest memory holding a virtqueue (descriptor table, avail and used rings) and
//! the requests on it: the device takes, parses and completes every published chain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tests::fuzzing::virtio_blk;

fuzz_target!(|data: &[u8]| {
    let _accepted = virtio_blk::check_virtqueue(data);
});
