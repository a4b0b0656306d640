//! What the fuzz targets in `tests/fuzz` run, shared with their property-test twins in
//! `tests/tests/app_fuzz_properties.rs`: each function takes arbitrary bytes, feeds them to a parser of
//! untrusted input, and panics if the parser panics or breaks one of its documented promises. A fuzzer
//! explores the bytes; the property tests build structured inputs that reach the accepting paths.

pub mod nbd;
pub mod nbd_chunks;
pub mod vhost_user;
pub mod virtio_blk;

/// Reads a big-endian `u32` at `at` (the caller checked the length).
fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Reads a big-endian `u64` at `at` (the caller checked the length).
fn be64(bytes: &[u8], at: usize) -> u64 {
    (u64::from(be32(bytes, at)) << 32) | u64::from(be32(bytes, at + 4))
}
