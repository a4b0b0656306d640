//! Properties of the pure parsers in `examples::nbd::proto`: no panic on any bytes, and they agree
//! with the test client's own encoding of the protocol (compact and extended requests, `INFO`/`GO`
//! and meta context option data).

use examples::nbd::proto::{self, ExportLimits, Negotiated, ProtoError, ReplyMode, Request};
use proptest::prelude::*;

use super::client::Client;
use super::structured::{extended_request_bytes, meta_data};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parsers_return_errors_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = proto::parse_request(&bytes);
        let _ = proto::parse_option_header(&bytes);
        let _ = proto::parse_info_request(&bytes);
        let _ = proto::parse_client_flags(&bytes);
        let _ = proto::parse_extended_request(&bytes);
        let _ = proto::meta::parse_meta_request(&bytes);
    }

    #[test]
    fn extended_requests_parse_as_the_client_encodes_them(
        flags: u16, command: u16, cookie: u64, offset: u64, length: u64, base_allocation: bool,
    ) {
        let bytes = extended_request_bytes(command, flags, cookie, offset, length);
        let request = proto::parse_extended_request(&bytes).unwrap();
        prop_assert_eq!(request, Request { flags, command, cookie, offset, length });
        prop_assert!(proto::parse_request(&bytes).is_err(), "not a compact request");
        // A payload follows a WRITE, and any request flagged PAYLOAD_LEN (bit 5).
        let payload = command == 1 || flags & (1 << 5) != 0;
        prop_assert_eq!(request.payload_len(true), if payload { length } else { 0 });
        let limits = ExportLimits { size: u64::MAX, read_only: false, min_block: 1 };
        let negotiated = Negotiated { mode: ReplyMode::Extended, base_allocation };
        // Accepted: only a WRITE may bring a payload; BLOCK_STATUS needs the context.
        if proto::check_request(&request, &limits, &negotiated).is_ok() {
            prop_assert!(!payload || command == 1);
            prop_assert!(command != 7 || base_allocation);
        }
    }

    #[test]
    fn meta_context_data_round_trips(
        name in "[a-z]{0,12}",
        queries in prop::collection::vec("(base|qemu|x-y):[a-z]{0,16}", 0..6),
    ) {
        let queries: Vec<&str> = queries.iter().map(|q| q.as_str()).collect();
        let data = meta_data(&name, &queries);
        let parsed = proto::meta::parse_meta_request(&data).unwrap();
        prop_assert_eq!(parsed.name, name.as_bytes());
        let parsed_queries: Vec<&[u8]> = queries.iter().map(|q| q.as_bytes()).collect();
        prop_assert_eq!(parsed.queries, parsed_queries);
        for cut in 0..data.len() {
            prop_assert!(proto::meta::parse_meta_request(&data[..cut]).is_err());
        }
    }

    #[test]
    fn requests_parse_as_the_client_encodes_them(
        flags: u16, command: u16, cookie: u64, offset: u64, length: u32,
        size: u64, read_only: bool, min_shift in 0u32..13,
    ) {
        let bytes = Client::request_bytes(command, flags, cookie, offset, length);
        let request = proto::parse_request(&bytes).unwrap();
        prop_assert_eq!(request, Request { flags, command, cookie, offset, length: length.into() });
        let limits = ExportLimits { size, read_only, min_block: 1 << min_shift };
        // Whatever it says, an accepted data request stays inside the export.
        let accepted = proto::check_request(&request, &limits, &Negotiated::default()).is_ok();
        if accepted && matches!(command, 0 | 1 | 4 | 5 | 6) {
            prop_assert!(offset.checked_add(u64::from(length)).is_some_and(|end| end <= size));
            prop_assert!(!read_only || matches!(command, 0 | 5), "only READ and CACHE on a read-only export");
        }
    }

    #[test]
    fn info_requests_round_trip(name in "[a-z]{0,40}", types in prop::collection::vec(any::<u16>(), 0..20)) {
        let data = Client::info_data(&name, &types);
        let parsed = proto::parse_info_request(&data).unwrap();
        prop_assert_eq!(parsed.name, name.as_bytes());
        prop_assert_eq!(parsed.info_types, types);
        for cut in 0..data.len() {
            prop_assert!(proto::parse_info_request(&data[..cut]).is_err());
        }
    }
}

#[test]
fn a_bad_request_magic_is_reported() {
    let mut bytes = Client::request_bytes(0, 0, 1, 0, 512);
    bytes[3] = 0;
    assert!(matches!(
        proto::parse_request(&bytes),
        Err(ProtoError::BadMagic { .. })
    ));
}
