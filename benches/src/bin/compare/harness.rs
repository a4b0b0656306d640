//! Scenario definitions and the alternating A/B round runner.
//!
//! Every scenario is one function that runs any side on demand, so every runtime gets the same
//! workload, client, channels and payloads. Rounds take the runtimes in turn (aioctx, tokio, compio,
//! monoio, smol, glommio, then again) so slow drifts of a shared machine (other tenants, frequency
//! changes) hit every side alike; the report takes the median over rounds and keeps the min-max.

use std::io;
use std::time::Duration;

/// Which runtime a scenario run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Side {
    Aioctx,
    Tokio,
    Compio,
    Monoio,
    Smol,
    Glommio,
}

impl Side {
    /// Every runtime of the main table, aioctx first.
    pub const ALL: [Side; 6] = [
        Side::Aioctx,
        Side::Tokio,
        Side::Compio,
        Side::Monoio,
        Side::Smol,
        Side::Glommio,
    ];

    /// The runtimes aioctx is compared with.
    pub const PEERS: [Side; 5] = [
        Side::Tokio,
        Side::Compio,
        Side::Monoio,
        Side::Smol,
        Side::Glommio,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Side::Aioctx => "aioctx",
            Side::Tokio => "tokio",
            Side::Compio => "compio",
            Side::Monoio => "monoio",
            Side::Smol => "smol",
            Side::Glommio => "glommio",
        }
    }
}

/// The error a scenario returns for a runtime that cannot express it: the row shows `null` for
/// that runtime, with `reason` under the table.
pub fn cannot_express(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, reason.to_string())
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
    /// Run these sides only (to profile one runtime with perf or strace, or to compare two).
    pub only: Option<Vec<Side>>,
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

/// Which table a scenario belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// aioctx against every peer of [`Side::PEERS`].
    Peers,
    /// Two ways of running aioctx (the glib rows): `run` is called with `Side::Aioctx` for the
    /// first, named A, and `Side::Tokio` for the second, named B.
    Versus([&'static str; 2]),
}

impl Table {
    /// The sides `measure` runs, in the order of every round.
    fn sides(self) -> &'static [Side] {
        match self {
            Table::Peers => &Side::ALL,
            Table::Versus(_) => &[Side::Aioctx, Side::Tokio],
        }
    }
}

/// A named workload with its metrics; `run` returns one value per metric, in order, or an error
/// made by [`cannot_express`] for a runtime that has no way to run it.
pub struct Scenario {
    pub name: &'static str,
    pub table: Table,
    pub metrics: &'static [Metric],
    pub run: fn(Side, &Config) -> io::Result<Vec<f64>>,
}

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

/// One report row: a metric of a scenario with the samples of every side that ran it.
#[derive(Debug)]
pub struct Row {
    pub scenario: &'static str,
    pub table: Table,
    pub metric: Metric,
    /// The samples of each side that ran, in [`Side`] order.
    pub samples: Vec<(Side, Samples)>,
    /// The sides that cannot express the scenario, with why.
    pub not_expressible: Vec<(Side, String)>,
}

impl Row {
    pub fn samples(&self, side: Side) -> Option<&Samples> {
        self.samples
            .iter()
            .find(|(s, _)| *s == side)
            .map(|(_, samples)| samples)
    }

    /// The median of `side`, if it ran.
    pub fn median(&self, side: Side) -> Option<f64> {
        self.samples(side).map(Samples::median)
    }

    /// aioctx against `peer`; above 1 means aioctx is better: peer / aioctx for times,
    /// aioctx / peer for rates. `None` when either did not run.
    pub fn speedup(&self, peer: Side) -> Option<f64> {
        let (a, p) = (self.median(Side::Aioctx)?, self.median(peer)?);
        Some(match self.metric.better {
            Better::Lower => p / a,
            Better::Higher => a / p,
        })
    }
}

/// Runs `scenario` for `rounds` measured rounds after one warm-up round per side; the sides take
/// turns within every round. A side whose warm-up says it cannot express the scenario is left out.
pub fn measure(scenario: &Scenario, config: &Config, rounds: usize) -> io::Result<Vec<Row>> {
    let mut not_expressible = Vec::new();
    let mut sides = Vec::new();
    for &side in scenario.table.sides() {
        if config
            .only
            .as_ref()
            .is_some_and(|only| !only.contains(&side))
        {
            continue;
        }
        match (scenario.run)(side, config) {
            Ok(_) => sides.push(side),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                not_expressible.push((side, e.to_string()))
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", side.name()))),
        }
    }
    let mut rows: Vec<Row> = scenario
        .metrics
        .iter()
        .map(|&metric| Row {
            scenario: scenario.name,
            table: scenario.table,
            metric,
            samples: sides.iter().map(|&s| (s, Samples::default())).collect(),
            not_expressible: not_expressible.clone(),
        })
        .collect();
    for _ in 0..rounds {
        for (index, &side) in sides.iter().enumerate() {
            let values = (scenario.run)(side, config)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", side.name())))?;
            if values.len() != rows.len() {
                return Err(io::Error::other(format!(
                    "{} returned {} values for {} metrics",
                    scenario.name,
                    values.len(),
                    rows.len()
                )));
            }
            for (row, value) in rows.iter_mut().zip(values) {
                row.samples[index].1 .0.push(value);
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

    thread_local! {
        static CALLS: std::cell::RefCell<Vec<Side>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// A scenario glommio cannot express; every other side reports its position in `Side::ALL`.
    fn fake_run(side: Side, _: &Config) -> io::Result<Vec<f64>> {
        CALLS.with(|calls| calls.borrow_mut().push(side));
        match side {
            Side::Glommio => Err(cannot_express("no way")),
            side => Ok(vec![
                Side::ALL.iter().position(|&s| s == side).unwrap() as f64
            ]),
        }
    }

    #[test]
    fn rounds_take_turns_and_inexpressible_sides_become_null() {
        const FAKE: Scenario = Scenario {
            name: "fake",
            table: Table::Peers,
            metrics: &[Metric::lower("m", "u")],
            run: fake_run,
        };
        let config = Config {
            quick: true,
            scratch: std::env::temp_dir(),
            only: None,
        };
        let rows = measure(&FAKE, &config, 2).unwrap();
        let calls = CALLS.with(|calls| calls.take());
        // Warm-up: every side once (glommio says no); then two rounds of the five others in turn.
        let five = &Side::ALL[..5];
        let expected: Vec<Side> = Side::ALL.iter().chain(five).chain(five).copied().collect();
        assert_eq!(calls, expected);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.samples(Side::Monoio).unwrap().0, [3.0, 3.0]);
        assert_eq!(row.median(Side::Glommio), None);
        assert_eq!(row.not_expressible, [(Side::Glommio, "no way".to_string())]);
    }

    #[test]
    fn speedup_is_oriented_so_above_one_favours_aioctx() {
        let row = |better, a: f64, t: f64| Row {
            scenario: "x",
            table: Table::Peers,
            metric: Metric {
                name: "m",
                unit: "u",
                better,
            },
            samples: vec![
                (Side::Aioctx, Samples(vec![a])),
                (Side::Tokio, Samples(vec![t])),
            ],
            not_expressible: vec![(Side::Glommio, "why".into())],
        };
        assert_eq!(row(Better::Lower, 2.0, 6.0).speedup(Side::Tokio), Some(3.0));
        assert_eq!(
            row(Better::Higher, 6.0, 2.0).speedup(Side::Tokio),
            Some(3.0)
        );
        assert_eq!(row(Better::Higher, 6.0, 2.0).speedup(Side::Glommio), None);
    }
}
