//! `bench steering`: the steering policies side by side (keep-alive, new connections, one
//! stalled cell), and the XDP guard's cost per packet.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::measure::{Ctx, Load};
use super::results::{Family, Round};
use super::runner::{Probe, ScenarioDef, run_scenario};
use super::{BenchOpts, Server, mixed_bench_dir, scrape, series, start_portico_with};

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

/// Each round's spread of requests over the cells: the busiest cell's share of them (1/cells
/// when even, 1.0 when one cell took everything).
struct CellShare<'a> {
    admins: &'a [u16],
    cells: usize,
    before: Vec<f64>,
}

impl Probe for CellShare<'_> {
    fn before(&mut self, server: usize) -> anyhow::Result<()> {
        self.before = per_cell_requests(self.admins[server], self.cells)?;
        Ok(())
    }
    fn after(&mut self, server: usize, round: &mut Round) -> anyhow::Result<()> {
        let after = per_cell_requests(self.admins[server], self.cells)?;
        let d: Vec<f64> = after.iter().zip(&self.before).map(|(a, b)| a - b).collect();
        let (max, sum) = d
            .iter()
            .fold((0.0f64, 0.0), |(mx, s), v| (mx.max(*v), s + v));
        if sum > 0.0 {
            round.extra.insert("busiest cell share".into(), max / sum);
        }
        Ok(())
    }
}

pub(super) fn bench_steering(ctx: &Ctx, o: &BenchOpts) -> anyhow::Result<Family> {
    let workers = ctx.layout.workers;
    mixed_bench_dir(&ctx.scratch, ("stallapp.py", STALL_APP))?;
    let policies: [&'static str; 4] = ["kernel", "cpu", "hash", "least-loaded"];
    let mut servers: Vec<Server> = Vec::new();
    let mut admins = Vec::new();
    for p in policies {
        let (s, admin) = start_portico_with(
            ctx,
            &ctx.layout,
            p,
            &format!("[ebpf]\nsteering = \"{p}\""),
            "",
            "stallapp:app",
            true,
        )?;
        servers.push(s);
        admins.push(admin.expect("admin port"));
    }
    for (p, admin) in policies.iter().zip(&admins) {
        let m = scrape(*admin)?;
        let enabled = series(&m, "portico_ebpf_enabled");
        if *p != "kernel" && enabled != 1.0 {
            bail!("steering policy {p}: eBPF did not attach (run the bench as root)");
        }
    }
    let mut family = o.family(
        "steering",
        ctx,
        format!(
            "bench steering: one portico per policy, {} (steering needs several cells); the \
             stalled-cell scenario keeps 2 connections of the last cell in a 200 ms handler",
            ctx.layout.describe()
        ),
    );
    let refs: Vec<&Server> = servers.iter().collect();
    let scenarios: [(&str, &str, Load, usize); 3] = [
        (
            "keepalive",
            "uniform keep-alive (static 1 KiB)",
            Load::get("/static/1k.bin"),
            o.conns,
        ),
        (
            "new-conn",
            "new connection per request (static 1 KiB)",
            Load::get_close("/static/1k.bin"),
            o.conns,
        ),
        (
            "stalled",
            "one stalled cell (WSGI hello, new connections)",
            Load::get_close("/"),
            16,
        ),
    ];
    for (id, label, load, conns) in scenarios {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut stallers = Vec::new();
        if id == "stalled" && workers > 1 {
            for (s, admin) in servers.iter().zip(&admins) {
                stallers.extend(stall_cell(s.port, *admin, workers - 1, 2, stop.clone())?);
            }
        }
        let def = ScenarioDef {
            id,
            label,
            load,
            conns,
        };
        let mut probe = CellShare {
            admins: &admins,
            cells: workers,
            before: Vec::new(),
        };
        let sc = run_scenario(ctx, &family, &refs, &def, &mut probe);
        family.scenarios.push(sc);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in stallers {
            let _ = t.join();
        }
    }
    drop(servers);
    // The XDP guard's decisions and cost per packet (BPF_PROG_TEST_RUN, 1M runs each).
    let out = Command::new(ctx.root.join("target/release/portico"))
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
    for l in text.lines().filter(|l| l.starts_with("cost")) {
        println!("{l}");
        family
            .notes
            .push(format!("XDP guard (BPF_PROG_TEST_RUN): {l}"));
    }
    Ok(family)
}
