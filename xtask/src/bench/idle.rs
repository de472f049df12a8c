//! `bench idle`: what an idle keep-alive connection costs a server in memory, Portico against
//! nginx. N connections (10,000 and 100,000) each get one GET of 1 KiB and then idle; the
//! growth of the server's summed RSS over its state before them, divided by N, is the figure
//! (issue 15: at most 4 KiB). A process holds at most RLIMIT_NOFILE descriptors, so a count
//! beyond one worker's share runs on as many workers (and load processes) as it needs.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::measure::{Ctx, Layout, Usage, usage};
use super::results::{Family, Round, Scenario, ServerRuns};
use super::{BenchOpts, Server, free_port, portico_serve, spawn_server, start_nginx_with};

const SCENARIOS: [(&str, &str, usize); 2] = [
    ("10k", "10,000 idle keep-alive connections", 10_000),
    ("100k", "100,000 idle keep-alive connections", 100_000),
];

/// The figure issue 15's target judges, in each round's `extra`.
pub const PER_CONN: &str = "bytes per idle connection";

/// Descriptors kept back from each process's budget: listeners, files, pipes, the runtime.
const FD_SPARE: usize = 500;

const SERVERS: [&str; 2] = ["portico", "nginx"];

/// The hard RLIMIT_NOFILE of this process, which the servers and load processes inherit
/// (raising it needs CAP_SYS_RESOURCE).
fn nofile_hard() -> anyhow::Result<usize> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    parse_nofile_hard(&limits).context("no \"Max open files\" line in /proc/self/limits")
}

fn parse_nofile_hard(limits: &str) -> Option<usize> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    let hard = rest.split_whitespace().nth(1)?;
    Some(if hard == "unlimited" {
        1 << 20
    } else {
        hard.parse().ok()?
    })
}

/// Workers that hold `n` connections of `budget` each, with a tenth to spare for the uneven
/// spread of SO_REUSEPORT's hash; never fewer than asked for.
fn workers_for(n: usize, wanted: usize, budget: usize) -> usize {
    wanted.max(n.div_ceil((budget * 9 / 10).max(1)))
}

pub(super) fn bench_idle(ctx: &Ctx, o: &BenchOpts) -> anyhow::Result<Family> {
    let docroot = super::static_files::docroot(&ctx.scratch)?;
    let hard = nofile_hard()?;
    let budget = hard.saturating_sub(FD_SPARE).max(1000);
    let mut family = o.family(
        "idle",
        ctx,
        format!(
            "bench idle: portico and nginx, each connection served one GET /1k.bin and then held \
             idle (idle-load); memory per connection: the growth of the server processes' summed \
             RSS over their state before the connections, divided by them; a fresh server per \
             round; {}",
            ctx.layout.describe()
        ),
    );
    for (id, label, n) in SCENARIOS {
        let workers = workers_for(n, ctx.layout.workers, budget);
        let sctx = Ctx {
            layout: if workers == ctx.layout.workers {
                ctx.layout.clone()
            } else {
                Layout::new(workers)
            },
            ..ctx.clone()
        };
        if workers != ctx.layout.workers {
            family.notes.push(format!(
                "{label}: {workers} workers per server ({}), {budget} connections at most each: \
                 RLIMIT_NOFILE's hard limit is {hard} here",
                sctx.layout.describe()
            ));
        }
        let mut runs: Vec<ServerRuns> = SERVERS
            .iter()
            .map(|s| ServerRuns {
                server: (*s).to_string(),
                rounds: Vec::new(),
                failed: None,
            })
            .collect();
        for round in 0..family.repeats {
            for (name, r) in SERVERS.iter().zip(&mut runs) {
                if r.failed.is_some() {
                    continue;
                }
                let one = start(&sctx, name, &docroot, budget)
                    .and_then(|server| hold(&sctx, &server, n, budget));
                match one {
                    Ok(m) => r.rounds.push(m),
                    Err(e) => r.failed = Some(format!("round {}: {e:#}", round + 1)),
                }
            }
        }
        let sc = Scenario {
            id: id.to_string(),
            label: label.to_string(),
            unit: "conn".to_string(),
            conns: n,
            servers: runs,
        };
        print!("{}", super::runner::rows(&sc));
        family.scenarios.push(sc);
    }
    Ok(family)
}

/// A fresh server: `budget` connections per worker, keep-alive well past the measurement.
fn start(ctx: &Ctx, name: &str, docroot: &Path, budget: usize) -> anyhow::Result<Server> {
    let dir = ctx.scratch.join(format!("idle-{name}"));
    std::fs::create_dir_all(&dir)?;
    if name == "nginx" {
        return start_nginx_with(
            ctx,
            &dir,
            &format!(
                "worker_rlimit_nofile {};\nevents {{ worker_connections {budget}; }}",
                budget + FD_SPARE
            ),
            |port| {
                format!(
                    "  types {{ application/octet-stream bin; }}\n\
                     server {{\n    listen 127.0.0.1:{port} reuseport;\n    root {};\n  }}\n",
                    docroot.display()
                )
            },
        );
    }
    let port = free_port()?;
    let cfg = dir.join("portico.toml");
    // eBPF off: on loopback the `cpu` policy would put every connection on one cell.
    std::fs::write(
        &cfg,
        format!(
            "[ebpf]\nmode = \"off\"\n[limits]\nmax_connections = {budget}\n\
             keepalive_timeout = \"300s\"\n[[route]]\nprefix = \"/\"\n\
             static = {{ root = \"{}\" }}\n",
            docroot.display()
        ),
    )?;
    let cmd = portico_serve(ctx, &ctx.layout, &cfg, port, None);
    spawn_server("portico", cmd, port)
}

/// One `idle-load` process holding its share of the connections.
struct Holder {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Holder {
    /// Reads `key: value` lines up to `until` (not included); returns them.
    fn lines_until(&mut self, until: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut got = Vec::new();
        loop {
            let mut line = String::new();
            if self.out.read_line(&mut line)? == 0 {
                if until.is_empty() {
                    return Ok(got);
                }
                bail!("idle-load ended before {until:?}: {got:?}");
            }
            let line = line.trim_end();
            if line == until {
                return Ok(got);
            }
            if let Some((k, v)) = line.split_once(": ") {
                got.push((k.to_string(), v.to_string()));
            }
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(lines: &[(String, String)], key: &str) -> anyhow::Result<f64> {
    lines
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("idle-load printed no {key}: {lines:?}"))
}

/// Opens and holds `n` idle connections to `server`, and measures what they cost it.
fn hold(ctx: &Ctx, server: &Server, n: usize, budget: usize) -> anyhow::Result<Round> {
    let pid = server.child.id();
    // One request first: the baseline then holds what serving at all leaves behind.
    get_once(server.port)?;
    let before = settled(ctx, pid)?;
    let t0 = Instant::now();
    let mut holders = Vec::new();
    for first in (0..n).step_by(budget) {
        let mut cmd = ctx.layout.load(ctx.root.join("target/release/idle-load"));
        cmd.arg(format!("127.0.0.1:{}", server.port))
            .args(["--connections", &budget.min(n - first).to_string()])
            .args(["--first", &first.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting idle-load")?;
        let out = BufReader::new(child.stdout.take().context("idle-load's stdout")?);
        holders.push(Holder { child, out });
    }
    let (mut opened, mut failed, mut first_error) = (0.0, 0.0, None);
    for h in &mut holders {
        let lines = h.lines_until("ready")?;
        opened += field(&lines, "opened")?;
        failed += field(&lines, "failed")?;
        if first_error.is_none() {
            first_error = lines
                .iter()
                .find(|(k, _)| k == "first error")
                .map(|(_, v)| v.clone());
        }
    }
    let open_s = t0.elapsed().as_secs_f64();
    let load_us: f64 = holders
        .iter()
        .map(|h| usage(ctx, h.child.id()).map_or(0.0, |u| u.cpu_us))
        .sum();
    if opened == 0.0 {
        bail!(
            "{}: no connection opened ({failed} failed: {})",
            server.name,
            first_error.unwrap_or_default()
        );
    }
    let after = settled(ctx, pid)?;
    let wall = t0.elapsed().as_secs_f64();
    let mut still_open = 0.0;
    for h in &mut holders {
        drop(h.child.stdin.take());
        still_open += field(&h.lines_until("")?, "still_open")?;
    }
    drop(holders);
    let cpu = after.cpu_us - before.cpu_us;
    let load_cpus = ctx.layout.load_cpu_count();
    let mut round = Round {
        rate: opened / open_s,
        count: opened,
        errors: failed + (opened - still_open),
        wall_s: wall,
        latency_ms: Vec::new(),
        cpu_us: cpu / opened,
        root_cpu_us: 0.0,
        server_busy: cpu / 1e6 / wall,
        load_busy: load_us / 1e6 / open_s / load_cpus as f64,
        peak_rss_kib: after.rss_kib,
        extra: Default::default(),
    };
    round.extra.insert(
        PER_CONN.to_string(),
        (after.rss_kib - before.rss_kib) * 1024.0 / opened,
    );
    Ok(round)
}

/// The server's usage once its RSS has stopped moving (Portico parks a connection 10 ms after
/// its one request): five samples 200 ms apart within 64 KiB, or what it is after 15 s.
fn settled(ctx: &Ctx, pid: u32) -> anyhow::Result<Usage> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last: Vec<Usage> = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let u = usage(ctx, pid)?;
        last.push(u);
        if last.len() > 5 {
            last.remove(0);
        }
        let (lo, hi) = last.iter().fold((f64::MAX, f64::MIN), |(lo, hi), u| {
            (lo.min(u.rss_kib), hi.max(u.rss_kib))
        });
        if (last.len() == 5 && hi - lo <= 64.0) || Instant::now() > deadline {
            return Ok(u);
        }
    }
}

/// One GET of /1k.bin on its own connection, read to the end.
fn get_once(port: u16) -> anyhow::Result<()> {
    let body = super::get_close(port, "/1k.bin")?;
    if !body.starts_with(b"HTTP/1.1 200") {
        bail!(
            "GET /1k.bin: {}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_nofile_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             94363                94363                processes \n\
                    Max open files            1024                 20000                files     \n";
        assert_eq!(parse_nofile_hard(text), Some(20000));
        assert_eq!(
            parse_nofile_hard(
                "Max open files            unlimited            unlimited            files\n"
            ),
            Some(1 << 20)
        );
        assert_eq!(parse_nofile_hard("Max processes 1 1 processes\n"), None);
    }

    #[test]
    fn enough_workers_for_the_connections() {
        assert_eq!(workers_for(10_000, 1, 19_500), 1);
        // 100,000 over 17,550 a worker (a tenth spared): 6.
        assert_eq!(workers_for(100_000, 1, 19_500), 6);
        assert_eq!(workers_for(100_000, 8, 19_500), 8);
    }
}
