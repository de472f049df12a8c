//! `bench steering`: the steering policies side by side (keep-alive, new connections, one
//! stalled cell), and the XDP guard's cost per packet.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{
    BenchOpts, finish_bench, median, mixed_bench_dir, scrape, series, start_portico_with, wrk,
};

/// The steering bench's app: `/sleep` holds its cell's Python thread for 200 ms.
const STALL_APP: &str = r#"import time
def app(environ, start_response):
    if environ['PATH_INFO'] == '/sleep':
        time.sleep(0.2)
    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', '5')])
    return [b'hello']
"#;

/// Requests answered by each cell so far.
fn per_cell_requests(admin: u16, cells: usize) -> anyhow::Result<Vec<f64>> {
    let m = scrape(admin)?;
    Ok((0..cells)
        .map(|i| {
            ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .iter()
                .map(|c| {
                    series(
                        &m,
                        &format!(
                            "portico_cell_requests_total{{cell=\"{i}\",status_class=\"{c}\"}}"
                        ),
                    )
                })
                .sum()
        })
        .collect())
}

/// Keeps `conns` keep-alive connections of cell `cell` busy with `/sleep` until `stop`.
fn stall_cell(
    port: u16,
    admin: u16,
    cell: usize,
    conns: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    use std::io::{Read as _, Write as _};
    let active = |m: &str| series(m, &format!("portico_connections_active{{cell=\"{cell}\"}}"));
    let mut found = Vec::new();
    let mut others = Vec::new();
    for _ in 0..200 {
        if found.len() == conns {
            break;
        }
        let before = active(&scrape(admin)?);
        let c = std::net::TcpStream::connect(("127.0.0.1", port))?;
        std::thread::sleep(Duration::from_millis(5));
        if active(&scrape(admin)?) > before {
            found.push(c);
        } else {
            others.push(c);
        }
    }
    drop(others);
    if found.len() < conns {
        bail!("could not open {conns} connections on cell {cell}");
    }
    Ok(found
        .into_iter()
        .map(|mut c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if c.write_all(b"GET /sleep HTTP/1.1\r\nHost: x\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                    let mut got = Vec::new();
                    while !got.ends_with(b"hello") {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                }
            })
        })
        .collect())
}

pub(super) fn bench_steering(root: &Path, o: BenchOpts) -> anyhow::Result<()> {
    let (secs, repeats, conns) = (o.secs, o.repeats, o.conns);
    let (workers, threads) = o.workers_and_threads();
    let dir = mixed_bench_dir(("stallapp.py", STALL_APP))?;
    let policies: [&'static str; 4] = ["kernel", "cpu", "hash", "least-loaded"];
    let mut servers = Vec::new();
    for p in policies {
        let (s, admin) = start_portico_with(
            root,
            &dir,
            p,
            &format!("[ebpf]\nsteering = \"{p}\""),
            "",
            "stallapp:app",
            workers,
            true,
        )?;
        servers.push((p, s, admin.expect("admin port")));
    }
    for (p, _, admin) in &servers {
        let m = scrape(*admin)?;
        let enabled = series(&m, "portico_ebpf_enabled");
        if *p != "kernel" && enabled != 1.0 {
            bail!("steering policy {p}: eBPF did not attach (run the bench as root)");
        }
    }
    println!(
        "bench steering: {workers} workers, wrk -t{threads}, {secs}s per run, {repeats} repeats (median)\n"
    );
    let mut table = String::from(
        "| scenario | policy | req/s | p99 ms | max/min cell share |\n|---|---|---:|---:|---:|\n",
    );
    let scenarios: [(&str, &str, bool, usize); 3] = [
        (
            "uniform keep-alive (static 1 KiB)",
            "/static/1k.bin",
            false,
            conns,
        ),
        (
            "new connection per request (static 1 KiB)",
            "/static/1k.bin",
            true,
            conns,
        ),
        (
            "one stalled cell (WSGI hello, new connections)",
            "/",
            true,
            16,
        ),
    ];
    for (label, path, close, c) in scenarios {
        for (p, s, admin) in &servers {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stallers = if path == "/" && workers > 1 {
                stall_cell(s.port, *admin, workers - 1, 2, stop.clone())?
            } else {
                Vec::new()
            };
            wrk(s.port, path, threads, c, 1, close)?;
            let (mut rps, mut p99, mut share) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..repeats {
                let before = per_cell_requests(*admin, workers)?;
                let sample = wrk(s.port, path, threads, c, secs, close)?;
                let after = per_cell_requests(*admin, workers)?;
                let d: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
                let (max, min) = d
                    .iter()
                    .fold((0.0f64, f64::MAX), |(mx, mn), v| (mx.max(*v), mn.min(*v)));
                rps.push(sample.rps);
                p99.push(sample.p99_ms);
                share.push(if min > 0.0 { max / min } else { f64::INFINITY });
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for t in stallers {
                let _ = t.join();
            }
            let line = format!(
                "| {label} | {p} | {:.0} | {:.2} | {:.2} |\n",
                median(rps),
                median(p99),
                median(share)
            );
            print!("{line}");
            table.push_str(&line);
        }
    }
    drop(servers);
    // The XDP guard's decisions and cost per packet (BPF_PROG_TEST_RUN, 1M runs each).
    let out = Command::new(root.join("target/release/portico"))
        .args(["xdp-test-run", "--repeat", "1000000"])
        .output()
        .context("portico xdp-test-run")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "portico xdp-test-run failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    table.push_str("\nXDP guard (BPF_PROG_TEST_RUN):\n\n```\n");
    for l in text.lines().filter(|l| l.starts_with("cost")) {
        println!("{l}");
        table.push_str(l);
        table.push('\n');
    }
    table.push_str("```\n");
    finish_bench(root, &dir, "steering", &table)
}
