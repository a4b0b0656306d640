//! The NBD server's option parsers on arbitrary bytes, then the whole handshake replayed with the
//! bytes as everything a client sends, every server reply checked against the protocol.
#![no_main]

use examples::nbd::replay::HandshakeReplay;
use libfuzzer_sys::fuzz_target;
use tests::fuzzing::nbd;

thread_local! {
    static TARGET: HandshakeReplay = nbd::replay_target();
}

fuzz_target!(|data: &[u8]| {
    nbd::check_option_parsers(data);
    // How it ended is checked inside; any end is fine for arbitrary bytes.
    let _ended = TARGET.with(|target| nbd::check_handshake(target, data));
});
