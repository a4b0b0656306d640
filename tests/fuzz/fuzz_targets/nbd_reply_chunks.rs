//! Structured and extended reply chunks (NONE, OFFSET_DATA, OFFSET_HOLE, BLOCK_STATUS(_EXT), ERROR,
//! ERROR_OFFSET) chosen by arbitrary bytes, encoded by the server and read back by a decoder written
//! from the protocol: every field round-trips, every length agrees.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tests::fuzzing::nbd_chunks;

fuzz_target!(|data: &[u8]| {
    let _checked = nbd_chunks::check_chunk_round_trips(data);
});
