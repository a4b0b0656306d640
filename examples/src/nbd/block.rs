//! [`Block`]: the buffer a request's data lives in, with room in front for the reply header so that a
//! read reply goes out in one socket write.

use aioctx::fs::{AlignedBuf, IoBuf, IoBufMut};

/// A heap block of data with optional headroom in front of it. The file reads into and writes from
/// the bytes of the current window (by default all the data); a read reply writes its header into the
/// headroom, or into bytes of the data that are not sent (a hole), right before the data it sends.
/// With O_DIRECT the data is page-aligned.
#[derive(Debug)]
pub(crate) struct Block {
    buf: AlignedBuf,
    /// Where the data starts (the headroom's length).
    headroom: usize,
    /// Where the next file transfer starts (>= headroom, <= end).
    pub(crate) pos: usize,
    /// Where file transfers stop (<= buf.len()).
    end: usize,
    /// The end of the data (<= buf.len()).
    data_end: usize,
}

impl Block {
    pub(crate) fn new(len: usize, headroom: usize, align: usize) -> Block {
        let buf = AlignedBuf::new(headroom + len, align.max(8));
        Block {
            buf,
            headroom,
            pos: headroom,
            end: headroom + len,
            data_end: headroom + len,
        }
    }

    /// Bytes of data.
    pub(crate) fn len(&self) -> usize {
        self.data_end - self.headroom
    }

    /// Bytes of the window left from the current position.
    pub(crate) fn len_from_pos(&self) -> usize {
        self.end - self.pos
    }

    /// Makes the data `len` bytes long (at most the capacity), the window all of it.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.pos = self.headroom;
        self.end = (self.headroom + len).min(self.buf.len());
        self.data_end = self.end;
    }

    /// Makes file transfers use the `len` bytes at `at` in the data (clamped to the data).
    pub(crate) fn set_window(&mut self, at: usize, len: usize) {
        self.pos = (self.headroom + at).min(self.data_end);
        self.end = (self.pos + len).min(self.data_end);
    }

    /// The data, for filling from the socket.
    pub(crate) fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.headroom..self.data_end]
    }

    /// Writes `header` right before the data and returns header and data as one slice.
    pub(crate) fn with_header(&mut self, header: &[u8]) -> &[u8] {
        let len = self.len();
        self.with_header_at(0, len, header).unwrap_or(&[])
    }

    /// Writes `header` right before the `len` data bytes at `at` (over the headroom, or over data bytes
    /// that are not sent) and returns header and those bytes as one slice; `None` if the header does not
    /// fit there or the range is not in the data.
    pub(crate) fn with_header_at(&mut self, at: usize, len: usize, header: &[u8]) -> Option<&[u8]> {
        let start = self.headroom.checked_add(at)?;
        let stop = start.checked_add(len).filter(|&s| s <= self.data_end)?;
        let front = start.checked_sub(header.len())?;
        self.buf[front..start].copy_from_slice(header);
        Some(&self.buf[front..stop])
    }

    /// `len` data bytes at `at` (empty if out of range).
    pub(crate) fn data(&self, at: usize, len: usize) -> &[u8] {
        let start = (self.headroom + at).min(self.data_end);
        let stop = (start + len).min(self.data_end);
        &self.buf[start..stop]
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

    const PAGE: usize = 4096;

    #[test]
    fn read_block_has_header_right_before_aligned_data() {
        let mut block = Block::new(4096, PAGE, PAGE);
        assert_eq!(block.stable_ptr() as usize % PAGE, 0);
        assert_eq!(block.bytes_total(), 4096);
        block.data_mut().fill(0xab);
        let out = block.with_header(&[1; 16]);
        assert_eq!(out.len(), 16 + 4096);
        assert_eq!(&out[..16], &[1; 16]);
        assert!(out[16..].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn truncated_block_exposes_only_its_length() {
        let mut block = Block::new(100, 0, 1);
        block.truncate(10);
        assert_eq!(block.bytes_init(), 10);
        assert_eq!(block.data_mut().len(), 10);
    }

    #[test]
    fn a_window_limits_transfers_and_headers_go_over_unsent_bytes() {
        let mut block = Block::new(8192, 16, 1);
        block.set_window(4096, 1024);
        assert_eq!(block.bytes_total(), 1024);
        block.set_window(8000, 1024);
        assert_eq!(block.bytes_total(), 192, "clamped to the data");
        block.data_mut()[4096..].fill(7);
        let out = block.with_header_at(4096, 100, &[9; 40]).unwrap();
        assert_eq!(&out[..40], &[9; 40]);
        assert_eq!(&out[40..], &[7; 100]);
        assert!(
            block.with_header_at(0, 10, &[9; 40]).is_none(),
            "headroom too short"
        );
        assert!(
            block.with_header_at(8190, 10, &[9; 4]).is_none(),
            "past the data"
        );
        assert_eq!(block.data(8190, 10).len(), 2);
    }
}
