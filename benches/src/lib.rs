//! Benchmarks of aioctx: criterion micro-benchmarks of the loop's hot paths (`cargo bench -p benches`),
//! and, once the executor lands, the side-by-side comparison with tokio (`--bin compare`).
pub mod device_model;
