//! An allocation map (or nonsense lseek answers) and a query from arbitrary bytes: the BLOCK_STATUS
//! extents and sparse READ chunks the server would send cover what they must, stay aligned and within
//! the request, and report a hole only where the map has no data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tests::fuzzing::nbd_chunks;

fuzz_target!(|data: &[u8]| {
    let input = nbd_chunks::extents_input(data);
    let _ = nbd_chunks::check_extents(&input);
});
