//! Attribute macros for aioctx: `#[aioctx::main]` and `#[aioctx::test]`.
//!
//! They arrive with the executor (they need `block_on`); this crate exists now so the workspace layout
//! is the final one.
