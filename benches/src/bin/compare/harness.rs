//! Scenario definitions and the alternating A/B round runner.
//!
//! Every scenario is one function that runs either side on demand, so both runtimes get the same
//! workload, client, channels and payloads. Rounds alternate aioctx and tokio (A B A B ...) so slow
//! drifts of a shared machine (other tenants, frequency changes) hit both sides alike; the report
//! takes the median over rounds and shows the min-max spread next to it.

use std::io;
use std::time::Duration;

/// Which runtime a scenario run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Side {
    Aioctx,
    Tokio,
}

/// Whether smaller or larger values of a metric are better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// One number a scenario reports per run.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub better: Better,
}

impl Metric {
    pub const fn lower(name: &'static str, unit: &'static str) -> Metric {
        Metric {
            name,
            unit,
            better: Better::Lower,
        }
    }

    pub const fn higher(name: &'static str, unit: &'static str) -> Metric {
        Metric {
            name,
            unit,
            better: Better::Higher,
        }
    }
}

/// Knobs every scenario reads: `quick` shrinks the work to prove the scenario runs (CI).
#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    /// Where scenarios that need a file put it (a fresh directory, removed at exit).
    pub scratch: std::path::PathBuf,
    /// Run one side only (for profiling one runtime with perf or strace).
    pub only: Option<Side>,
}

impl Config {
    /// `full` normally, `quick` under `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// Duration of a time-bounded measurement.
    pub fn window(&self) -> Duration {
        self.pick(Duration::from_millis(700), Duration::from_millis(50))
    }
}

/// A named workload with its metrics; `run` returns one value per metric, in order.
pub struct Scenario {
    pub name: &'static str,
    /// What each side runs: `Side::Aioctx` the first, `Side::Tokio` the second ([`VS_TOKIO`] for
    /// the aioctx-vs-tokio table; the glib rows compare two ways of running aioctx).
    pub sides: [&'static str; 2],
    pub metrics: &'static [Metric],
    pub run: fn(Side, &Config) -> io::Result<Vec<f64>>,
}

/// The sides of the main table.
pub const VS_TOKIO: [&str; 2] = ["aioctx", "tokio"];

/// All samples of one metric on one side.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn median(&self) -> f64 {
        percentile(&self.0, 50.0)
    }

    pub fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
}

/// One report row: a metric of a scenario with the samples of both sides.
#[derive(Debug)]
pub struct Row {
    pub scenario: &'static str,
    pub sides: [&'static str; 2],
    pub metric: Metric,
    pub aioctx: Samples,
    pub tokio: Samples,
}

impl Row {
    /// Above 1 means aioctx is better: tokio / aioctx for times, aioctx / tokio for rates.
    pub fn speedup(&self) -> f64 {
        let (a, t) = (self.aioctx.median(), self.tokio.median());
        match self.metric.better {
            Better::Lower => t / a,
            Better::Higher => a / t,
        }
    }
}

/// Runs `scenario` for `rounds` measured rounds after one warm-up round per side.
pub fn measure(scenario: &Scenario, config: &Config, rounds: usize) -> io::Result<Vec<Row>> {
    let mut rows: Vec<Row> = scenario
        .metrics
        .iter()
        .map(|&metric| Row {
            scenario: scenario.name,
            sides: scenario.sides,
            metric,
            aioctx: Samples::default(),
            tokio: Samples::default(),
        })
        .collect();
    let sides: Vec<Side> = [Side::Aioctx, Side::Tokio]
        .into_iter()
        .filter(|side| config.only.is_none_or(|only| only == *side))
        .collect();
    for &side in &sides {
        (scenario.run)(side, config)?;
    }
    for _ in 0..rounds {
        for &side in &sides {
            let values = (scenario.run)(side, config)?;
            if values.len() != rows.len() {
                return Err(io::Error::other(format!(
                    "{} returned {} values for {} metrics",
                    scenario.name,
                    values.len(),
                    rows.len()
                )));
            }
            for (row, value) in rows.iter_mut().zip(values) {
                match side {
                    Side::Aioctx => row.aioctx.0.push(value),
                    Side::Tokio => row.tokio.0.push(value),
                }
            }
        }
    }
    Ok(rows)
}

/// The `p`th percentile (nearest rank) of `values`; NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Nanoseconds per operation.
pub fn ns_per(elapsed: Duration, ops: u64) -> f64 {
    elapsed.as_nanos() as f64 / ops as f64
}

/// Operations per second.
pub fn per_second(ops: u64, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64()
}

/// A current-thread tokio runtime: the fair counterpart of one AioContext.
pub fn tokio_current_thread() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A bare aioctx context (QEMU's defaults for a context that is not an IOThread: polling off).
pub fn aioctx_context() -> io::Result<aioctx::AioContext> {
    aioctx::AioContext::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn speedup_is_oriented_so_above_one_favours_aioctx() {
        let row = |better, a: f64, t: f64| Row {
            scenario: "x",
            sides: VS_TOKIO,
            metric: Metric {
                name: "m",
                unit: "u",
                better,
            },
            aioctx: Samples(vec![a]),
            tokio: Samples(vec![t]),
        };
        assert_eq!(row(Better::Lower, 2.0, 6.0).speedup(), 3.0);
        assert_eq!(row(Better::Higher, 6.0, 2.0).speedup(), 3.0);
    }
}
