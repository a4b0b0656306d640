//! Runnable programs that show aioctx at work. Run one with
//! `cargo run --release -p examples --example NAME`. Their reusable parts live here.

pub mod nbd;
pub mod qmp;
pub mod vhost_user_blk;
pub mod virtio_blk;
