//! `bench static`: static files, Portico against nginx with the same workers.

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

use super::{
    BenchOpts, Sample, Server, finish_bench, free_port, median, spawn_server, tempfile_dir, wrk,
};
use crate::process::which;

fn start_portico(root: &Path, docroot: &Path, workers: usize) -> anyhow::Result<Server> {
    let port = free_port()?;
    let mut cmd = Command::new(root.join("target/release/portico"));
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin",
        "off",
        "--access-log",
        "off",
    ])
    .args([
        "--workers",
        &workers.to_string(),
        "--static",
        &format!("/={}", docroot.display()),
    ]);
    spawn_server("portico", cmd, port)
}

fn start_nginx(dir: &Path, docroot: &Path, workers: usize) -> anyhow::Result<Server> {
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes {workers};\nworker_cpu_affinity auto;\ndaemon off;\nmaster_process on;\n\
             pid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\nworker_rlimit_nofile 65536;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n\
               keepalive_requests 1000000;\n  keepalive_timeout 75s;\n\
               open_file_cache max=10000 inactive=60s;\n  open_file_cache_valid 60s;\n\
               types {{ application/octet-stream bin; text/plain txt; }}\n\
               server {{\n    listen 127.0.0.1:{port} reuseport;\n    root {root};\n  }}\n}}\n",
            dir = dir.display(),
            root = docroot.display()
        ),
    )?;
    let mut cmd = Command::new(which("nginx").context("nginx not installed")?);
    cmd.arg("-c").arg(&conf).arg("-p").arg(dir);
    spawn_server("nginx", cmd, port)
}

pub(super) fn bench_static(root: &Path, o: BenchOpts) -> anyhow::Result<()> {
    let (secs, repeats, conns) = (o.secs, o.repeats, o.conns);
    let (workers, threads) = o.workers_and_threads();
    let dir = tempfile_dir()?;
    let docroot = dir.join("www");
    std::fs::create_dir_all(&docroot)?;
    for (name, size) in [
        ("1k.bin", 1024usize),
        ("64k.bin", 64 * 1024),
        ("1m.bin", 1 << 20),
    ] {
        std::fs::write(docroot.join(name), vec![b'x'; size])?;
    }
    let nginx_dir = dir.join("nginx");
    std::fs::create_dir_all(&nginx_dir)?;
    let servers = [
        start_portico(root, &docroot, workers)?,
        start_nginx(&nginx_dir, &docroot, workers)?,
    ];
    let rows: [(&str, &str, bool); 4] = [
        ("1 KiB keep-alive", "/1k.bin", false),
        ("64 KiB keep-alive", "/64k.bin", false),
        ("1 MiB keep-alive", "/1m.bin", false),
        ("1 KiB new connection per request", "/1k.bin", true),
    ];
    println!(
        "bench static: {workers} workers each, wrk -t{threads} -c{conns} -d{secs}s, {repeats} interleaved repeats (median), same machine\n"
    );
    let mut table = String::from(
        "| row | portico req/s | nginx req/s | ratio | portico p50 / p99 (ms) | nginx p50 / p99 (ms) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for (label, path, close) in rows {
        // Warm both (file caches, page cache).
        for s in &servers {
            wrk(s.port, path, threads, conns, 1, close)?;
        }
        let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..repeats {
            for (i, s) in servers.iter().enumerate() {
                samples[i].push(wrk(s.port, path, threads, conns, secs, close)?);
            }
        }
        let med = |i: usize| Sample {
            rps: median(samples[i].iter().map(|s| s.rps).collect()),
            p50_ms: median(samples[i].iter().map(|s| s.p50_ms).collect()),
            p99_ms: median(samples[i].iter().map(|s| s.p99_ms).collect()),
        };
        let (p, n) = (med(0), med(1));
        let line = format!(
            "| {label} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |\n",
            p.rps,
            n.rps,
            p.rps / n.rps,
            p.p50_ms,
            p.p99_ms,
            n.p50_ms,
            n.p99_ms
        );
        print!("{line}");
        table.push_str(&line);
    }
    eprintln!(
        "stopping {}",
        servers
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(servers);
    finish_bench(root, &dir, "static", &table)
}
