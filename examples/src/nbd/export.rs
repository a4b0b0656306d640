//! The exported file: what the handshake advertises and the block operations requests run on it,
//! through `aioctx::fs::File` on the ring of the IOThread that serves the connection.

use std::io;

use aioctx::fs::{AlignedBuf, File, IoBuf, IoBufMut};

use super::proto::{self, tflags, ExportLimits, SIMPLE_REPLY_LEN};

/// The buffer alignment for `O_DIRECT` (a page: enough for any logical block size).
const DIRECT_ALIGN: usize = 4096;
/// The biggest zero buffer written when the file system cannot zero a range by itself.
const ZERO_CHUNK: u64 = 1024 * 1024;

/// One export: a file, its name and what clients may do with it.
#[derive(Debug)]
pub(crate) struct Export {
    pub(crate) name: String,
    pub(crate) file: File,
    pub(crate) limits: ExportLimits,
    /// Buffers handed to the file must be aligned to this (O_DIRECT) or may be anywhere (1).
    align: usize,
}

impl Export {
    pub(crate) fn new(name: String, file: File, size: u64, read_only: bool, direct: bool) -> Self {
        Export {
            name,
            file,
            limits: ExportLimits {
                size,
                read_only,
                min_block: if direct { 512 } else { 1 },
            },
            align: if direct { DIRECT_ALIGN } else { 1 },
        }
    }

    /// Whether a client asking for `name` gets this export (the empty name means the default export).
    pub(crate) fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }

    /// The transmission flags of the export.
    pub(crate) fn transmission_flags(&self) -> u16 {
        // All connections share one file, and FLUSH is an fdatasync of it, so a flush on one connection
        // covers writes completed on any other: multi-conn is safe.
        let common = tflags::HAS_FLAGS | tflags::SEND_FLUSH | tflags::CAN_MULTI_CONN;
        if self.limits.read_only {
            common | tflags::READ_ONLY
        } else {
            common | tflags::SEND_FUA | tflags::SEND_TRIM | tflags::SEND_WRITE_ZEROES
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

    /// Reads `len` bytes at `offset` into a block that has room for the reply header in front.
    pub(crate) async fn read(&self, offset: u64, len: usize) -> io::Result<Block> {
        // The header goes right before the data; with O_DIRECT the data starts on an aligned address.
        let headroom = SIMPLE_REPLY_LEN.max(self.align);
        let block = Block::new(len, headroom, self.align);
        let (res, block) = self.file.read_exact_at(block, offset).await;
        res.map(|()| block)
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

    /// Makes the range read as zeroes without deallocating it (so `NO_HOLE` always holds).
    pub(crate) async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        if len == 0 {
            return self.sync_if(fua).await;
        }
        match self.file.write_zeroes(offset, len).await {
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

/// A heap block of data with optional headroom in front of it. The file reads into and writes from
/// the bytes from `pos` on; a read reply writes its header into the headroom and goes out in one
/// socket write. With O_DIRECT the data is page-aligned.
#[derive(Debug)]
pub(crate) struct Block {
    buf: AlignedBuf,
    /// Where the data starts (the headroom's length).
    headroom: usize,
    /// Where the next file transfer starts (>= headroom, <= end).
    pos: usize,
    /// The end of the data (<= buf.len()).
    end: usize,
}

impl Block {
    pub(crate) fn new(len: usize, headroom: usize, align: usize) -> Block {
        let buf = AlignedBuf::new(headroom + len, align.max(8));
        Block {
            buf,
            headroom,
            pos: headroom,
            end: headroom + len,
        }
    }

    fn len_from_pos(&self) -> usize {
        self.end - self.pos
    }

    fn truncate(&mut self, len: usize) {
        self.pos = self.headroom;
        self.end = (self.headroom + len).min(self.buf.len());
    }

    /// The data, for filling from the socket.
    pub(crate) fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.headroom..self.end]
    }

    /// Writes `header` right before the data and returns header and data as one slice.
    pub(crate) fn with_header(&mut self, header: &[u8]) -> &[u8] {
        let start = self.headroom - header.len();
        self.buf[start..self.headroom].copy_from_slice(header);
        &self.buf[start..self.end]
    }
}

// SAFETY: the bytes handed out live in the AlignedBuf's heap allocation, which never moves while the
// Block is moved and is freed only when the Block is dropped; `pos <= end <= buf.len()` keeps the range
// inside the allocation, and all of it is initialised (AlignedBuf zeroes on allocation).
unsafe impl IoBuf for Block {
    fn stable_ptr(&self) -> *const u8 {
        self.buf[self.pos..].as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len_from_pos()
    }
}

// SAFETY: as for IoBuf; the range from `pos` to `end` is writable memory of the allocation.
unsafe impl IoBufMut for Block {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.buf[self.pos..].as_mut_ptr()
    }

    fn bytes_total(&self) -> usize {
        self.len_from_pos()
    }

    unsafe fn set_init(&mut self, _n: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_block_has_header_right_before_aligned_data() {
        let mut block = Block::new(4096, DIRECT_ALIGN, DIRECT_ALIGN);
        assert_eq!(block.stable_ptr() as usize % DIRECT_ALIGN, 0);
        assert_eq!(block.bytes_total(), 4096);
        block.data_mut().fill(0xab);
        let out = block.with_header(&[1; SIMPLE_REPLY_LEN]);
        assert_eq!(out.len(), SIMPLE_REPLY_LEN + 4096);
        assert_eq!(&out[..SIMPLE_REPLY_LEN], &[1; SIMPLE_REPLY_LEN]);
        assert!(out[SIMPLE_REPLY_LEN..].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn truncated_block_exposes_only_its_length() {
        let mut block = Block::new(100, 0, 1);
        block.truncate(10);
        assert_eq!(block.bytes_init(), 10);
        assert_eq!(block.data_mut().len(), 10);
    }
}
