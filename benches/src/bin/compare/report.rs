//! The comparison table, the targets summary and the JSON file.

use std::io;
use std::path::Path;

use crate::harness::{Better, Row, VS_TOKIO};

/// Formats a value with precision that suits its size.
fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 10_000.0 {
        format!("{v:.0}")
    } else if v >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The aioctx-vs-tokio table, then the table of rows that compare two ways of running aioctx.
pub fn print_table(rows: &[Row]) {
    let (vs_tokio, versus): (Vec<&Row>, Vec<&Row>) =
        rows.iter().partition(|row| row.sides == VS_TOKIO);
    if !vs_tokio.is_empty() {
        print_vs_tokio(&vs_tokio);
    }
    if !versus.is_empty() {
        print_versus(&versus);
    }
}

fn print_versus(rows: &[&Row]) {
    println!(
        "\nglib: what the compatibility path costs; both columns run aioctx, A and B named per row"
    );
    println!("(ratio = B/A for times: above 1 means B is slower or later than A)");
    println!(
        "{:<26} {:<36} {:>6} {:>12} {:>12} {:>8}   {:<30}",
        "scenario", "metric", "unit", "A", "B", "ratio", "A vs B"
    );
    for row in rows {
        println!(
            "{:<26} {:<36} {:>6} {:>12} {:>12} {:>7.2}x   {:<30}",
            row.scenario,
            row.metric.name,
            row.metric.unit,
            fmt_value(row.aioctx.median()),
            fmt_value(row.tokio.median()),
            row.speedup(),
            format!("{} vs {}", row.sides[0], row.sides[1]),
        );
    }
}

fn print_vs_tokio(rows: &[&Row]) {
    println!(
        "{:<26} {:<36} {:>6} {:>12} {:>12} {:>8}   {:<21} {:<21}",
        "scenario",
        "metric",
        "unit",
        "aioctx",
        "tokio",
        "speedup",
        "aioctx min-max",
        "tokio min-max"
    );
    for row in rows {
        let spread =
            |s: &crate::harness::Samples| format!("{}-{}", fmt_value(s.min()), fmt_value(s.max()));
        println!(
            "{:<26} {:<36} {:>6} {:>12} {:>12} {:>7.2}x   {:<21} {:<21}",
            row.scenario,
            row.metric.name,
            row.metric.unit,
            fmt_value(row.aioctx.median()),
            fmt_value(row.tokio.median()),
            row.speedup(),
            spread(&row.aioctx),
            spread(&row.tokio),
        );
    }
}

/// The goals of issue #7 on a 2-core machine: (scenario, metric prefix, minimum speedup).
const TARGETS: &[(&str, &str, f64)] = &[
    ("spawn_join", "", 1.5),
    ("yield_many", "", 1.5),
    ("cross_thread_wake", "p50 round trip, polling on", 10.0),
    ("timer_accuracy", "median", 50.0),
    ("tcp_echo", "", 1.2),
    ("file_randread_qd32", "", 3.0),
];

pub fn print_targets(rows: &[Row]) {
    println!("\ntargets (speedup, medians of this run):");
    for &(scenario, metric, goal) in TARGETS {
        let found = rows
            .iter()
            .find(|r| r.scenario == scenario && r.metric.name.starts_with(metric));
        if let Some(row) = found {
            let got = row.speedup();
            let verdict = if got >= goal { "met" } else { "MISSED" };
            println!("  {scenario:<20} >= {goal:>5.1}x   got {got:>7.2}x   {verdict}");
        }
    }
    // idle_fds is judged against aioctx itself: 10,000 idle fds may cost at most 1.2x of 10.
    let idle = |n: &str| {
        rows.iter()
            .find(|r| r.scenario == "idle_fds" && r.metric.name.contains(&format!(" {n} idle")))
            .map(|r| r.aioctx.median())
    };
    if let (Some(few), Some(many)) = (idle("10"), idle("10000")) {
        let ratio = many / few;
        let verdict = if ratio <= 1.2 { "met" } else { "MISSED" };
        println!("  idle_fds 10000 vs 10 <= 1.2x   got {ratio:>7.2}x   {verdict} (aioctx alone)");
    }
}

pub fn write_json(rows: &[Row], path: &Path) -> io::Result<()> {
    let scenarios: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "name": row.scenario,
                "metric": row.metric.name,
                "unit": row.metric.unit,
                "better": match row.metric.better { Better::Lower => "lower", Better::Higher => "higher" },
                "aioctx": row.aioctx.median(),
                "tokio": row.tokio.median(),
                "speedup": row.speedup(),
                "aioctx_min": row.aioctx.min(),
                "aioctx_max": row.aioctx.max(),
                "tokio_min": row.tokio.min(),
                "tokio_max": row.tokio.max(),
                "rounds": row.aioctx.0.len(),
                "sides": row.sides,
            })
        })
        .collect();
    let doc = serde_json::json!({ "scenarios": scenarios });
    std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
}
