//! What the bench tools share: their runtime and the report the xtask reads
//! (`xtask/src/bench/parse.rs`).
#![forbid(unsafe_code)]

use anyhow::Context as _;

pub mod conn;

/// One current-thread tokio runtime: every tool here runs on one thread, pinned by the bench.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

/// Prints `<unit>: N`, `<unit>/s: R`, `errors: E` when given, and the p50 to p99.99 latencies
/// (`pXX_us`) of `lat_us`, which must not be empty.
pub fn print_report(unit: &str, lat_us: &mut [u32], secs: f64, errors: Option<usize>) {
    lat_us.sort_unstable();
    let pct = |p: f64| lat_us[((lat_us.len() - 1) as f64 * p).round() as usize];
    println!("{unit}: {}", lat_us.len());
    println!("{unit}/s: {:.0}", lat_us.len() as f64 / secs);
    if let Some(e) = errors {
        println!("errors: {e}");
    }
    for (name, p) in [
        ("p50", 0.50),
        ("p90", 0.90),
        ("p99", 0.99),
        ("p99.9", 0.999),
        ("p99.99", 0.9999),
    ] {
        println!("{name}_us: {}", pct(p));
    }
}
