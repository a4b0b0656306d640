//! An NBD request header and export limits from arbitrary bytes: parse_request and check_request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tests::fuzzing::nbd;

fuzz_target!(|data: &[u8]| {
    let (header, limits) = nbd::split_request_input(data);
    let _verdict = nbd::check_request(header, &limits);
});
