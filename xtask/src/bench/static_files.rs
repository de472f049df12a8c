//! `bench static`: static files, Portico against nginx with the same workers (per core by
//! default: one worker each on CPU 0, the load on the other CPUs).

use std::path::Path;

use super::measure::{Ctx, Load};
use super::results::Family;
use super::runner::{Row, run_rows};
use super::{BenchOpts, Server, free_port, spawn_server};

pub(super) fn start_portico(ctx: &Ctx, docroot: &Path) -> anyhow::Result<Server> {
    let port = free_port()?;
    let mut cmd = ctx.layout.server(ctx.root.join("target/release/portico"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", "off", "--access-log", "off"])
        .args(["--workers", &ctx.layout.workers.to_string(), "--static"])
        .arg(format!("/={}", docroot.display()));
    spawn_server("portico", cmd, port)
}

fn start_nginx(ctx: &Ctx, dir: &Path, docroot: &Path) -> anyhow::Result<Server> {
    super::start_nginx(ctx, dir, |port| {
        format!(
            "  sendfile on;\n  tcp_nopush on;\n\
             open_file_cache max=10000 inactive=60s;\n  open_file_cache_valid 60s;\n\
             types {{ application/octet-stream bin; text/plain txt; }}\n\
             server {{\n    listen 127.0.0.1:{port} reuseport;\n    root {root};\n  }}\n",
            root = docroot.display()
        )
    })
}

pub(super) const SCENARIOS: [Row; 4] = [
    ("1k", "1 KiB keep-alive", Load::get("/1k.bin")),
    ("64k", "64 KiB keep-alive", Load::get("/64k.bin")),
    ("1m", "1 MiB keep-alive", Load::get("/1m.bin")),
    (
        "1k-new-conn",
        "1 KiB new connection per request",
        Load::get_close("/1k.bin"),
    ),
];

/// The document root of the static scenarios, under `dir`.
pub(super) fn docroot(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let docroot = dir.join("www");
    std::fs::create_dir_all(&docroot)?;
    for (name, size) in [
        ("1k.bin", 1024usize),
        ("64k.bin", 64 * 1024),
        ("1m.bin", 1 << 20),
    ] {
        std::fs::write(docroot.join(name), vec![b'x'; size])?;
    }
    Ok(docroot)
}

pub(super) fn bench_static(ctx: &Ctx, o: &BenchOpts) -> anyhow::Result<Family> {
    let docroot = docroot(&ctx.scratch)?;
    let nginx_dir = ctx.scratch.join("nginx");
    std::fs::create_dir_all(&nginx_dir)?;
    let servers = [
        start_portico(ctx, &docroot)?,
        start_nginx(ctx, &nginx_dir, &docroot)?,
    ];
    let mut family = o.family(
        "static",
        ctx,
        format!(
            "bench static: portico and nginx (sendfile, open_file_cache), {}; oha -c{}",
            ctx.layout.describe(),
            o.conns
        ),
    );
    let refs: Vec<&Server> = servers.iter().collect();
    run_rows(ctx, &mut family, &refs, &SCENARIOS, o.conns);
    Ok(family)
}
