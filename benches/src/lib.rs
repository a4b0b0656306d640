//! Benchmarks of aioctx: criterion micro-benchmarks of the loop's hot paths (`cargo bench -p benches`)
//! and the side-by-side comparison with tokio (`cargo run --release -p benches --bin compare`). This
//! library holds the tokio counterparts of the examples that `compare` runs.
pub mod device_model;
