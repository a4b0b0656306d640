//! What the device offers: its virtio and vhost-user features and its configuration space
//! (`struct virtio_blk_config`, which the front end reads with `GET_CONFIG`).

use std::mem::offset_of;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_blk::{self as blk, virtio_blk_config};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::virtio_blk::{Limits, SECTOR_SIZE};

/// The longest configuration-space read the device answers (vhost-user's `VHOST_USER_MAX_CONFIG_SIZE`).
pub const MAX_CONFIG_SIZE: u32 = 256;

/// The device's virtio features: VERSION_1, EVENT_IDX, INDIRECT_DESC, SEG_MAX, BLK_SIZE, FLUSH,
/// DISCARD, WRITE_ZEROES, MQ, and RO for a read-only export; plus vhost-user's PROTOCOL_FEATURES.
pub fn virtio_features(read_only: bool) -> u64 {
    let mut bits = [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        blk::VIRTIO_BLK_F_SEG_MAX,
        blk::VIRTIO_BLK_F_BLK_SIZE,
        blk::VIRTIO_BLK_F_FLUSH,
        blk::VIRTIO_BLK_F_DISCARD,
        blk::VIRTIO_BLK_F_WRITE_ZEROES,
        blk::VIRTIO_BLK_F_MQ,
    ]
    .iter()
    .fold(0u64, |acc, bit| acc | 1 << bit);
    if read_only {
        bits |= 1 << blk::VIRTIO_BLK_F_RO;
    }
    bits | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// The vhost-user protocol features: CONFIG (GET_CONFIG), MQ (GET_QUEUE_NUM) and REPLY_ACK.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
}

/// The configuration space, little-endian as VERSION_1 requires: capacity in sectors, `seg_max`,
/// a 512-byte block size, `num_queues`, and the discard and write-zeroes limits the request parser
/// enforces.
pub fn config_space(limits: &Limits, num_queues: u16) -> Vec<u8> {
    let mut space = vec![0u8; std::mem::size_of::<virtio_blk_config>()];
    let mut put = |at: usize, bytes: &[u8]| space[at..at + bytes.len()].copy_from_slice(bytes);
    let sectors = |bytes: u64| u32::try_from(bytes / SECTOR_SIZE).unwrap_or(u32::MAX);
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    put(
        offset_of!(virtio_blk_config, capacity),
        &(limits.capacity / SECTOR_SIZE).to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, seg_max),
        &count(limits.max_segments).to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, blk_size),
        &(SECTOR_SIZE as u32).to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, num_queues),
        &num_queues.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, max_discard_sectors),
        &sectors(limits.max_range_bytes).to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, max_discard_seg),
        &count(limits.max_ranges).to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, discard_sector_alignment),
        &1u32.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, max_write_zeroes_sectors),
        &sectors(limits.max_range_bytes).to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, max_write_zeroes_seg),
        &count(limits.max_ranges).to_le_bytes(),
    );
    put(offset_of!(virtio_blk_config, write_zeroes_may_unmap), &[1]);
    space
}

/// `size` bytes of `space` from `offset`, as `GET_CONFIG` answers: bytes past the structure read as
/// zero (a front end may ask for the longest layout it knows). `None` when the window is outside
/// [`MAX_CONFIG_SIZE`].
pub fn config_window(space: &[u8], offset: u32, size: u32) -> Option<Vec<u8>> {
    let end = offset.checked_add(size)?;
    if end > MAX_CONFIG_SIZE {
        return None;
    }
    let mut out = vec![0u8; size as usize];
    let (offset, end) = (offset as usize, end as usize);
    if offset < space.len() {
        let n = end.min(space.len()) - offset;
        out[..n].copy_from_slice(&space[offset..offset + n]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_carries_the_limits_little_endian() {
        let limits = Limits::for_capacity(1 << 30);
        let space = config_space(&limits, 4);
        let le64 = |at: usize| u64::from_le_bytes(space[at..at + 8].try_into().unwrap());
        let le32 = |at: usize| u32::from_le_bytes(space[at..at + 4].try_into().unwrap());
        assert_eq!(le64(0), (1 << 30) / 512, "capacity in sectors");
        assert_eq!(le32(12), 128, "seg_max");
        assert_eq!(le32(20), 512, "blk_size");
        assert_eq!(u16::from_le_bytes([space[34], space[35]]), 4, "num_queues");
        assert_eq!(le32(36), (32 << 20) / 512, "max_discard_sectors");
        assert_eq!(le32(40), 8, "max_discard_seg");
        assert_eq!(le32(48), (32 << 20) / 512, "max_write_zeroes_sectors");
        assert_eq!(space[56], 1, "write_zeroes_may_unmap");
    }

    #[test]
    fn windows_pad_with_zeroes_and_stop_at_the_protocol_limit() {
        let space = vec![7u8; 60];
        assert_eq!(
            config_window(&space, 56, 8).unwrap(),
            [7, 7, 7, 7, 0, 0, 0, 0]
        );
        assert_eq!(config_window(&space, 100, 4).unwrap(), [0; 4]);
        assert!(config_window(&space, 250, 8).is_none());
        assert!(config_window(&space, u32::MAX, 2).is_none());
    }

    #[test]
    fn read_only_adds_ro_and_protocol_features_are_always_offered() {
        let rw = virtio_features(false);
        let ro = virtio_features(true);
        assert_eq!(ro & !rw, 1 << blk::VIRTIO_BLK_F_RO);
        assert_ne!(rw & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
        assert_ne!(rw & 1 << VIRTIO_F_VERSION_1, 0);
    }
}
