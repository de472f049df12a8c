//! `bench metrics`: the cost of the per-request metrics (Portico with and without them, same
//! layout), and the scrape time of many cells.

use std::time::{Duration, Instant};

use super::measure::{Ctx, Layout, Load, measure};
use super::results::Family;
use super::runner::run_rows;
use super::{BENCH_APP, BenchOpts, Server, median, mixed_bench_dir, scrape, start_portico_with};

/// Portico with static `/static/` + WSGI `/` in the scratch directory and `extra` TOML.
fn start(
    ctx: &Ctx,
    layout: &Layout,
    name: &'static str,
    extra: &str,
    admin: bool,
) -> anyhow::Result<(Server, Option<u16>)> {
    start_portico_with(
        ctx,
        layout,
        name,
        "[ebpf]\nmode = \"off\"",
        extra,
        "benchapp:app",
        admin,
    )
}

const SCENARIOS: [(&str, &str, Load); 2] = [
    ("static-1k", "static 1 KiB", Load::get("/static/1k.bin")),
    ("wsgi-hello", "WSGI hello", Load::get("/")),
];

pub(super) fn bench_metrics(ctx: &Ctx, o: &BenchOpts) -> anyhow::Result<Family> {
    mixed_bench_dir(&ctx.scratch, ("benchapp.py", BENCH_APP))?;
    let servers = [
        start(ctx, &ctx.layout, "metrics on", "", false)?.0,
        start(
            ctx,
            &ctx.layout,
            "metrics off",
            "[metrics]\nenabled = false",
            false,
        )?
        .0,
    ];
    let mut family = o.family(
        "metrics",
        ctx,
        format!(
            "bench metrics: portico with and without per-request metrics, {}; oha -c{}",
            ctx.layout.describe(),
            o.conns
        ),
    );
    let refs: Vec<&Server> = servers.iter().collect();
    run_rows(ctx, &mut family, &refs, &SCENARIOS, o.conns);
    drop(servers);

    // Scrape time with 64 cells' worth of series (the cells share every CPU here).
    let (big, admin) = start(ctx, &Layout::shared(64), "64 cells", "", true)?;
    let admin = admin.expect("admin port");
    for _ in 0..3 {
        measure(ctx, &big, Load::get("/static/1k.bin"), 64, 1)?;
        measure(ctx, &big, Load::get("/"), 64, 1)?;
    }
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        scrape(admin)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(50));
    }
    let max = times.iter().copied().fold(0.0, f64::max);
    let note = format!(
        "scrape of 64 cells: {:.2} ms median, {max:.2} ms max of 30",
        median(times)
    );
    println!("{note}");
    family.notes.push(note);
    Ok(family)
}
