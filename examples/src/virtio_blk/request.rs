//! The virtio-blk request parser: a descriptor chain, as the guest wrote it, becomes a [`Request`] the
//! device can run, or a [`Rejected`] naming the status to report. It reads the chain's descriptors and the
//! request header from guest memory through vm-memory's checked accessors and does no block I/O, so it
//! can be fuzzed and property-tested on its own.
//!
//! The guest is untrusted. Every guest address and length is checked against the guest's memory regions
//! here, before the device forms a host pointer from it; nothing in the input can make this code panic.
//!
//! Chain layout (virtio 1.2, 5.2.6): device-readable descriptors first (the 16-byte header
//! `virtio_blk_outhdr`, then data for OUT, DISCARD and WRITE_ZEROES), then device-writable descriptors
//! (data for IN and GET_ID), the last byte of the last one being the status byte.

use std::fmt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// virtio-blk addresses the disk in 512-byte sectors, whatever its block size.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header (`virtio_blk_outhdr`: type, ioprio, sector).
pub const HEADER_SIZE: usize = 16;
/// Size of one `virtio_blk_discard_write_zeroes` range.
pub const RANGE_SIZE: usize = 16;
/// Length of the GET_ID answer (the serial, NUL-padded).
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Longest chain the parser reads; the queue's own walk stops at the queue size before that.
const MAX_CHAIN: usize = 4096;

/// What the device accepts: the disk's size and the limits it advertises in its config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Disk size in bytes (a multiple of [`SECTOR_SIZE`]).
    pub capacity: u64,
    /// Most data descriptors in one read or write (`seg_max`).
    pub max_segments: usize,
    /// Most data bytes in one read or write.
    pub max_transfer: u64,
    /// Most ranges in one DISCARD or WRITE_ZEROES (`max_discard_seg`, `max_write_zeroes_seg`).
    pub max_ranges: usize,
    /// Most bytes in one DISCARD or WRITE_ZEROES range (`max_discard_sectors`, in bytes).
    pub max_range_bytes: u64,
}

impl Limits {
    /// Limits close to QEMU's defaults for a disk of `capacity` bytes: 128 segments, 1 MiB per
    /// transfer, 8 ranges of up to 32 MiB for DISCARD and WRITE_ZEROES.
    pub fn for_capacity(capacity: u64) -> Self {
        Limits {
            capacity: capacity - capacity % SECTOR_SIZE,
            max_segments: 128,
            max_transfer: 1 << 20,
            max_ranges: 8,
            max_range_bytes: 32 << 20,
        }
    }
}

/// A validated piece of guest memory: it lies entirely inside the guest's regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest address of the first byte.
    pub addr: GuestAddress,
    /// Length in bytes (never 0).
    pub len: u32,
}

/// One DISCARD or WRITE_ZEROES range, in bytes, inside the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// Disk offset.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// WRITE_ZEROES may deallocate (`VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`).
    pub unmap: bool,
}

/// What a valid request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// VIRTIO_BLK_T_IN: read from the disk into the data segments.
    Read,
    /// VIRTIO_BLK_T_OUT: write the data segments to the disk.
    Write,
    /// VIRTIO_BLK_T_FLUSH: make earlier writes durable.
    Flush,
    /// VIRTIO_BLK_T_GET_ID: write the serial into the data segments (at most [`ID_BYTES`]).
    GetId,
    /// VIRTIO_BLK_T_DISCARD: deallocate these ranges.
    Discard(Vec<ByteRange>),
    /// VIRTIO_BLK_T_WRITE_ZEROES: zero these ranges.
    WriteZeroes(Vec<ByteRange>),
}

/// A request the device can run as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub op: Op,
    /// Disk offset in bytes of a read or write (sector * 512; 0 for the others).
    pub offset: u64,
    /// The data segments of a read, write or GET_ID, in order.
    pub data: Vec<Segment>,
    /// Total bytes in `data`.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// No writable status byte at the end of the chain (empty chain, last descriptor readable or empty,
    /// or outside guest memory). Nothing can be reported: the chain completes with 0 bytes written.
    NoStatus,
    /// A descriptor points outside guest memory.
    BadAddress,
    /// Fewer than 16 readable bytes for the header.
    TooShort,
    /// A readable descriptor after a writable one, or data in the direction the type does not use.
    WrongDirection,
    /// The data length of a read or write is not a multiple of 512, or a range list is not a multiple
    /// of 16 bytes or is empty.
    Unaligned,
    /// The request reaches past the end of the disk (or overflows).
    OutOfRange,
    /// More data, segments or ranges than the device allows.
    Oversized,
    /// A request type the device does not implement.
    UnsupportedType(u32),
    /// DISCARD or WRITE_ZEROES flags the device does not implement.
    UnsupportedFlags(u32),
}

impl Malformed {
    /// The virtio-blk status the guest gets for it, or `None` where no status byte can be written.
    pub fn status(self) -> Option<u8> {
        match self {
            Malformed::NoStatus => None,
            Malformed::UnsupportedType(_) | Malformed::UnsupportedFlags(_) => {
                Some(VIRTIO_BLK_S_UNSUPP as u8)
            }
            _ => Some(VIRTIO_BLK_S_IOERR as u8),
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::NoStatus => f.write_str("no writable status byte"),
            Malformed::BadAddress => f.write_str("descriptor outside guest memory"),
            Malformed::TooShort => f.write_str("request header shorter than 16 bytes"),
            Malformed::WrongDirection => f.write_str("descriptor in the wrong direction"),
            Malformed::Unaligned => f.write_str("data length not a multiple of the unit"),
            Malformed::OutOfRange => f.write_str("request past the end of the disk"),
            Malformed::Oversized => f.write_str("request larger than the device allows"),
            Malformed::UnsupportedType(t) => write!(f, "unsupported request type {t}"),
            Malformed::UnsupportedFlags(fl) => write!(f, "unsupported range flags {fl:#x}"),
        }
    }
}

/// A refused chain: why, and where its status byte is (if it has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Why.
    pub reason: Malformed,
    /// The status byte's guest address; `None` for [`Malformed::NoStatus`].
    pub status_addr: Option<GuestAddress>,
}

/// Parses one descriptor chain (as yielded by virtio-queue's `DescriptorChain`) against `limits`.
pub fn parse<M: GuestMemoryBackend>(
    mem: &M,
    chain: impl IntoIterator<Item = Descriptor>,
    limits: &Limits,
) -> Result<Request, Rejected> {
    let descs: Vec<Descriptor> = chain.into_iter().take(MAX_CHAIN + 1).collect();
    let no_status = Rejected {
        reason: Malformed::NoStatus,
        status_addr: None,
    };
    let last = descs.last().ok_or(no_status)?;
    if !last.is_write_only() || last.len() == 0 {
        return Err(no_status);
    }
    let status = last
        .addr()
        .checked_add(u64::from(last.len()) - 1)
        .filter(|&a| mem.check_range(a, 1))
        .ok_or(no_status)?;
    let reject = |reason| Rejected {
        reason,
        status_addr: Some(status),
    };
    if descs.len() > MAX_CHAIN {
        return Err(reject(Malformed::Oversized));
    }

    // Split into readable and writable segments, the status byte taken off the last one.
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut seen_writable = false;
    let count = descs.len();
    for (i, d) in descs.iter().enumerate() {
        let len = if i + 1 == count { d.len() - 1 } else { d.len() };
        if d.is_write_only() {
            seen_writable = true;
            push_checked(mem, &mut writable, d.addr(), len).map_err(reject)?;
        } else if seen_writable {
            return Err(reject(Malformed::WrongDirection));
        } else {
            push_checked(mem, &mut readable, d.addr(), len).map_err(reject)?;
        }
    }

    let (header, out_data) = split_header(mem, &readable).ok_or(reject(Malformed::TooShort))?;
    let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let request = |op, offset, data: Vec<Segment>| {
        let data_len = data.iter().map(|s| u64::from(s.len)).sum();
        Request {
            op,
            offset,
            data,
            data_len,
            status,
        }
    };

    match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let (data, other) = if kind == VIRTIO_BLK_T_IN {
                (writable, out_data)
            } else {
                (out_data, writable)
            };
            if !other.is_empty() {
                return Err(reject(Malformed::WrongDirection));
            }
            let len: u64 = data.iter().map(|s| u64::from(s.len)).sum();
            if len % SECTOR_SIZE != 0 {
                return Err(reject(Malformed::Unaligned));
            }
            if len > limits.max_transfer || data.len() > limits.max_segments {
                return Err(reject(Malformed::Oversized));
            }
            let offset = disk_range(sector, len, limits).map_err(reject)?;
            let op = if kind == VIRTIO_BLK_T_IN {
                Op::Read
            } else {
                Op::Write
            };
            Ok(request(op, offset, data))
        }
        VIRTIO_BLK_T_FLUSH => {
            if !out_data.is_empty() || !writable.is_empty() {
                return Err(reject(Malformed::WrongDirection));
            }
            Ok(request(Op::Flush, 0, Vec::new()))
        }
        VIRTIO_BLK_T_GET_ID => {
            if !out_data.is_empty() {
                return Err(reject(Malformed::WrongDirection));
            }
            Ok(request(Op::GetId, 0, writable))
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if !writable.is_empty() {
                return Err(reject(Malformed::WrongDirection));
            }
            let ranges = parse_ranges(mem, &out_data, kind, limits).map_err(reject)?;
            let op = if kind == VIRTIO_BLK_T_DISCARD {
                Op::Discard(ranges)
            } else {
                Op::WriteZeroes(ranges)
            };
            Ok(request(op, 0, Vec::new()))
        }
        other => Err(reject(Malformed::UnsupportedType(other))),
    }
}

/// Adds a non-empty segment after checking that it lies in guest memory.
fn push_checked<M: GuestMemoryBackend>(
    mem: &M,
    out: &mut Vec<Segment>,
    addr: GuestAddress,
    len: u32,
) -> Result<(), Malformed> {
    if len == 0 {
        return Ok(());
    }
    if !mem.check_range(addr, len as usize) {
        return Err(Malformed::BadAddress);
    }
    out.push(Segment { addr, len });
    Ok(())
}

/// Reads the 16-byte header from the start of the readable segments (it may span several) and returns
/// it with the readable segments that follow it.
fn split_header<M: GuestMemoryBackend>(
    mem: &M,
    readable: &[Segment],
) -> Option<([u8; HEADER_SIZE], Vec<Segment>)> {
    let mut header = [0u8; HEADER_SIZE];
    let mut filled = 0;
    let mut rest = Vec::new();
    for seg in readable {
        if filled == HEADER_SIZE {
            rest.push(*seg);
            continue;
        }
        let take = (HEADER_SIZE - filled).min(seg.len as usize);
        mem.read_slice(&mut header[filled..filled + take], seg.addr)
            .ok()?;
        filled += take;
        if take < seg.len as usize {
            rest.push(Segment {
                addr: seg.addr.checked_add(take as u64)?,
                len: seg.len - take as u32,
            });
        }
    }
    (filled == HEADER_SIZE).then_some((header, rest))
}

/// Checks that `len` bytes from `sector` lie inside the disk; returns the byte offset.
fn disk_range(sector: u64, len: u64, limits: &Limits) -> Result<u64, Malformed> {
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(Malformed::OutOfRange)?;
    match offset.checked_add(len) {
        Some(end) if end <= limits.capacity => Ok(offset),
        _ => Err(Malformed::OutOfRange),
    }
}

/// Reads and validates the `virtio_blk_discard_write_zeroes` ranges of a DISCARD or WRITE_ZEROES.
fn parse_ranges<M: GuestMemoryBackend>(
    mem: &M,
    data: &[Segment],
    kind: u32,
    limits: &Limits,
) -> Result<Vec<ByteRange>, Malformed> {
    let total: u64 = data.iter().map(|s| u64::from(s.len)).sum();
    if total == 0 || total % RANGE_SIZE as u64 != 0 {
        return Err(Malformed::Unaligned);
    }
    if total / RANGE_SIZE as u64 > limits.max_ranges as u64 {
        return Err(Malformed::Oversized);
    }
    let mut bytes = Vec::with_capacity(total as usize);
    for seg in data {
        let start = bytes.len();
        bytes.resize(start + seg.len as usize, 0);
        mem.read_slice(&mut bytes[start..], seg.addr)
            .map_err(|_| Malformed::BadAddress)?;
    }
    let allowed_flags = if kind == VIRTIO_BLK_T_WRITE_ZEROES {
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
    } else {
        0
    };
    let mut ranges = Vec::new();
    for raw in bytes.chunks_exact(RANGE_SIZE) {
        let word = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let sector = u64::from(word(0)) | (u64::from(word(4)) << 32);
        let (sectors, flags) = (word(8), word(12));
        if flags & !allowed_flags != 0 {
            return Err(Malformed::UnsupportedFlags(flags));
        }
        let len = u64::from(sectors) * SECTOR_SIZE;
        if len > limits.max_range_bytes {
            return Err(Malformed::Oversized);
        }
        let offset = disk_range(sector, len, limits)?;
        ranges.push(ByteRange {
            offset,
            len,
            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        });
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;

    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn mem() -> crate::virtio_blk::GuestMemory {
        vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn header(mem: &crate::virtio_blk::GuestMemory, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn d(addr: u64, len: u32, flags: u16) -> Descriptor {
        Descriptor::new(addr, len, flags, 0)
    }

    fn limits() -> Limits {
        Limits::for_capacity(1 << 20)
    }

    #[test]
    fn read_with_header_split_over_two_descriptors() {
        let m = mem();
        header(&m, 0x100, VIRTIO_BLK_T_IN, 8);
        let chain = [
            d(0x100, 10, 0),
            d(0x10a, 6, 0),
            d(0x1000, 4096, W),
            d(0x3000, 1, W),
        ];
        let req = parse(&m, chain, &limits()).unwrap();
        assert_eq!(req.op, Op::Read);
        assert_eq!(req.offset, 8 * 512);
        assert_eq!(req.data_len, 4096);
        assert_eq!(req.status, GuestAddress(0x3000));
    }

    #[test]
    fn status_byte_shares_the_last_data_descriptor() {
        let m = mem();
        header(&m, 0x100, VIRTIO_BLK_T_IN, 0);
        let req = parse(&m, [d(0x100, 16, 0), d(0x1000, 513, W)], &limits()).unwrap();
        assert_eq!(
            req.data,
            [Segment {
                addr: GuestAddress(0x1000),
                len: 512
            }]
        );
        assert_eq!(req.status, GuestAddress(0x1200));
    }

    #[test]
    fn each_malformation_maps_to_its_status() {
        let m = mem();
        header(&m, 0x100, VIRTIO_BLK_T_OUT, 0);
        let l = limits();
        let reason =
            |chain: &[Descriptor]| parse(&m, chain.iter().copied(), &l).unwrap_err().reason;
        assert_eq!(reason(&[]), Malformed::NoStatus);
        assert_eq!(reason(&[d(0x100, 16, 0)]), Malformed::NoStatus);
        assert_eq!(
            reason(&[d(0x100, 16, 0), d(0x20000, 1, W)]),
            Malformed::NoStatus
        );
        assert_eq!(
            reason(&[d(0x100, 8, 0), d(0x300, 1, W)]),
            Malformed::TooShort
        );
        assert_eq!(
            reason(&[d(0x100, 16, 0), d(0x1000, 512, W), d(0x300, 1, W)]),
            Malformed::WrongDirection
        );
        assert_eq!(
            reason(&[d(0x100, 16, 0), d(0xf000, 0x2000, 0), d(0x300, 1, W)]),
            Malformed::BadAddress
        );
        assert_eq!(
            reason(&[d(0x100, 16, 0), d(0x1000, 100, 0), d(0x300, 1, W)]),
            Malformed::Unaligned
        );
        header(&m, 0x100, VIRTIO_BLK_T_OUT, 2047);
        assert_eq!(
            reason(&[d(0x100, 16, 0), d(0x1000, 1024, 0), d(0x300, 1, W)]),
            Malformed::OutOfRange
        );
        header(&m, 0x100, VIRTIO_BLK_T_OUT, u64::MAX / 256);
        assert_eq!(
            reason(&[d(0x100, 16, 0), d(0x1000, 512, 0), d(0x300, 1, W)]),
            Malformed::OutOfRange
        );
        header(&m, 0x100, 99, 0);
        let rej = parse(&m, [d(0x100, 16, 0), d(0x300, 1, W)], &l).unwrap_err();
        assert_eq!(rej.reason, Malformed::UnsupportedType(99));
        assert_eq!(rej.reason.status(), Some(VIRTIO_BLK_S_UNSUPP as u8));
        assert_eq!(rej.status_addr, Some(GuestAddress(0x300)));
    }

    #[test]
    fn oversized_transfers_and_range_lists() {
        let m = mem();
        let l = Limits {
            max_transfer: 1024,
            max_ranges: 1,
            ..limits()
        };
        header(&m, 0x100, VIRTIO_BLK_T_IN, 0);
        let rej = parse(
            &m,
            [d(0x100, 16, 0), d(0x1000, 2048, W), d(0x300, 1, W)],
            &l,
        );
        assert_eq!(rej.unwrap_err().reason, Malformed::Oversized);
        header(&m, 0x100, VIRTIO_BLK_T_DISCARD, 0);
        let rej = parse(&m, [d(0x100, 16, 0), d(0x400, 32, 0), d(0x300, 1, W)], &l);
        assert_eq!(rej.unwrap_err().reason, Malformed::Oversized);
    }

    #[test]
    fn discard_ranges_and_flags() {
        let m = mem();
        header(&m, 0x100, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        let mut range = [0u8; 16];
        range[0..8].copy_from_slice(&4u64.to_le_bytes());
        range[8..12].copy_from_slice(&8u32.to_le_bytes());
        range[12..16].copy_from_slice(&1u32.to_le_bytes());
        m.write_slice(&range, GuestAddress(0x400)).unwrap();
        let chain = [d(0x100, 16, 0), d(0x400, 16, 0), d(0x300, 1, W)];
        let req = parse(&m, chain, &limits()).unwrap();
        let want = ByteRange {
            offset: 2048,
            len: 4096,
            unmap: true,
        };
        assert_eq!(req.op, Op::WriteZeroes(vec![want]));
        header(&m, 0x100, VIRTIO_BLK_T_DISCARD, 0);
        let rej = parse(&m, chain, &limits()).unwrap_err();
        assert_eq!(rej.reason, Malformed::UnsupportedFlags(1));
    }
}
