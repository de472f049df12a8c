//! `cargo xtask soak [--minutes 10]`: the mixed load of the fault test (static, WSGI, ASGI,
//! proxy to gunicorn, WebSocket echo) at about half the capacity measured in a short burst,
//! for a while, sampling the resident memory and open descriptors of the master and the cells
//! every 10 s. Writes `target/soak/<timestamp>/soak.csv` and `soak.svg`, prints the numbers,
//! and fails unless memory after warm-up grew under 5%, descriptors stayed flat and no
//! request failed. Long by design: never part of `cargo xtask test`.
mod chart;

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use portico_tests::mixed::{MixedLoad, MixedSite, Options, procs};

use crate::process::output;
use crate::{compile, setup};

/// Time between samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The capacity burst: unpaced load for this long, after a short warm-up.
const BURST: Duration = Duration::from_secs(5);
/// Most memory growth after warm-up that passes.
const MAX_RSS_GROWTH: f64 = 0.05;

/// One sample of the processes and the load.
#[derive(Debug, Clone)]
pub struct Sample {
    pub t_secs: f64,
    pub master_rss_kib: u64,
    pub cells_rss_kib: u64,
    pub master_fds: usize,
    pub cells_fds: usize,
    pub cells: usize,
    pub requests: u64,
    pub failures: u64,
}

impl Sample {
    fn total_rss(&self) -> u64 {
        self.master_rss_kib + self.cells_rss_kib
    }
    fn total_fds(&self) -> usize {
        self.master_fds + self.cells_fds
    }
}

pub fn soak(root: &Path, minutes: f64) -> anyhow::Result<()> {
    if minutes <= 0.0 {
        bail!("--minutes must be positive");
    }
    let venv = setup::setup_venv(root, setup::TEST_PY)?;
    compile::build()?;
    let bin = root.join("target/release/portico");
    let stamp =
        output(Command::new("date").args(["-u", "+%Y%m%dT%H%M%SZ"])).context("reading the date")?;
    let dir = root.join("target/soak").join(stamp.trim());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let site = MixedSite::new(&venv, 2);
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let cfg = site.config(&Options {
        workers,
        ..Options::default()
    });
    let p = portico_tests::Portico::start_with(Command::new(&bin), &["-c", &cfg.to_string_lossy()]);
    let streams = site.streams(2);

    // Capacity: the same mix unpaced, after two seconds to warm the caches and pools.
    let burst = MixedLoad::start(p.addr, &streams, BURST * 3, None);
    std::thread::sleep(Duration::from_secs(2));
    let (t0, n0) = (Instant::now(), burst.tally().ok());
    std::thread::sleep(BURST);
    let capacity = (burst.tally().ok() - n0) as f64 / t0.elapsed().as_secs_f64();
    let (burst_tally, _) = burst.finish();
    if burst_tally.failures() > 0 {
        bail!(
            "the capacity burst had {} failures ({})",
            burst_tally.failures(),
            burst_tally.failure_kinds()
        );
    }
    let target = capacity / 2.0;
    println!(
        "soak: capacity {capacity:.0} req/s (mixed, {} clients); running {minutes} min at {target:.0} req/s",
        streams.len()
    );

    let total = Duration::from_secs_f64(minutes * 60.0);
    let load = MixedLoad::start(
        p.addr,
        &streams,
        total + Duration::from_secs(60),
        Some(target / streams.len() as f64),
    );
    let csv_path = dir.join("soak.csv");
    let mut csv = std::fs::File::create(&csv_path)
        .with_context(|| format!("creating {}", csv_path.display()))?;
    writeln!(
        csv,
        "t_s,master_rss_kib,cells_rss_kib,master_fds,cells_fds,cells,requests,failures"
    )?;
    let start = Instant::now();
    let mut samples = Vec::new();
    loop {
        let t = load.tally();
        let s = sample(
            &p,
            start.elapsed().as_secs_f64(),
            t.requests(),
            t.failures(),
        );
        writeln!(
            csv,
            "{:.1},{},{},{},{},{},{},{}",
            s.t_secs,
            s.master_rss_kib,
            s.cells_rss_kib,
            s.master_fds,
            s.cells_fds,
            s.cells,
            s.requests,
            s.failures
        )?;
        csv.flush()?;
        println!(
            "soak: {:>5.0} s  rss master {} KiB, cells {} KiB  fds {} + {}  requests {}  failures {}",
            s.t_secs,
            s.master_rss_kib,
            s.cells_rss_kib,
            s.master_fds,
            s.cells_fds,
            s.requests,
            s.failures
        );
        samples.push(s);
        if start.elapsed() >= total {
            break;
        }
        std::thread::sleep(SAMPLE_EVERY.min(total.saturating_sub(start.elapsed())));
    }
    let (tally, failures) = load.finish();
    for f in failures.iter().take(10) {
        eprintln!("soak: failure: {} {}: {}", f.stream, f.kind, f.detail);
    }
    let svg = dir.join("soak.svg");
    chart::draw(&svg, &samples).context("drawing the chart")?;
    let verdict = judge(&samples, total, streams.len(), tally.failures());
    println!(
        "soak: {} requests ({:.0}/s), {} failures{}",
        tally.requests(),
        tally.requests() as f64 / start.elapsed().as_secs_f64(),
        tally.failures(),
        if tally.failures() > 0 {
            format!(" ({})", tally.failure_kinds())
        } else {
            String::new()
        }
    );
    for line in &verdict.lines {
        println!("soak: {line}");
    }
    println!("soak: wrote {} and {}", csv_path.display(), svg.display());
    if !verdict.pass {
        bail!("soak failed: {}", verdict.lines.join("; "));
    }
    println!("soak: passed");
    Ok(())
}

fn sample(p: &portico_tests::Portico, t_secs: f64, requests: u64, failures: u64) -> Sample {
    let cells = p.cell_pids();
    Sample {
        t_secs,
        master_rss_kib: procs::rss_kib(p.pid()).unwrap_or(0),
        cells_rss_kib: cells.iter().filter_map(|&c| procs::rss_kib(c)).sum(),
        master_fds: procs::fd_count(p.pid()).unwrap_or(0),
        cells_fds: cells.iter().filter_map(|&c| procs::fd_count(c)).sum(),
        cells: cells.len(),
        requests,
        failures,
    }
}

/// The pass/fail lines of a run.
struct Verdict {
    pass: bool,
    lines: Vec<String>,
}

/// Warm-up is the first fifth of the run, at most a minute; the baseline is the first sample
/// after it. Memory: the last sample's total RSS against the baseline's, under 5%.
/// Descriptors: the last sample's total within the connections the load can hold (a client
/// connection and an upstream connection per client) of the baseline's. Errors: none.
fn judge(samples: &[Sample], total: Duration, clients: usize, failures: u64) -> Verdict {
    let warmup = (total / 5).min(Duration::from_secs(60)).as_secs_f64();
    let base = samples
        .iter()
        .find(|s| s.t_secs >= warmup)
        .or(samples.last());
    let (Some(base), Some(last)) = (base, samples.last()) else {
        return Verdict {
            pass: false,
            lines: vec!["no samples".into()],
        };
    };
    let growth = (last.total_rss() as f64 - base.total_rss() as f64) / base.total_rss() as f64;
    let fd_change = last.total_fds() as i64 - base.total_fds() as i64;
    let fd_slack = 2 * clients as i64;
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t_secs >= base.t_secs).collect();
    let fd_min = after.iter().map(|s| s.total_fds()).min().unwrap_or(0);
    let fd_max = after.iter().map(|s| s.total_fds()).max().unwrap_or(0);
    let rss_ok = growth < MAX_RSS_GROWTH;
    let fds_ok = fd_change.abs() <= fd_slack;
    let lines = vec![
        format!(
            "RSS after warm-up ({:.0} s): {} KiB -> {} KiB at {:.0} s ({:+.2}%, limit {:.0}%) {}",
            base.t_secs,
            base.total_rss(),
            last.total_rss(),
            last.t_secs,
            growth * 100.0,
            MAX_RSS_GROWTH * 100.0,
            if rss_ok { "ok" } else { "FAILED" }
        ),
        format!(
            "master RSS {} -> {} KiB, cells RSS {} -> {} KiB",
            base.master_rss_kib, last.master_rss_kib, base.cells_rss_kib, last.cells_rss_kib
        ),
        format!(
            "fds: {} -> {} ({fd_change:+}, range {fd_min}..{fd_max}, allowed +-{fd_slack}) {}",
            base.total_fds(),
            last.total_fds(),
            if fds_ok { "ok" } else { "FAILED" }
        ),
        format!(
            "errors: {failures} {}",
            if failures == 0 { "ok" } else { "FAILED" }
        ),
    ];
    Verdict {
        pass: rss_ok && fds_ok && failures == 0,
        lines,
    }
}
