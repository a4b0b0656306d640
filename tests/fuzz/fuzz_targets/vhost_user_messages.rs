//! Arbitrary bytes as a vhost-user front end's messages, each with the fds its record picks: the
//! daemon's message handling takes them until it refuses one, then every ring must stop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tests::fuzzing::vhost_user;

fuzz_target!(|data: &[u8]| {
    let _accepted = vhost_user::check_messages(data);
});
