//! The virtio-blk device model (`examples::virtio_blk`) on aioctx against the same device written on
//! tokio (`benches::device_model`): one guest driver, workload (4 KiB randrw, reads verified) and
//! disk for both; aioctx runs an IOThread with its defaults, tokio a current-thread runtime.

use std::io;

use crate::harness::{Config, Metric, Scenario, Side, VS_TOKIO};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "device_model_qd1",
        sides: VS_TOKIO,
        metrics: &[Metric::higher("virtio-blk 4 KiB randrw, guest qd1", "IOPS")],
        run: |side, config| run(side, config, 1),
    },
    Scenario {
        name: "device_model_qd32",
        sides: VS_TOKIO,
        metrics: &[Metric::higher(
            "virtio-blk 4 KiB randrw, guest qd32",
            "IOPS",
        )],
        run: |side, config| run(side, config, 32),
    },
];

fn run(side: Side, config: &Config, iodepth: usize) -> io::Result<Vec<f64>> {
    let disk = config.scratch.join("virtio-blk.img");
    let window = config.window();
    let iops = match side {
        Side::Aioctx => examples::virtio_blk::bench::aioctx_iops(iodepth, window, &disk)?,
        Side::Tokio => benches::device_model::tokio_iops(iodepth, window, &disk)?,
    };
    Ok(vec![iops])
}
