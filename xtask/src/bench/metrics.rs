//! `bench metrics`: the cost of the per-request metrics, and the scrape time of many cells.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{
    BENCH_APP, BenchOpts, Server, finish_bench, median, mixed_bench_dir, scrape,
    start_portico_with, wrk,
};

/// Starts portico with a config file in `dir` (static `/static/` + WSGI `/`) and `extra` TOML.
fn start_portico_cfg(
    root: &Path,
    dir: &Path,
    name: &'static str,
    extra: &str,
    workers: usize,
    admin: bool,
) -> anyhow::Result<(Server, Option<u16>)> {
    start_portico_with(
        root,
        dir,
        name,
        "[ebpf]\nmode = \"off\"",
        extra,
        "benchapp:app",
        workers,
        admin,
    )
}

pub(super) fn bench_metrics(root: &Path, o: BenchOpts) -> anyhow::Result<()> {
    let (secs, repeats, conns) = (o.secs, o.repeats, o.conns);
    let (workers, threads) = o.workers_and_threads();
    let dir = mixed_bench_dir(("benchapp.py", BENCH_APP))?;
    let servers = [
        start_portico_cfg(root, &dir, "metrics on", "", workers, false)?.0,
        start_portico_cfg(
            root,
            &dir,
            "metrics off",
            "[metrics]\nenabled = false",
            workers,
            false,
        )?
        .0,
    ];
    println!(
        "bench metrics: {workers} workers, wrk -t{threads} -c{conns} -d{secs}s, {repeats} interleaved repeats (median)\n"
    );
    let mut table = String::from(
        "| row | metrics on req/s | metrics off req/s | cost |\n|---|---:|---:|---:|\n",
    );
    for (label, path) in [("static 1 KiB", "/static/1k.bin"), ("WSGI hello", "/")] {
        for s in &servers {
            wrk(s.port, path, threads, conns, 1, false)?;
        }
        let mut samples: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..repeats {
            for (i, s) in servers.iter().enumerate() {
                samples[i].push(wrk(s.port, path, threads, conns, secs, false)?.rps);
            }
        }
        let (on, off) = (median(samples[0].clone()), median(samples[1].clone()));
        let line = format!(
            "| {label} | {on:.0} | {off:.0} | {:+.1}% |\n",
            (off - on) / off * 100.0
        );
        print!("{line}");
        table.push_str(&line);
    }
    drop(servers);

    // Scrape time with 64 cells' worth of series (cells share the CPUs here).
    let (big, admin) = start_portico_cfg(root, &dir, "64 cells", "", 64, true)?;
    let admin = admin.expect("admin port");
    for _ in 0..3 {
        wrk(big.port, "/static/1k.bin", threads, 64, 1, false)?;
        wrk(big.port, "/", threads, 64, 1, false)?;
    }
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        scrape(admin)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(50));
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    let line = format!(
        "| scrape of 64 cells (ms, median / max of 30) | {:.2} | {max:.2} | |\n",
        median(times)
    );
    print!("{line}");
    table.push_str(&line);
    drop(big);
    finish_bench(root, &dir, "metrics", &table)
}
