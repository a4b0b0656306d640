//! The exported file: what the handshake advertises and the block operations requests run on it,
//! through `aioctx::fs::File` on the ring of the IOThread that serves the connection.
//!
//! Holes are found with `lseek(SEEK_DATA)` / `lseek(SEEK_HOLE)` on a second descriptor of the file
//! (`aioctx::fs::File` has no raw fd), called directly on the IOThread, as QEMU's file-posix driver does
//! in its coroutines: it is a metadata lookup (microseconds while the file's extent tree is cached), and
//! a request makes at most about one call per extent, bounded by [`MAX_READ_EXTENTS`] and
//! [`MAX_STATUS_EXTENTS`]. It can block while another operation holds the inode lock or the extent tree
//! must be read from disk; the pool hop that would avoid that costs more than the call on every request.
//! `NBD_CMD_CACHE` is a `posix_fadvise(WILLNEED)`, which may start (and wait on) reads of metadata: it
//! runs on the context's blocking pool. The file offset `lseek` moves (shared by both descriptors) is
//! used by no I/O: every transfer is positional.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::sync::Arc;

use aioctx::fs::File;

use super::block::Block;
use super::proto::chunks::EXTENDED_HEADER_LEN;
use super::proto::extents::{self, Extent, Found, ReadChunk, Seek};
use super::proto::{self, tflags, ExportLimits, ReplyMode};

/// The buffer alignment for `O_DIRECT` (a page: enough for any logical block size).
const DIRECT_ALIGN: usize = 4096;
/// The biggest zero buffer written when the file system cannot zero a range by itself.
const ZERO_CHUNK: u64 = 1024 * 1024;
/// Room in front of read data for the longest reply header: an extended chunk header and the offset of
/// an `OFFSET_DATA` chunk (a simple reply's 16 bytes fit too).
const READ_HEADROOM: usize = EXTENDED_HEADER_LEN + 8;
/// The most extents a sparse `READ` looks up (more make the rest one data chunk).
pub(crate) const MAX_READ_EXTENTS: usize = 256;
/// The most extents one `BLOCK_STATUS` reply carries (the client asks again from where it stopped).
pub(crate) const MAX_STATUS_EXTENTS: usize = 1024;
/// A hole shorter than this is read and sent as data in a sparse `READ` (it also leaves room for the
/// next data chunk's header in the unsent bytes).
const MIN_READ_HOLE: u64 = 512;

/// One export: a file, its name and what clients may do with it.
#[derive(Debug)]
pub(crate) struct Export {
    pub(crate) name: String,
    pub(crate) file: File,
    /// Another descriptor of the same open file, for `lseek` and `posix_fadvise`.
    map: Arc<std::fs::File>,
    pub(crate) limits: ExportLimits,
    /// Buffers handed to the file must be aligned to this (O_DIRECT) or may be anywhere (1).
    align: usize,
    /// The file is a block device: zeroing a range may write zeroes, so it is never "fast".
    block_device: bool,
}

impl Export {
    /// An export of `file`; `map` is another descriptor of the same file (`File::try_clone`).
    pub(crate) fn new(
        name: String,
        file: File,
        map: std::fs::File,
        size: u64,
        read_only: bool,
        direct: bool,
    ) -> Self {
        let block_device = map
            .metadata()
            .is_ok_and(|m| m.file_type().is_block_device());
        Export {
            name,
            file,
            map: Arc::new(map),
            limits: ExportLimits {
                size,
                read_only,
                min_block: if direct { 512 } else { 1 },
            },
            align: if direct { DIRECT_ALIGN } else { 1 },
            block_device,
        }
    }

    /// Whether a client asking for `name` gets this export (the empty name means the default export).
    pub(crate) fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }

    /// The transmission flags of the export for a client that negotiated `mode`.
    pub(crate) fn transmission_flags(&self, mode: ReplyMode) -> u16 {
        // All connections share one file, and FLUSH is an fdatasync of it, so a flush on one connection
        // covers writes completed on any other: multi-conn is safe.
        let mut flags =
            tflags::HAS_FLAGS | tflags::SEND_FLUSH | tflags::CAN_MULTI_CONN | tflags::SEND_CACHE;
        if mode != ReplyMode::Simple {
            flags |= tflags::SEND_DF;
        }
        if self.limits.read_only {
            flags | tflags::READ_ONLY
        } else {
            flags
                | tflags::SEND_FUA
                | tflags::SEND_TRIM
                | tflags::SEND_WRITE_ZEROES
                | tflags::SEND_FAST_ZERO
        }
    }

    /// The `NBD_INFO_BLOCK_SIZE` values: minimum, preferred, maximum.
    pub(crate) fn block_sizes(&self) -> (u32, u32, u32) {
        (self.limits.min_block, 4096, proto::MAX_PAYLOAD)
    }

    /// A buffer for a `WRITE` payload of `len` bytes.
    pub(crate) fn payload_buffer(&self, len: usize) -> Block {
        Block::new(len, 0, self.align)
    }

    /// A buffer for `len` bytes of read data, with room in front for the reply header; with O_DIRECT
    /// the data starts on an aligned address.
    fn read_buffer(&self, len: usize) -> Block {
        Block::new(len, READ_HEADROOM.max(self.align), self.align)
    }

    /// Reads `len` bytes at `offset` into a block that has room for the reply header in front.
    pub(crate) async fn read(&self, offset: u64, len: usize) -> io::Result<Block> {
        let block = self.read_buffer(len);
        let (res, block) = self.file.read_exact_at(block, offset).await;
        res.map(|()| block)
    }

    /// Reads `[offset, offset + len)` as content chunks: holes are found first and not read, the data
    /// chunks are read in one operation (from the first data byte to the end of the last data chunk).
    pub(crate) async fn read_sparse(
        &self,
        offset: u64,
        len: usize,
    ) -> io::Result<(Block, Vec<ReadChunk>)> {
        let unit = u64::from(self.limits.min_block);
        let chunks = extents::read_chunks(
            offset,
            len as u64,
            MAX_READ_EXTENTS,
            unit,
            MIN_READ_HOLE,
            |whence, at| self.seek(whence, at),
        );
        let mut block = self.read_buffer(len);
        let data = chunks.iter().filter_map(|c| match *c {
            ReadChunk::Data { offset, length } => Some((offset, offset + length)),
            ReadChunk::Hole { .. } => None,
        });
        let span = data.fold(None, |span: Option<(u64, u64)>, (start, end)| match span {
            None => Some((start, end)),
            Some((first, _)) => Some((first, end)),
        });
        if let Some((start, end)) = span {
            block.set_window((start - offset) as usize, (end - start) as usize);
            let (res, back) = self.file.read_exact_at(block, start).await;
            res?;
            block = back;
        }
        Ok((block, chunks))
    }

    /// The `base:allocation` extents of `[offset, offset + len)`: at most `max`, at least one.
    pub(crate) fn block_status(&self, offset: u64, len: u64, max: usize) -> Vec<Extent> {
        let unit = u64::from(self.limits.min_block);
        extents::block_status(offset, len, max, unit, |whence, at| self.seek(whence, at))
    }

    /// One `lseek(SEEK_DATA)` or `lseek(SEEK_HOLE)` on the file.
    fn seek(&self, whence: Seek, at: u64) -> Found {
        let Ok(at) = libc::off_t::try_from(at) else {
            return Found::Unknown;
        };
        let whence = match whence {
            Seek::Data => libc::SEEK_DATA,
            Seek::Hole => libc::SEEK_HOLE,
        };
        // SAFETY: lseek on a descriptor this export owns (kept open by `map`); it touches no memory.
        let found = unsafe { libc::lseek(self.map.as_raw_fd(), at, whence) };
        match u64::try_from(found) {
            Ok(found) => Found::At(found),
            Err(_) if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) => {
                Found::NoMore
            }
            Err(_) => Found::Unknown,
        }
    }

    /// `NBD_CMD_CACHE`: asks the kernel to read `[offset, offset + len)` into the page cache
    /// (`posix_fadvise(WILLNEED)`, on the blocking pool). With O_DIRECT the page cache is not used, so
    /// there is nothing to do.
    pub(crate) async fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.align > 1 || len == 0 {
            return Ok(());
        }
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        let map = Arc::clone(&self.map);
        let advised = aioctx::spawn_blocking(move || {
            // SAFETY: posix_fadvise on a descriptor `map` keeps open; it touches no memory.
            unsafe { libc::posix_fadvise(map.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED) }
        });
        match advised.await {
            Ok(0) => Ok(()),
            Ok(e) => Err(io::Error::from_raw_os_error(e)),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }

    /// Writes `block` at `offset`; with `fua`, the data is stable before this returns.
    pub(crate) async fn write(&self, mut block: Block, offset: u64, fua: bool) -> io::Result<()> {
        if !fua {
            return self.file.write_all_at(block, offset).await.0;
        }
        // write_at_fua may write less; continue from where it stopped.
        let total = block.pos + block.len_from_pos();
        let base = block.pos;
        while block.pos < total {
            let at = offset + (block.pos - base) as u64;
            let (res, back) = self.file.write_at_fua(block, at).await;
            block = back;
            match res? {
                0 => return Err(io::Error::from_raw_os_error(libc::ENOSPC)),
                n => block.pos += n,
            }
        }
        Ok(())
    }

    /// Makes the range read as zeroes without deallocating it (so `NO_HOLE` always holds), with
    /// `FALLOC_FL_ZERO_RANGE`, or by writing zero buffers where the file system cannot.
    ///
    /// With `fast` (`NBD_CMD_FLAG_FAST_ZERO`) nothing slow is tried: where `ZERO_RANGE` is refused, or
    /// on a block device (where it may write zeroes itself), a hole is punched if `may_punch` (no
    /// `NO_HOLE`), else the request fails with `ENOTSUP` and the range is left as it was.
    pub(crate) async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        fast: bool,
        may_punch: bool,
    ) -> io::Result<()> {
        if len == 0 {
            return self.sync_if(fua).await;
        }
        let zeroed = if fast && self.block_device {
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        } else {
            self.file.write_zeroes(offset, len).await
        };
        match zeroed {
            Err(e) if unsupported(&e) && fast && may_punch => {
                match self.file.discard(offset, len).await {
                    Err(e) if unsupported(&e) => return Err(not_supported()),
                    other => other?,
                }
            }
            Err(e) if unsupported(&e) && fast => return Err(not_supported()),
            Err(e) if unsupported(&e) => self.write_zero_buffers(offset, len).await?,
            other => other?,
        }
        self.sync_if(fua).await
    }

    /// Fallback for file systems without `FALLOC_FL_ZERO_RANGE`: writes zero buffers of bounded size.
    async fn write_zero_buffers(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut done = 0;
        let mut zeroes = Block::new(len.min(ZERO_CHUNK) as usize, 0, self.align);
        while done < len {
            let chunk = (len - done).min(ZERO_CHUNK) as usize;
            zeroes.truncate(chunk);
            let (res, back) = self.file.write_all_at(zeroes, offset + done).await;
            zeroes = back;
            res?;
            done += chunk as u64;
        }
        Ok(())
    }

    /// Discards the range; a file system that cannot is allowed to ignore the hint.
    pub(crate) async fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        if len == 0 {
            return self.sync_if(fua).await;
        }
        match self.file.discard(offset, len).await {
            Err(e) if unsupported(&e) => {}
            other => other?,
        }
        self.sync_if(fua).await
    }

    /// Makes every completed write stable.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        self.file.sync_data().await
    }

    async fn sync_if(&self, fua: bool) -> io::Result<()> {
        if fua {
            self.flush().await
        } else {
            Ok(())
        }
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS))
}

/// `ENOTSUP`, the answer to a `FAST_ZERO` that would be slow.
fn not_supported() -> io::Error {
    io::Error::from_raw_os_error(libc::EOPNOTSUPP)
}
