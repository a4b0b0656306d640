//! Unit tests of what structured replies and extended headers add: extended request headers, checks
//! by negotiation, meta context data, chunk layouts, and extents from `SEEK_DATA`/`SEEK_HOLE`.

use super::tests::request_bytes;
use super::*;

fn extended_bytes(flags: u16, command: u16, cookie: u64, offset: u64, length: u64) -> Vec<u8> {
    let mut b = EXTENDED_REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&command.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&length.to_be_bytes());
    b
}

#[test]
fn extended_requests_carry_64_bit_lengths_and_their_own_magic() {
    let bytes = extended_bytes(cmd::FLAG_REQ_ONE, cmd::BLOCK_STATUS, 7, 1 << 40, 1 << 35);
    assert_eq!(bytes.len(), EXTENDED_REQUEST_LEN);
    let req = parse_extended_request(&bytes).unwrap();
    assert_eq!((req.offset, req.length), (1 << 40, 1 << 35));
    assert!(matches!(
        parse_request(&bytes),
        Err(ProtoError::BadMagic { .. })
    ));
    for n in 0..EXTENDED_REQUEST_LEN {
        assert!(matches!(
            parse_extended_request(&bytes[..n]),
            Err(ProtoError::Short { .. })
        ));
    }
    let compact = request_bytes(0, cmd::READ, 1, 0, 512);
    let mut padded = compact.clone();
    padded.extend_from_slice(&[0; 4]);
    assert!(matches!(
        parse_extended_request(&padded),
        Err(ProtoError::BadMagic { .. })
    ));
    // The payload: a WRITE always, anything flagged PAYLOAD_LEN with extended headers only.
    let flagged = Request {
        flags: cmd::FLAG_PAYLOAD_LEN,
        command: cmd::BLOCK_STATUS,
        cookie: 1,
        offset: 0,
        length: 24,
    };
    assert_eq!(flagged.payload_len(true), 24);
    assert_eq!(flagged.payload_len(false), 0);
    let write = Request {
        command: cmd::WRITE,
        flags: 0,
        ..flagged
    };
    assert_eq!(
        (write.payload_len(false), write.payload_len(true)),
        (24, 24)
    );
}

#[test]
fn negotiation_decides_which_flags_and_commands_are_valid() {
    let limits = ExportLimits {
        size: 1 << 30,
        read_only: false,
        min_block: 1,
    };
    let simple = Negotiated::default();
    let structured = Negotiated {
        mode: ReplyMode::Structured,
        base_allocation: false,
    };
    let with_status = Negotiated {
        base_allocation: true,
        ..structured
    };
    let extended = Negotiated {
        mode: ReplyMode::Extended,
        base_allocation: true,
    };
    let check = |command, flags, length: u64, n: &Negotiated| {
        let req = Request {
            flags,
            command,
            cookie: 3,
            offset: 4096,
            length,
        };
        check_request(&req, &limits, n).map_err(|r| r.errno)
    };
    // DF only once structured replies are on.
    assert_eq!(
        check(cmd::READ, cmd::FLAG_DF, 512, &simple),
        Err(errno::EINVAL)
    );
    assert_eq!(check(cmd::READ, cmd::FLAG_DF, 512, &structured), Ok(()));
    // BLOCK_STATUS only with base:allocation selected, REQ_ONE its only flag, never of length 0.
    assert_eq!(
        check(cmd::BLOCK_STATUS, 0, 512, &structured),
        Err(errno::EINVAL)
    );
    assert_eq!(
        check(cmd::BLOCK_STATUS, cmd::FLAG_REQ_ONE, 512, &with_status),
        Ok(())
    );
    assert_eq!(
        check(cmd::BLOCK_STATUS, 0, 0, &with_status),
        Err(errno::EINVAL)
    );
    assert_eq!(
        check(cmd::BLOCK_STATUS, cmd::FLAG_DF, 512, &with_status),
        Err(errno::EINVAL)
    );
    // Extended: an effect length past 4 GiB is fine for BLOCK_STATUS, not for READ.
    assert_eq!(check(cmd::BLOCK_STATUS, 0, 1 << 29, &extended), Ok(()));
    assert_eq!(check(cmd::READ, 0, 64 << 20, &extended), Err(errno::EINVAL));
    assert_eq!(
        check(cmd::BLOCK_STATUS, 0, 1 << 30, &extended),
        Err(errno::EINVAL),
        "past the end"
    );
    // PAYLOAD_LEN: on a WRITE with extended headers only.
    assert_eq!(
        check(cmd::WRITE, cmd::FLAG_PAYLOAD_LEN, 512, &extended),
        Ok(())
    );
    assert_eq!(
        check(cmd::WRITE, cmd::FLAG_PAYLOAD_LEN, 512, &structured),
        Err(errno::EINVAL)
    );
    assert_eq!(
        check(cmd::READ, cmd::FLAG_PAYLOAD_LEN, 512, &extended),
        Err(errno::EINVAL)
    );
    // CACHE: no flags, at most MAX_PAYLOAD; FAST_ZERO on WRITE_ZEROES only.
    assert_eq!(check(cmd::CACHE, 0, 1 << 20, &simple), Ok(()));
    assert_eq!(
        check(cmd::CACHE, cmd::FLAG_FUA, 512, &simple),
        Err(errno::EINVAL)
    );
    assert_eq!(check(cmd::CACHE, 0, 64 << 20, &simple), Err(errno::EINVAL));
    assert_eq!(
        check(
            cmd::WRITE_ZEROES,
            cmd::FLAG_FAST_ZERO | cmd::FLAG_NO_HOLE,
            512,
            &simple
        ),
        Ok(())
    );
    assert_eq!(
        check(cmd::WRITE, cmd::FLAG_FAST_ZERO, 512, &simple),
        Err(errno::EINVAL)
    );
    let ro = ExportLimits {
        read_only: true,
        ..limits
    };
    let req = Request {
        flags: 0,
        command: cmd::CACHE,
        cookie: 1,
        offset: 0,
        length: 4096,
    };
    assert_eq!(check_request(&req, &ro, &simple), Ok(()), "CACHE reads");
    let refused = check_request(&Request { command: 99, ..req }, &ro, &simple).unwrap_err();
    assert_eq!(
        (refused.errno, refused.reason),
        (errno::EINVAL, "unknown command")
    );
}

#[test]
fn meta_context_data_parses_strictly() {
    let data = |name: &[u8], queries: &[&[u8]]| {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q);
        }
        d
    };
    let good = data(b"disk", &[b"base:allocation", b"qemu:dirty-bitmap:x"]);
    let parsed = meta::parse_meta_request(&good).unwrap();
    assert_eq!(parsed.name, b"disk");
    assert_eq!(
        parsed.queries,
        vec![&b"base:allocation"[..], b"qemu:dirty-bitmap:x"]
    );
    assert!(meta::selects_base_allocation(&parsed.queries, false));
    for cut in 0..good.len() {
        assert!(
            meta::parse_meta_request(&good[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(meta::parse_meta_request(&trailing).is_err());
    assert!(
        meta::parse_meta_request(&data(b"di\0sk", &[])).is_err(),
        "NUL in the name"
    );
    let mut huge_count = data(b"", &[]);
    huge_count[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(meta::parse_meta_request(&huge_count).is_err());
    // LIST: no query or the namespace alone match; SET: only the full name.
    assert!(meta::selects_base_allocation(&[], true));
    assert!(!meta::selects_base_allocation(&[], false));
    assert!(meta::selects_base_allocation(&[b"base:"], true));
    assert!(!meta::selects_base_allocation(&[b"base:"], false));
    assert!(!meta::selects_base_allocation(
        &[b"base:allocationx", b"qemu:"],
        true
    ));
}

#[test]
fn chunks_have_the_documented_layout() {
    let to = chunks::ChunkTo {
        extended: false,
        cookie: 0x0102_0304_0506_0708,
        offset: 4096,
    };
    let hole = chunks::hole_chunk(&to, true, 8192, 512);
    assert_eq!(hole.len(), 20 + 12);
    assert_eq!(&hole[..4], &chunks::STRUCTURED_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&hole[4..6], &chunks::FLAG_DONE.to_be_bytes());
    assert_eq!(&hole[6..8], &chunks::kind::OFFSET_HOLE.to_be_bytes());
    assert_eq!(&hole[8..16], &to.cookie.to_be_bytes());
    assert_eq!(&hole[16..20], &12u32.to_be_bytes());
    assert_eq!(&hole[20..28], &8192u64.to_be_bytes());
    assert_eq!(&hole[28..], &512u32.to_be_bytes());
    let ext = chunks::ChunkTo {
        extended: true,
        ..to
    };
    let data = chunks::data_chunk_prefix(&ext, false, 8192, 100);
    assert_eq!(data.len(), 32 + 8);
    assert_eq!(&data[..4], &chunks::EXTENDED_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&data[4..6], &[0, 0]);
    assert_eq!(
        &data[16..24],
        &4096u64.to_be_bytes(),
        "the request's offset"
    );
    assert_eq!(&data[24..32], &108u64.to_be_bytes());
    assert_eq!(&data[32..], &8192u64.to_be_bytes());
    let mut status = Vec::new();
    chunks::block_status_chunk(&mut status, &ext, true, 1, &[(1 << 33, 3), (512, 0)]);
    assert_eq!(status.len(), 32 + 8 + 32);
    assert_eq!(&status[6..8], &chunks::kind::BLOCK_STATUS_EXT.to_be_bytes());
    assert_eq!(&status[36..40], &2u32.to_be_bytes());
    assert_eq!(&status[40..48], &(1u64 << 33).to_be_bytes());
    assert_eq!(&status[48..56], &3u64.to_be_bytes());
    let mut error = Vec::new();
    let long = "é".repeat(3000);
    chunks::error_chunk(&mut error, &to, true, errno::EIO, &long, Some(77));
    let message_len = u16::from_be_bytes([error[24], error[25]]) as usize;
    assert_eq!(message_len, MAX_STRING, "cut to 4096 bytes, on a character");
    assert_eq!(error.len(), 20 + 6 + MAX_STRING + 8);
    assert_eq!(&error[16..20], &((6 + MAX_STRING + 8) as u32).to_be_bytes());
    assert_eq!(&error[error.len() - 8..], &77u64.to_be_bytes());
}

/// A fake allocation map: data in `data` (sorted, disjoint `(start, end)`), holes elsewhere, the file
/// `size` bytes long; answers `lseek` the way Linux does.
fn probe_of(
    data: &'static [(u64, u64)],
    size: u64,
) -> impl FnMut(extents::Seek, u64) -> extents::Found {
    move |whence, at| {
        use extents::{Found, Seek};
        if at >= size {
            return Found::NoMore;
        }
        match whence {
            Seek::Data => data
                .iter()
                .find(|&&(_, end)| end > at)
                .map_or(Found::NoMore, |&(start, _)| Found::At(start.max(at))),
            Seek::Hole => Found::At(
                data.iter()
                    .find(|&&(start, end)| start <= at && at < end)
                    .map_or(at, |&(_, end)| end),
            ),
        }
    }
}

#[test]
fn extents_follow_seek_data_and_seek_hole() {
    use extents::{Extent, ReadChunk};
    const MAP: &[(u64, u64)] = &[(0, 4096), (65536, 69632), (1 << 20, 2 << 20)];
    let hole = |length| Extent { length, hole: true };
    let data = |length| Extent {
        length,
        hole: false,
    };
    let all = extents::block_status(0, 4 << 20, 100, 1, probe_of(MAP, 4 << 20));
    assert_eq!(
        all,
        [
            data(4096),
            hole(61440),
            data(4096),
            hole((1 << 20) - 69632),
            data(1 << 20),
            hole(2 << 20)
        ]
    );
    assert_eq!(all[1].status(), meta::STATE_HOLE | meta::STATE_ZERO);
    // REQ_ONE: the first extent only, never past the request.
    assert_eq!(
        extents::block_status(8192, 4096, 1, 1, probe_of(MAP, 4 << 20)),
        [hole(4096)]
    );
    // A cap: fewer extents, covering less.
    assert_eq!(
        extents::block_status(0, 4 << 20, 2, 1, probe_of(MAP, 4 << 20)),
        [data(4096), hole(61440)]
    );
    // 4 KiB units: a hole that does not cover a whole unit is data.
    const ODD: &[(u64, u64)] = &[(0, 1000), (3000, 8192)];
    assert_eq!(
        extents::block_status(0, 8192, 10, 4096, probe_of(ODD, 8192)),
        [data(8192)]
    );
    assert_eq!(
        extents::block_status(0, 8192, 10, 512, probe_of(ODD, 8192)),
        [data(1024), hole(1536), data(5632)]
    );
    // A READ: holes shorter than min_hole are data; the chunks cover the request exactly.
    let chunks = extents::read_chunks(0, 70000, 100, 1, 512, probe_of(MAP, 4 << 20));
    let expected = [
        ReadChunk::Data {
            offset: 0,
            length: 4096,
        },
        ReadChunk::Hole {
            offset: 4096,
            length: 61440,
        },
        // The 368-byte hole at the end is shorter than 512: sent as data.
        ReadChunk::Data {
            offset: 65536,
            length: 4464,
        },
    ];
    assert_eq!(chunks, expected);
    // Unknown answers are data.
    let unknown = |_, _| extents::Found::Unknown;
    assert_eq!(extents::block_status(0, 100, 10, 1, unknown), [data(100)]);
}
