//! The allocation map of a range, from the answers of `lseek(SEEK_DATA)` / `lseek(SEEK_HOLE)`: as
//! `base:allocation` extents for `NBD_CMD_BLOCK_STATUS`, and as the content chunks of a structured
//! `NBD_CMD_READ` (data read from the file, holes sent as `OFFSET_HOLE`).
//!
//! The system calls are the caller's: it passes a `probe` that answers one `lseek`. Everything here is
//! arithmetic on its answers, which may be anything (a file that changes between two calls, a file
//! system that does not know): an answer that makes no sense counts as data, which is always a safe
//! answer (data is read and sent as it is).

use super::meta::{STATE_HOLE, STATE_ZERO};

/// Which `lseek` to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    /// `SEEK_DATA`: the first data at or after the position.
    Data,
    /// `SEEK_HOLE`: the first hole at or after the position (end of file counts as a hole).
    Hole,
}

/// What an `lseek` answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// The offset found.
    At(u64),
    /// `ENXIO`: no data at or after the position (it is at or past the end of the file).
    NoMore,
    /// Any other failure (the file system cannot say): treated as data.
    Unknown,
}

/// A run of the export that is all data or all hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Bytes (never 0 in the lists returned here).
    pub length: u64,
    /// Not allocated: reads as zeroes.
    pub hole: bool,
}

impl Extent {
    /// The `base:allocation` flags: a hole is `HOLE | ZERO`, data 0.
    pub fn status(&self) -> u32 {
        if self.hole {
            STATE_HOLE | STATE_ZERO
        } else {
            0
        }
    }
}

/// Appends an extent, merging it into the last one if of the same kind; empty extents are dropped.
fn push(out: &mut Vec<Extent>, length: u64, hole: bool) {
    if length == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.hole == hole => last.length = last.length.saturating_add(length),
        _ => out.push(Extent { length, hole }),
    }
}

/// Walks `[offset, offset + length)` with `probe` until it is covered or `max` extents are found.
/// Returns extents covering `[offset, offset + covered)`, alternating hole and data, where `covered` is
/// `length` unless `max` stopped the walk. About one `lseek` per extent.
pub fn walk(
    offset: u64,
    length: u64,
    max: usize,
    mut probe: impl FnMut(Seek, u64) -> Found,
) -> Vec<Extent> {
    let end = offset.saturating_add(length);
    let mut out = Vec::new();
    let mut pos = offset;
    // Where the last SEEK_DATA said data starts, so the next step can skip asking again.
    let mut data_at = None;
    while pos < end && out.len() < max.max(1) {
        let data = match data_at.take() {
            Some(at) => Found::At(at),
            None => probe(Seek::Data, pos),
        };
        match data {
            Found::NoMore => push(&mut out, end - pos, true),
            Found::At(at) if at > pos => {
                let to = at.min(end);
                push(&mut out, to - pos, true);
                if at < end {
                    data_at = Some(at);
                }
                pos = to;
                continue;
            }
            Found::At(_) => match probe(Seek::Hole, pos) {
                Found::At(hole) if hole > pos => {
                    let to = hole.min(end);
                    push(&mut out, to - pos, false);
                    pos = to;
                    continue;
                }
                // Data at pos but no hole after it, or nonsense: the rest is data.
                _ => push(&mut out, end - pos, false),
            },
            Found::Unknown => push(&mut out, end - pos, false),
        }
        pos = end;
    }
    out
}

fn round_up(x: u64, unit: u64) -> u64 {
    x.div_ceil(unit).saturating_mul(unit)
}

fn round_down(x: u64, unit: u64) -> u64 {
    x - x % unit
}

/// Rewrites `extents` (covering from `offset`) so that every hole starts and ends on a multiple of
/// `unit` (absolute) and is at least `min_hole` long: the parts of a hole that are not become data.
/// Neighbours of the same kind are merged. The covered range does not change.
pub fn align(offset: u64, extents: &[Extent], unit: u64, min_hole: u64) -> Vec<Extent> {
    let unit = unit.max(1);
    let mut out = Vec::with_capacity(extents.len());
    let mut pos = offset;
    for e in extents {
        let (start, end) = (pos, pos.saturating_add(e.length));
        pos = end;
        let (hs, he) = (round_up(start, unit), round_down(end, unit));
        if e.hole && he > hs && he - hs >= min_hole.max(1) {
            push(&mut out, hs - start, false);
            push(&mut out, he - hs, true);
            push(&mut out, end - he, false);
        } else {
            push(&mut out, end - start, false);
        }
    }
    out
}

/// The `base:allocation` extents of `[offset, offset + length)` for `NBD_CMD_BLOCK_STATUS`: at most
/// `max` (1 for `REQ_ONE`), at least one if `length > 0`, none past the range; every hole and every
/// extent boundary inside the range on a multiple of `unit` (the minimum block size; `offset` and
/// `length` are multiples of it). Fewer extents than the whole range needs is allowed by the protocol
/// (the client asks again from where the reply stopped).
pub fn block_status(
    offset: u64,
    length: u64,
    max: usize,
    unit: u64,
    probe: impl FnMut(Seek, u64) -> Found,
) -> Vec<Extent> {
    let unit = unit.max(1);
    let max = max.max(1);
    // Aligning can merge extents: walk a few more than needed, then cut.
    let raw = walk(offset, length, max.saturating_add(2), probe);
    let mut out = align(offset, &raw, unit, unit);
    out.truncate(max);
    let covered: u64 = out.iter().map(|e| e.length).sum();
    // A cut (or a walk stopped by `max`) may end off a block boundary: end on one.
    let end = offset.saturating_add(covered);
    if covered < length && end % unit != 0 {
        let down = round_down(end, unit);
        if down > offset {
            let mut excess = end - down;
            while excess > 0 {
                let Some(last) = out.last_mut() else { break };
                let cut = excess.min(last.length);
                last.length -= cut;
                excess -= cut;
                if last.length == 0 {
                    out.pop();
                }
            }
        } else {
            // Less than one block covered: report the first block (within the range) as data.
            let block_end = round_up(end, unit).min(offset.saturating_add(length));
            out = vec![Extent {
                length: block_end - offset,
                hole: false,
            }];
        }
    }
    out
}

/// One content chunk of a structured `READ` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadChunk {
    /// `OFFSET_DATA`: read from the file and send.
    Data {
        /// Absolute offset.
        offset: u64,
        /// Bytes.
        length: u64,
    },
    /// `OFFSET_HOLE`: zeroes, nothing read.
    Hole {
        /// Absolute offset.
        offset: u64,
        /// Bytes (a hole chunk carries 32 bits).
        length: u32,
    },
}

/// The content chunks of a structured `READ` of `[offset, offset + length)`: consecutive, covering the
/// whole range; holes at least `min_hole` long and aligned to `unit` (the data parts are then read
/// with the export's alignment); at most about `3 * max` chunks, the range past what `max` extents
/// covered being one data chunk.
pub fn read_chunks(
    offset: u64,
    length: u64,
    max: usize,
    unit: u64,
    min_hole: u64,
    probe: impl FnMut(Seek, u64) -> Found,
) -> Vec<ReadChunk> {
    let mut raw = walk(offset, length, max, probe);
    let covered: u64 = raw.iter().map(|e| e.length).sum();
    push(&mut raw, length.saturating_sub(covered), false);
    let mut out = Vec::with_capacity(raw.len());
    let mut pos = offset;
    for e in align(offset, &raw, unit, min_hole) {
        if e.hole {
            // Hole chunks carry 32 bits: a longer hole (not a READ this server accepts) is split.
            let mut left = e.length;
            while left > 0 {
                let piece = u32::try_from(left).unwrap_or(u32::MAX - u32::MAX % 4096);
                out.push(ReadChunk::Hole {
                    offset: pos,
                    length: piece,
                });
                pos = pos.saturating_add(piece.into());
                left -= u64::from(piece);
            }
        } else {
            out.push(ReadChunk::Data {
                offset: pos,
                length: e.length,
            });
            pos = pos.saturating_add(e.length);
        }
    }
    out
}
