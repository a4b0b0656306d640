//! Unit tests of the wire format.

use super::*;

pub(super) fn request_bytes(
    flags: u16,
    command: u16,
    cookie: u64,
    offset: u64,
    length: u32,
) -> Vec<u8> {
    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&command.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&length.to_be_bytes());
    b
}

#[test]
fn request_round_trip_and_every_truncation_fails() {
    let bytes = request_bytes(cmd::FLAG_FUA, cmd::WRITE, 0xdead_beef, 4096, 512);
    let req = parse_request(&bytes).unwrap();
    assert_eq!(
        req,
        Request {
            flags: cmd::FLAG_FUA,
            command: cmd::WRITE,
            cookie: 0xdead_beef,
            offset: 4096,
            length: 512
        }
    );
    for n in 0..REQUEST_LEN {
        assert!(matches!(
            parse_request(&bytes[..n]),
            Err(ProtoError::Short { .. })
        ));
    }
    let mut bad = bytes.clone();
    bad[0] ^= 1;
    assert!(matches!(
        parse_request(&bad),
        Err(ProtoError::BadMagic { .. })
    ));
}

#[test]
fn info_request_lengths_must_agree() {
    let mut data = 4u32.to_be_bytes().to_vec();
    data.extend_from_slice(b"disk");
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    let parsed = parse_info_request(&data).unwrap();
    assert_eq!(parsed.name, b"disk");
    assert_eq!(parsed.info_types, vec![info::BLOCK_SIZE]);
    // A name length past the end, a count that disagrees, trailing bytes: all rejected.
    let mut long_name = data.clone();
    long_name[3] = 200;
    assert!(parse_info_request(&long_name).is_err());
    assert!(parse_info_request(&data[..data.len() - 1]).is_err());
    let mut trailing = data.clone();
    trailing.push(0);
    assert!(parse_info_request(&trailing).is_err());
    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.extend_from_slice(&[0; 2]);
    assert!(parse_info_request(&huge).is_err());
}

#[test]
fn a_name_that_leaves_no_room_for_the_count_is_malformed_not_short() {
    // The nbd_handshake_options fuzz target's first crash: name length 1, name 0x08, one byte left.
    let crash = [0, 0, 0, 1, 0x08, 0x1a];
    assert_eq!(
        parse_info_request(&crash),
        Err(ProtoError::Malformed("INFO/GO option data"))
    );
    assert!(matches!(
        parse_info_request(&crash[..5]),
        Err(ProtoError::Short {
            needed: 6,
            got: 5,
            ..
        })
    ));
}

#[test]
fn checks_follow_the_spec() {
    let limits = ExportLimits {
        size: 1 << 20,
        read_only: false,
        min_block: 1,
    };
    // Nothing negotiated: the errno only.
    let check_request = |req: &Request, limits: &ExportLimits| {
        check_request(req, limits, &Negotiated::default()).map_err(|r| r.errno)
    };
    let req = |command, flags, offset, length| Request {
        flags,
        command,
        cookie: 1,
        offset,
        length,
    };
    assert_eq!(
        check_request(&req(cmd::READ, 0, 0, 1 << 20), &limits),
        Ok(())
    );
    assert_eq!(
        check_request(&req(cmd::READ, 0, 1, 1 << 20), &limits),
        Err(errno::EINVAL)
    );
    assert_eq!(
        check_request(&req(cmd::READ, 0, u64::MAX, 2), &limits),
        Err(errno::EINVAL)
    );
    assert_eq!(
        check_request(&req(cmd::READ, cmd::FLAG_FUA, 0, 1), &limits),
        Err(errno::EINVAL)
    );
    assert_eq!(check_request(&req(8, 0, 0, 1), &limits), Err(errno::EINVAL));
    let big = ExportLimits {
        size: u64::MAX,
        ..limits
    };
    assert_eq!(
        check_request(&req(cmd::READ, 0, 0, u64::from(MAX_PAYLOAD) + 1), &big),
        Err(errno::EINVAL)
    );
    assert_eq!(
        check_request(
            &req(cmd::WRITE_ZEROES, 0, 0, u64::from(MAX_PAYLOAD) + 1),
            &big
        ),
        Ok(())
    );
    let ro = ExportLimits {
        read_only: true,
        ..limits
    };
    assert_eq!(
        check_request(&req(cmd::WRITE, 0, 0, 1), &ro),
        Err(errno::EPERM)
    );
    assert_eq!(check_request(&req(cmd::FLUSH, 0, 0, 0), &ro), Ok(()));
    let direct = ExportLimits {
        min_block: 512,
        ..limits
    };
    assert_eq!(
        check_request(&req(cmd::WRITE, 0, 512, 100), &direct),
        Err(errno::EINVAL)
    );
}

#[test]
fn parsers_never_panic_on_short_or_odd_input() {
    let junk: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
    for n in 0..junk.len() {
        let _ = parse_request(&junk[..n]);
        let _ = parse_extended_request(&junk[..n]);
        let _ = meta::parse_meta_request(&junk[..n]);
        let _ = parse_option_header(&junk[..n]);
        let _ = parse_info_request(&junk[..n]);
        let _ = parse_client_flags(&junk[..n]);
    }
}
