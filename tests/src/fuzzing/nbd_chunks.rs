//! Structured and extended reply chunks read back, written here from the protocol document
//! (independent of the server's encoders in `examples::nbd::proto::chunks`), and the checks the
//! `nbd_reply_chunks` and `nbd_extents` fuzz targets run: chunk encodings round-trip, and the
//! allocation map of a range turns into extents and `READ` chunks that say only what the map says.

use examples::nbd::proto::chunks::{self, ChunkTo};
use examples::nbd::proto::extents::{self, Extent, Found, ReadChunk, Seek};

use super::{be32, be64};

/// A chunk header as read off the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Reply flags (bit 0: done).
    pub flags: u16,
    /// Chunk type.
    pub kind: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// Extended headers only: the request's offset.
    pub offset: Option<u64>,
    /// Bytes of payload.
    pub length: u64,
}

/// Bytes of a chunk header: 20 (structured) or 32 (extended).
pub fn header_len(extended: bool) -> usize {
    if extended {
        32
    } else {
        20
    }
}

/// Reads a chunk header (magic 0x668e33ef, or 0x6e8a278c when `extended`); `None` if it is short or
/// its magic is wrong.
pub fn parse_header(bytes: &[u8], extended: bool) -> Option<ChunkHeader> {
    if bytes.len() < header_len(extended) {
        return None;
    }
    let magic = if extended { 0x6e8a_278c } else { 0x668e_33ef };
    if be32(bytes, 0) != magic {
        return None;
    }
    let flags = u16::from_be_bytes([bytes[4], bytes[5]]);
    let kind = u16::from_be_bytes([bytes[6], bytes[7]]);
    let cookie = be64(bytes, 8);
    let (offset, length) = if extended {
        (Some(be64(bytes, 16)), be64(bytes, 24))
    } else {
        (None, u64::from(be32(bytes, 16)))
    };
    Some(ChunkHeader {
        flags,
        kind,
        cookie,
        offset,
        length,
    })
}

/// What a chunk's payload says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// `NONE` (type 0).
    None,
    /// `OFFSET_DATA` (1): offset, data.
    Data(u64, Vec<u8>),
    /// `OFFSET_HOLE` (2): offset, length.
    Hole(u64, u32),
    /// `BLOCK_STATUS` (5) or `BLOCK_STATUS_EXT` (6): context id, (length, flags) extents.
    Status(u32, Vec<(u64, u64)>),
    /// `ERROR` (2^15 + 1) or `ERROR_OFFSET` (2^15 + 2): errno, message, offset.
    Error(u32, String, Option<u64>),
}

/// Decodes a payload of type `kind`, checking every length rule of the protocol; `Err` says which.
pub fn decode(kind: u16, payload: &[u8], extended: bool) -> Result<Content, String> {
    let len = payload.len();
    match kind {
        0 if len == 0 => Ok(Content::None),
        1 if len >= 9 => Ok(Content::Data(be64(payload, 0), payload[8..].to_vec())),
        2 if len == 12 => {
            let hole = be32(payload, 8);
            if hole == 0 {
                return Err("a hole of length 0".into());
            }
            Ok(Content::Hole(be64(payload, 0), hole))
        }
        5 if !extended && len >= 12 && (len - 4) % 8 == 0 => {
            let extents = payload[4..].chunks(8);
            let extents = extents.map(|e| (u64::from(be32(e, 0)), u64::from(be32(e, 4))));
            Ok(Content::Status(be32(payload, 0), extents.collect()))
        }
        6 if extended && len >= 24 && (len - 8) % 16 == 0 => {
            let count = be32(payload, 4) as usize;
            if count != (len - 8) / 16 {
                return Err(format!("descriptor count {count} for {len} bytes"));
            }
            let extents = payload[8..].chunks(16).map(|e| (be64(e, 0), be64(e, 8)));
            Ok(Content::Status(be32(payload, 0), extents.collect()))
        }
        0x8001 | 0x8002 if len >= 6 => {
            let errno = be32(payload, 0);
            let message_len = usize::from(u16::from_be_bytes([payload[4], payload[5]]));
            let tail = if kind == 0x8002 { 8 } else { 0 };
            if errno == 0 || 6 + message_len + tail != len {
                return Err(format!(
                    "error chunk: errno {errno}, message {message_len}, {len} bytes"
                ));
            }
            let message = String::from_utf8(payload[6..6 + message_len].to_vec())
                .map_err(|_| "a message that is not UTF-8".to_string())?;
            let at = (tail > 0).then(|| be64(payload, 6 + message_len));
            Ok(Content::Error(errno, message, at))
        }
        _ => Err(format!("type {kind} with {len} bytes of payload")),
    }
}

/// Reads one whole chunk at the front of `bytes`: header, content, the bytes after it.
pub fn split_chunk(bytes: &[u8], extended: bool) -> Result<(ChunkHeader, Content, &[u8]), String> {
    let header = parse_header(bytes, extended).ok_or("bad or short chunk header")?;
    let start = header_len(extended);
    let end = usize::try_from(header.length)
        .ok()
        .and_then(|l| start.checked_add(l))
        .filter(|&end| end <= bytes.len())
        .ok_or("payload cut short")?;
    let content = decode(header.kind, &bytes[start..end], extended)?;
    Ok((header, content, &bytes[end..]))
}

/// Takes a u64 off the front of a byte source (zeroes once it is used up).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let n = self.0.len().min(N);
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }
}

/// Encodes chunks chosen by `data` with the server's encoders and reads each back with [`split_chunk`]:
/// every field must come back as it went in. Returns how many chunks were checked.
pub fn check_chunk_round_trips(data: &[u8]) -> usize {
    let mut src = Bytes(data);
    let mut checked = 0;
    while !src.0.is_empty() {
        let to = ChunkTo {
            extended: src.u8() & 1 != 0,
            cookie: src.u64(),
            offset: src.u64(),
        };
        let done = src.u8() & 1 != 0;
        let mut out = Vec::new();
        let (expected_kind, expected) = match src.u8() % 5 {
            0 => {
                out.extend_from_slice(&chunks::none_chunk(&to));
                (0, Content::None)
            }
            1 => {
                let (at, len) = (src.u64(), usize::from(src.u8()) + 1);
                let payload: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
                out.extend_from_slice(&chunks::data_chunk_prefix(&to, done, at, len as u64));
                out.extend_from_slice(&payload);
                (1, Content::Data(at, payload))
            }
            2 => {
                let (at, len) = (src.u64(), src.u32().max(1));
                out.extend_from_slice(&chunks::hole_chunk(&to, done, at, len));
                (2, Content::Hole(at, len))
            }
            3 => {
                let (id, count) = (src.u32(), usize::from(src.u8() % 8) + 1);
                let mut extents = Vec::new();
                for _ in 0..count {
                    let length = if to.extended {
                        src.u64()
                    } else {
                        src.u32().into()
                    };
                    extents.push((length.max(1), src.u32()));
                }
                chunks::block_status_chunk(&mut out, &to, done, id, &extents);
                let kind = if to.extended { 6 } else { 5 };
                let wide = extents.iter().map(|&(l, f)| (l, u64::from(f))).collect();
                (kind, Content::Status(id, wide))
            }
            _ => {
                let errno = src.u32().max(1);
                let at = (src.u8() & 1 != 0).then(|| src.u64());
                let message = String::from_utf8_lossy(&src.take::<12>()).into_owned();
                chunks::error_chunk(&mut out, &to, done, errno, &message, at);
                let kind = if at.is_some() { 0x8002 } else { 0x8001 };
                (kind, Content::Error(errno, message, at))
            }
        };
        let (header, content, rest) = split_chunk(&out, to.extended)
            .unwrap_or_else(|e| panic!("chunk {expected:?} does not read back: {e}"));
        assert!(rest.is_empty(), "{} bytes after the chunk", rest.len());
        assert_eq!(content, expected);
        assert_eq!(header.kind, expected_kind);
        assert_eq!(header.cookie, to.cookie);
        assert_eq!(header.offset, to.extended.then_some(to.offset));
        let done_expected = done || expected_kind == 0;
        assert_eq!(
            header.flags,
            u16::from(done_expected),
            "flags of {expected:?}"
        );
        checked += 1;
    }
    checked
}

/// A fake file for `lseek`: sorted, disjoint data ranges, holes elsewhere, `size` bytes long.
#[derive(Clone, Debug)]
pub struct AllocationMap {
    /// `(start, end)` of each data range.
    pub data: Vec<(u64, u64)>,
    /// The file size.
    pub size: u64,
}

impl AllocationMap {
    /// Answers `lseek(SEEK_DATA)` / `lseek(SEEK_HOLE)` as Linux does.
    pub fn seek(&self, whence: Seek, at: u64) -> Found {
        if at >= self.size {
            return Found::NoMore;
        }
        match whence {
            Seek::Data => (self.data.iter().find(|&&(_, end)| end > at))
                .map_or(Found::NoMore, |&(start, _)| Found::At(start.max(at))),
            Seek::Hole => Found::At(
                (self.data.iter().find(|&&(s, e)| s <= at && at < e)).map_or(at, |&(_, e)| e),
            ),
        }
    }

    /// Whether `[start, end)` has no data.
    pub fn is_hole(&self, start: u64, end: u64) -> bool {
        self.data.iter().all(|&(s, e)| e <= start || s >= end)
    }
}

/// An allocation map and the parameters of one query, from fuzz bytes; and whether the probe should
/// answer with the map (else with whatever the bytes say, as a confused file system might).
pub struct ExtentsInput {
    pub map: AllocationMap,
    pub offset: u64,
    pub length: u64,
    pub max: usize,
    pub unit: u64,
    pub answers: Option<Vec<u8>>,
}

/// Decodes an [`ExtentsInput`]: a header of parameters, then boundaries of the data ranges (in
/// 512-byte units, or bytes when `unit` is 1, as a file system might report).
pub fn extents_input(data: &[u8]) -> ExtentsInput {
    let mut src = Bytes(data);
    let flags = src.u8();
    let unit = [1u64, 512, 4096][usize::from(flags % 3)];
    let grain = if flags & 0x10 != 0 { 1 } else { 512 };
    let max = usize::from(src.u8() % 16) + 1;
    let (first, count) = (u64::from(src.u32() % 64), u64::from(src.u32() % 256) + 1);
    let (offset, length) = (first * unit, count * unit);
    let mut data_ranges = Vec::new();
    let mut at = 0u64;
    for _ in 0..usize::from(src.u8() % 12) {
        let (gap, run) = (
            u64::from(src.u8()) * grain,
            u64::from(src.u8()).max(1) * grain,
        );
        data_ranges.push((at + gap, at + gap + run));
        at += gap + run;
    }
    let size = (at + u64::from(src.u8()) * grain).max(offset + length);
    let answers = (flags & 0x20 != 0).then(|| src.0.to_vec());
    ExtentsInput {
        map: AllocationMap {
            data: data_ranges,
            size,
        },
        offset,
        length,
        max,
        unit,
        answers,
    }
}

/// Runs `extents::block_status` and `extents::read_chunks` on an [`ExtentsInput`] and checks what they
/// promise: consecutive pieces from the offset, never past the range, the whole range for a `READ`, at
/// most `max` extents and at least one, holes and boundaries on the unit; and, when the probe tells
/// the truth, a hole only where the map has no data.
pub fn check_extents(input: &ExtentsInput) -> (Vec<Extent>, Vec<ReadChunk>) {
    let ExtentsInput {
        map,
        offset,
        length,
        max,
        unit,
        ..
    } = input;
    let (offset, length, max, unit) = (*offset, *length, *max, *unit);
    let mut answers = input
        .answers
        .clone()
        .map(|a| a.into_iter().cycle().take(4096));
    let mut probe = |whence, at| match answers.as_mut() {
        None => map.seek(whence, at),
        Some(bytes) => match bytes.next().unwrap_or(0) % 4 {
            0 => Found::NoMore,
            1 => Found::Unknown,
            2 => Found::At(at + u64::from(bytes.next().unwrap_or(0)) * 7),
            _ => Found::At(at.saturating_sub(u64::from(bytes.next().unwrap_or(0)))),
        },
    };
    let truthful = input.answers.is_none();
    let status = extents::block_status(offset, length, max, unit, &mut probe);
    assert!(
        !status.is_empty() && status.len() <= max,
        "{} extents",
        status.len()
    );
    let mut pos = offset;
    for e in &status {
        assert!(e.length > 0);
        if e.hole && truthful {
            assert!(
                map.is_hole(pos, pos + e.length),
                "hole at {pos}+{} has data",
                e.length
            );
        }
        pos += e.length;
        assert!(pos <= offset + length, "extents past the request");
        assert_eq!(
            pos % unit,
            0,
            "extent boundary {pos} off the {unit}-byte unit"
        );
    }
    for pair in status.windows(2) {
        assert_ne!(
            pair[0].hole, pair[1].hole,
            "neighbours of one kind not merged"
        );
    }
    let min_hole = 512;
    let chunks = extents::read_chunks(offset, length, max, unit, min_hole, &mut probe);
    let mut pos = offset;
    for chunk in &chunks {
        match *chunk {
            ReadChunk::Data {
                offset: at,
                length: len,
            } => {
                assert_eq!(at, pos);
                assert!(len > 0);
                pos += len;
            }
            ReadChunk::Hole {
                offset: at,
                length: len,
            } => {
                assert_eq!(at, pos);
                let len = u64::from(len);
                assert!(
                    len >= min_hole && at % unit == 0 && len % unit == 0,
                    "hole {at}+{len}"
                );
                if truthful {
                    assert!(
                        map.is_hole(at, at + len),
                        "hole chunk at {at}+{len} has data"
                    );
                }
                pos += len;
            }
        }
    }
    assert_eq!(pos, offset + length, "the READ chunks cover the request");
    (status, chunks)
}
