//! What structured replies, extended headers and `base:allocation` change, from a raw client: the
//! option rules (as qemu-nbd 10 answers), error chunks with messages, `DF`, `REQ_ONE`, `CACHE`,
//! `FAST_ZERO`, extended requests with payloads, and what a client must not do.

use std::io::Write;

use super::client::*;
use super::structured::*;

fn server() -> TestServer {
    // 4 MiB: data in the first 64 KiB and at 1 MiB, holes elsewhere.
    let mut contents = vec![0u8; 4 << 20];
    contents[..65536].fill(0xd1);
    contents[1 << 20..(1 << 20) + 8192].fill(0xd2);
    TestServer::start(Setup {
        contents,
        sparse: true,
        ..Setup::default()
    })
}

fn sent(command: u16, flags: u16, offset: u64, length: u64) -> Sent {
    Sent::new(command, flags, offset, length)
}

/// Sends an option and returns the types of its replies, up to the final one.
fn option(c: &mut Client, option: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
    c.send_option(option, data).unwrap();
    let mut replies = Vec::new();
    loop {
        let r = c.opt_reply().unwrap();
        assert_eq!(r.option, option);
        let last = r.kind != REP_META_CONTEXT;
        replies.push((r.kind, r.data));
        if last {
            return replies;
        }
    }
}

fn kinds(replies: &[(u32, Vec<u8>)]) -> Vec<u32> {
    replies.iter().map(|r| r.0).collect()
}

#[test]
fn without_negotiation_the_new_commands_and_flags_are_refused_but_cache() {
    let server = server();
    let mut c = Client::new(server.connect());
    c.greeting(true);
    // Options that take no data refuse some.
    for known in [OPT_STRUCTURED_REPLY, OPT_EXTENDED_HEADERS] {
        assert_eq!(kinds(&option(&mut c, known, b"data")), [REP_ERR_INVALID]);
    }
    c.go("disk").unwrap();
    let size = server.size;
    assert_eq!(
        c.simple(CMD_BLOCK_STATUS, 0, 0, 4096),
        EINVAL,
        "no meta context"
    );
    let df = c.read_flags(CMD_FLAG_DF, 0, 512);
    assert_eq!(df, Err(EINVAL), "DF without structured replies");
    assert_eq!(c.simple(CMD_CACHE, 0, 0, 1 << 20), 0, "CACHE");
    assert_eq!(
        c.simple(CMD_CACHE, 0, size - 1, 2),
        EINVAL,
        "CACHE past the end"
    );
    let fast = c.simple(CMD_WRITE_ZEROES, FLAG_FAST_ZERO, 1 << 20, 4096);
    assert_eq!(fast, 0, "FAST_ZERO needs no negotiation");
    assert_eq!(c.read(1 << 20, 4096).unwrap(), vec![0; 4096]);
}

#[test]
fn options_follow_qemu_nbd() {
    let server = server();
    let mut c = Client::new(server.connect());
    c.greeting(true);
    let set = meta_data("disk", &["base:allocation"]);
    // SET_META_CONTEXT needs structured replies first; LIST does not.
    assert_eq!(
        kinds(&option(&mut c, OPT_SET_META_CONTEXT, &set)),
        [REP_ERR_INVALID]
    );
    let listed = option(&mut c, OPT_LIST_META_CONTEXT, &meta_data("", &[]));
    assert_eq!(kinds(&listed), [REP_META_CONTEXT, REP_ACK]);
    assert_eq!(
        listed[0].1, b"\0\0\0\0base:allocation",
        "id 0 in LIST replies"
    );
    let base = option(
        &mut c,
        OPT_LIST_META_CONTEXT,
        &meta_data("disk", &["base:"]),
    );
    assert_eq!(kinds(&base), [REP_META_CONTEXT, REP_ACK]);
    let other = meta_data("disk", &["qemu:", "base:other"]);
    assert_eq!(
        kinds(&option(&mut c, OPT_LIST_META_CONTEXT, &other)),
        [REP_ACK]
    );
    let unknown = meta_data("nope", &["base:allocation"]);
    assert_eq!(
        kinds(&option(&mut c, OPT_LIST_META_CONTEXT, &unknown)),
        [REP_ERR_UNKNOWN]
    );
    let mut cut = set.clone();
    cut.pop();
    assert_eq!(
        kinds(&option(&mut c, OPT_LIST_META_CONTEXT, &cut)),
        [REP_ERR_INVALID]
    );
    // Structured replies once; extended headers after them once; then no going back.
    assert_eq!(kinds(&option(&mut c, OPT_STRUCTURED_REPLY, &[])), [REP_ACK]);
    assert_eq!(
        kinds(&option(&mut c, OPT_STRUCTURED_REPLY, &[])),
        [REP_ERR_INVALID]
    );
    assert_eq!(kinds(&option(&mut c, OPT_EXTENDED_HEADERS, &[])), [REP_ACK]);
    assert_eq!(
        kinds(&option(&mut c, OPT_EXTENDED_HEADERS, &[])),
        [REP_ERR_INVALID]
    );
    let back = option(&mut c, OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(kinds(&back), [REP_ERR_EXT_HEADER_REQD]);
    c.mode = Mode::Extended;
    // "base:" selects nothing in SET; a SET that selects nothing (or fails) clears the selection.
    let selected = option(&mut c, OPT_SET_META_CONTEXT, &set);
    assert_eq!(kinds(&selected), [REP_META_CONTEXT, REP_ACK]);
    let ns_only = meta_data("disk", &["base:"]);
    assert_eq!(
        kinds(&option(&mut c, OPT_SET_META_CONTEXT, &ns_only)),
        [REP_ACK]
    );
    let (_, flags) = c.go("").unwrap();
    assert_eq!(flags & (1 << 7), 1 << 7, "SEND_DF");
    let refused = c.call(sent(CMD_BLOCK_STATUS, 0, 0, 4096), &[]);
    assert_eq!(refused.error, EINVAL, "BLOCK_STATUS without a context");
    assert!(refused.message.is_some_and(|m| m.contains("context")));
    round_trip(&mut c, 4 << 19, 1);
}

#[test]
fn export_name_after_extended_headers_hangs_up() {
    let server = server();
    let mut c = Client::new(server.connect());
    c.greeting(true);
    assert_eq!(kinds(&option(&mut c, OPT_EXTENDED_HEADERS, &[])), [REP_ACK]);
    c.send_option(OPT_EXPORT_NAME, b"disk").unwrap();
    assert!(c.closed_by_server());
    // Structured replies (not extended headers) do not forbid it: the flags then include SEND_DF.
    let mut c = Client::new(server.connect());
    c.greeting(true);
    assert_eq!(kinds(&option(&mut c, OPT_STRUCTURED_REPLY, &[])), [REP_ACK]);
    c.send_option(OPT_EXPORT_NAME, b"disk").unwrap();
    assert_eq!(c.u64().unwrap(), server.size);
    assert_eq!(c.u16().unwrap() & (1 << 7), 1 << 7);
    c.mode = Mode::Structured;
    let read = c.call(sent(CMD_READ, 0, 0, 4096), &[]);
    assert_eq!(read.data.unwrap(), vec![0xd1; 4096]);
}

#[test]
fn structured_errors_carry_messages_and_reads_follow_df() {
    let server = server();
    let mut c = server.client_in(Mode::Structured, true);
    let size = server.size;
    let past = c.call(sent(CMD_READ, 0, size - 512, 1024), &[]);
    assert_eq!(past.error, EINVAL);
    assert!(past.message.is_some_and(|m| m.contains("past the end")));
    assert!(past.data.is_none());
    let flagged = c.call(sent(CMD_FLUSH, FLAG_FUA, 0, 0), &[]);
    assert_eq!(flagged.error, EINVAL, "FUA on FLUSH");
    // A read over data and a hole: two chunks; with DF one data chunk of the same bytes.
    let split = c.call(sent(CMD_READ, 0, 61440, 8192), &[]);
    assert_eq!(split.content, [(61440, 4096, false), (65536, 4096, true)]);
    let whole = c.call(sent(CMD_READ, CMD_FLAG_DF, 61440, 8192), &[]);
    assert_eq!(whole.content, [(61440, 8192, false)]);
    assert_eq!(whole.data, split.data);
    // All hole: one hole chunk; length 0: a NONE chunk and no data.
    let hole = c.call(sent(CMD_READ, 0, 2 << 20, 1 << 20), &[]);
    assert_eq!(hole.content, [(2 << 20, 1 << 20, true)]);
    assert_eq!(c.call(sent(CMD_READ, 0, 0, 0), &[]).data, Some(Vec::new()));
    // Successes without data stay simple replies with structured replies (checked in `answer`).
    assert_eq!(c.call(sent(CMD_CACHE, 0, 0, 1 << 20), &[]).error, 0);
    assert_eq!(c.call(sent(CMD_CACHE, 0, size, 512), &[]).error, EINVAL);
}

#[test]
fn block_status_reports_holes_one_extent_with_req_one() {
    let server = server();
    for mode in [Mode::Structured, Mode::Extended] {
        let mut c = server.client_in(mode, true);
        let all = c.call(sent(CMD_BLOCK_STATUS, 0, 0, server.size), &[]);
        let expected = [
            (65536, 0),
            ((1 << 20) - 65536, HOLE_ZERO),
            (8192, 0),
            ((3 << 20) - 8192, HOLE_ZERO),
        ];
        assert_eq!(all.extents, expected, "{mode:?}");
        let one = c.call(sent(CMD_BLOCK_STATUS, FLAG_REQ_ONE, 4096, 1 << 20), &[]);
        assert_eq!(one.extents, [(61440, 0)]);
        let short = c.call(sent(CMD_BLOCK_STATUS, FLAG_REQ_ONE, 65536, 512), &[]);
        assert_eq!(short.extents, [(512, HOLE_ZERO)], "never past the request");
        let past = c.call(sent(CMD_BLOCK_STATUS, 0, server.size - 512, 1024), &[]);
        assert_eq!(past.error, EINVAL);
        assert_eq!(c.call(sent(CMD_BLOCK_STATUS, 0, 0, 0), &[]).error, EINVAL);
        // After a write and a trim the map follows.
        let write = c.call(sent(CMD_WRITE, 0, 2 << 20, 4096), &[7; 4096]);
        assert_eq!(write.error, 0);
        assert_eq!(c.call(sent(CMD_TRIM, 0, 0, 65536), &[]).error, 0);
        let after = c.call(sent(CMD_BLOCK_STATUS, 0, 0, 3 << 20), &[]);
        assert_eq!(
            after.extents[0],
            ((1 << 20), HOLE_ZERO),
            "{mode:?}: trimmed"
        );
        assert!(
            after.extents.contains(&(4096, 0)),
            "{mode:?}: {:?}",
            after.extents
        );
        // Put it back for the next mode.
        assert_eq!(
            c.call(sent(CMD_WRITE, 0, 0, 65536), &[0xd1; 65536]).error,
            0
        );
        assert_eq!(c.call(sent(CMD_TRIM, 0, 2 << 20, 4096), &[]).error, 0);
    }
}

#[test]
fn extended_requests_consume_payloads_and_refuse_them_except_on_write() {
    let server = server();
    let mut c = server.client_in(Mode::Extended, true);
    // A READ flagged PAYLOAD_LEN: its 16 payload bytes are skipped, EINVAL, the stream in step.
    let mut bytes = c.header(CMD_READ, FLAG_PAYLOAD_LEN, 5, 0, 16);
    bytes.extend_from_slice(&[0xab; 16]);
    c.s.write_all(&bytes).unwrap();
    let sent_read = std::collections::HashMap::from([(5, sent(CMD_READ, FLAG_PAYLOAD_LEN, 0, 16))]);
    assert_eq!(c.answer(&sent_read).1.error, EINVAL);
    // A BLOCK_STATUS payload (the payload form is not offered): EINVAL too.
    let status_payload = sent(CMD_BLOCK_STATUS, FLAG_PAYLOAD_LEN, 0, 12);
    let mut payload = 4096u64.to_be_bytes().to_vec();
    payload.extend_from_slice(&c.context.unwrap().to_be_bytes());
    assert_eq!(c.call(status_payload, &payload).error, EINVAL);
    // A WRITE without PAYLOAD_LEN still carries its payload (qemu-nbd accepts it too).
    let mut bytes = c.header(CMD_WRITE, 0, 6, 8192, 512);
    let len = bytes.len();
    bytes[4..6].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(len, 32);
    bytes.extend_from_slice(&[0x5c; 512]);
    c.s.write_all(&bytes).unwrap();
    let sent_write = std::collections::HashMap::from([(6, sent(CMD_WRITE, 0, 8192, 512))]);
    assert_eq!(c.answer(&sent_write).1.error, 0);
    let read = c.call(sent(CMD_READ, 0, 8192, 512), &[]);
    assert_eq!(read.data.unwrap(), vec![0x5c; 512]);
    // FAST_ZERO on a file system with FALLOC_FL_ZERO_RANGE succeeds, and reads back as zeroes.
    let fast = FLAG_FAST_ZERO | FLAG_NO_HOLE;
    assert_eq!(c.call(sent(CMD_WRITE_ZEROES, fast, 0, 65536), &[]).error, 0);
    let zeroes = c.call(sent(CMD_READ, 0, 0, 65536), &[]);
    assert_eq!(zeroes.data.unwrap(), vec![0; 65536]);
    // A payload over 32 MiB is not worth reading: the connection ends.
    let huge = c.header(CMD_READ, FLAG_PAYLOAD_LEN, 9, 0, (32 << 20) + 1);
    c.s.write_all(&huge).unwrap();
    assert!(c.closed_by_server());
    round_trip(&mut server.client(), 4 << 19, 2);
}

#[test]
fn read_only_exports_cache_and_refuse_fast_zeroes_with_eperm() {
    let server = TestServer::start(Setup {
        read_only: true,
        ..Setup::default()
    });
    let mut c = server.client_in(Mode::Extended, false);
    assert_eq!(c.call(sent(CMD_CACHE, 0, 0, 1 << 20), &[]).error, 0);
    let fast = c.call(sent(CMD_WRITE_ZEROES, FLAG_FAST_ZERO, 0, 4096), &[]);
    assert_eq!(fast.error, EPERM);
    assert!(fast.message.is_some_and(|m| m.contains("read-only")));
    let (_, flags) = {
        let mut info = Client::new(server.connect());
        info.greeting(true);
        info.go("disk").unwrap()
    };
    assert_eq!(
        flags & (1 << 11),
        0,
        "no SEND_FAST_ZERO on a read-only export"
    );
    assert_eq!(flags & (1 << 10), 1 << 10, "SEND_CACHE");
}

#[test]
fn o_direct_exports_read_and_report_holes_on_512_byte_boundaries() {
    let mut contents = vec![0u8; 4 << 20];
    contents[..65536].fill(0xd1);
    contents[1 << 20..(1 << 20) + 8192].fill(0xd2);
    let server = TestServer::start(Setup {
        contents: contents.clone(),
        sparse: true,
        direct: true,
        ..Setup::default()
    });
    let mut c = server.client_in(Mode::Extended, true);
    let edge = c.call(sent(CMD_READ, 0, 65536 - 512, 1024), &[]);
    assert_eq!(edge.content, [(65024, 512, false), (65536, 512, true)]);
    assert_eq!(edge.data.unwrap(), contents[65024..66048]);
    let across = c.call(sent(CMD_READ, 0, 0, 2 << 20), &[]);
    assert_eq!(across.data.unwrap(), contents[..2 << 20]);
    assert_eq!(
        across.content.iter().filter(|c| c.2).count(),
        2,
        "{:?}",
        across.content
    );
    let status = c.call(sent(CMD_BLOCK_STATUS, 0, 512, (4 << 20) - 1024), &[]);
    assert!(
        status.extents.iter().all(|e| e.0 % 512 == 0),
        "{:?}",
        status.extents
    );
    assert_eq!(status.extents[0], (65024, 0));
    assert_eq!(
        c.call(sent(CMD_BLOCK_STATUS, 0, 100, 512), &[]).error,
        EINVAL,
        "misaligned"
    );
}
