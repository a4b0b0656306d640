//! Runnable programs that show aioctx at work. Run one with
//! `cargo run --release -p examples --example NAME`.

pub mod virtio_blk;
