//! The virtio-blk device model (`examples::virtio_blk`) on aioctx against the same device written on
//! tokio (`benches::device_model`): one guest driver, workload (4 KiB randrw, reads verified) and
//! disk for both; aioctx runs an IOThread with its defaults, tokio a current-thread runtime.
//!
//! The device is written for these two runtimes only: compio, monoio, smol and glommio show `null`.
//! Besides IOPS, each row reports the device side's CPU per request: the process's CPU time minus
//! the guest driver's thread (the caller), over the whole run.

use std::io;

use crate::cpu;
use crate::harness::{cannot_express, Config, Metric, Scenario, Side, Table};

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "device_model_qd1",
        table: Table::Peers,
        metrics: &[
            Metric::higher("virtio-blk 4 KiB randrw, guest qd1", "IOPS"),
            Metric::lower("device CPU per request, qd1", "us"),
        ],
        run: |side, config| run(side, config, 1),
    },
    Scenario {
        name: "device_model_qd32",
        table: Table::Peers,
        metrics: &[
            Metric::higher("virtio-blk 4 KiB randrw, guest qd32", "IOPS"),
            Metric::lower("device CPU per request, qd32", "us"),
        ],
        run: |side, config| run(side, config, 32),
    },
];

fn run(side: Side, config: &Config, iodepth: usize) -> io::Result<Vec<f64>> {
    let disk = config.scratch.join("virtio-blk.img");
    let window = config.window();
    let meter = cpu::OthersMeter::start()?;
    let result = match side {
        Side::Aioctx => examples::virtio_blk::bench::aioctx_compare_run(iodepth, window, &disk)?,
        Side::Tokio => benches::device_model::tokio_compare_run(iodepth, window, &disk)?,
        _ => {
            return Err(cannot_express(
                "the virtio-blk device model is written for aioctx and tokio only",
            ))
        }
    };
    let device_cpu = meter.others()?;
    Ok(vec![result.iops(), cpu::us_per(device_cpu, result.ios)])
}
