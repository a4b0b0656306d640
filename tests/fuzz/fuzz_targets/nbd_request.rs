//! What was negotiated (reply mode, metadata context), an NBD request header (compact or extended) and
//! export limits from arbitrary bytes: parse_request / parse_extended_request and check_request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tests::fuzzing::nbd;

fuzz_target!(|data: &[u8]| {
    let (negotiated, header, limits) = nbd::split_request_input(data);
    let _verdict = nbd::check_request(header, &limits, &negotiated);
});
