//! `bench tunnel`: the tunnel relays (`relay = "copy" | "splice" | "sockmap"`) side by side in
//! one run: three Porticos, one worker each on the proxy CPU, in front of the same WebSocket
//! echo (`bench-backend`), driven by `ws-load` in interleaved rounds. Cell CPU per message
//! comes from /proc (the master's children), as in `bench proxy`.

use std::path::Path;

use anyhow::{Context as _, bail};

use super::proxy::{
    LOAD_CPU, Load, PROXY_CPU, Run, clock_ticks, drive, measure, pinned, start_backend,
};
use super::{Server, finish_bench, free_port, median, spawn_server, tempfile_dir, wait_port};

const RELAYS: [&str; 3] = ["copy", "splice", "sockmap"];
/// The spawned servers' names (the `Server` type keeps a static name).
const NAMES: [&str; 3] = [
    "portico relay=copy",
    "portico relay=splice",
    "portico relay=sockmap",
];

/// Small messages (the per-message cost) and bulk ones (throughput).
struct Case {
    label: &'static str,
    size: usize,
    /// Connections: the `--connections` option for small messages, fewer for bulk.
    bulk: bool,
}

const CASES: [Case; 2] = [
    Case {
        label: "echo 64 B messages",
        size: 64,
        bulk: false,
    },
    Case {
        label: "echo 256 KiB messages (bulk)",
        size: 256 << 10,
        bulk: true,
    },
];

/// Connections of a bulk case: enough to keep the relay busy, few enough that each message
/// is a real transfer.
const BULK_CONNS: usize = 4;

fn start_portico(root: &Path, dir: &Path, i: usize, backend: u16) -> anyhow::Result<(Server, u16)> {
    let relay = RELAYS[i];
    let (port, admin) = (free_port()?, free_port()?);
    let cfg = dir.join(format!("portico-{relay}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[[upstream]]\nname = \"backend\"\nservers = [\"127.0.0.1:{backend}\"]\n\n\
             [[route]]\nprefix = \"/\"\nproxy = {{ upstream = \"backend\", websocket = true, relay = \"{relay}\" }}\n"
        ),
    )?;
    let mut cmd = pinned(root.join("target/release/portico"), PROXY_CPU);
    cmd.arg("serve")
        .arg("-c")
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--access-log", "off", "--workers", "1"]);
    let server = spawn_server(NAMES[i], cmd, port)?;
    wait_port(admin).with_context(|| format!("{}: admin endpoint", NAMES[i]))?;
    Ok((server, admin))
}

/// `portico_tunnel_sockmap_available` of a running Portico.
fn sockmap_available(admin: u16) -> anyhow::Result<bool> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("portico_tunnel_sockmap_available "))
        .context("no portico_tunnel_sockmap_available in /metrics")?;
    Ok(value.trim() == "1")
}

/// Tunnels each relay opened, from its /metrics: proves the row measured that relay.
fn tunnels_by(admin: u16, relay: &str) -> anyhow::Result<f64> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let series = format!("portico_tunnels_total{{relay=\"{relay}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
        .with_context(|| format!("no {series}in /metrics"))
}

pub(super) fn bench_tunnel(root: &Path, o: super::BenchOpts) -> anyhow::Result<()> {
    let (secs, repeats, conns) = (o.secs, o.repeats.max(1), o.conns);
    if o.workers.is_some_and(|w| w != 1) || o.threads.is_some_and(|t| t != 1) {
        bail!("bench tunnel runs one proxy worker per relay; --workers/--threads do not apply");
    }
    if std::thread::available_parallelism().map_or(1, std::num::NonZero::get) < 2 {
        bail!("bench tunnel needs two CPUs: the proxies on CPU0, backend and load on CPU1");
    }
    let dir = tempfile_dir()?;
    let hz = clock_ticks();
    let backend = start_backend(root)?;
    let mut proxies = Vec::new();
    for i in 0..RELAYS.len() {
        proxies.push(start_portico(root, &dir, i, backend.port)?);
    }
    let sockmap = sockmap_available(proxies[2].1)?;
    if !sockmap {
        println!(
            "sockmap relay unavailable (needs root and kernel support): its row is not measured\n"
        );
    }
    let measured: Vec<usize> = (0..RELAYS.len())
        .filter(|&i| RELAYS[i] != "sockmap" || sockmap)
        .collect();
    let setup = format!(
        "bench tunnel: one portico per relay, 1 worker each on CPU{PROXY_CPU}; bench-backend (WebSocket \
         echo) and ws-load on CPU{LOAD_CPU}; {conns} connections for small messages, {BULK_CONNS} for \
         bulk; {secs}s per run, {repeats} interleaved rounds (median); kernel {}",
        crate::process::output(std::process::Command::new("uname").arg("-r"))
            .unwrap_or_default()
            .trim()
    );
    println!("{setup}\n");
    let mut table = format!(
        "{setup}\n\n| case | relay | msg/s | MiB/s (each way) | p99 ms | cell CPU µs/msg | CPU busy |\n\
         |---|---|---:|---:|---:|---:|---:|\n"
    );
    for case in &CASES {
        let load = Load::WebSocket { size: case.size };
        let c = if case.bulk { BULK_CONNS } else { conns };
        for &i in &measured {
            // Warm: the backend's allocator, the page cache, the first tunnels.
            drive(root, proxies[i].0.port, load, c, 1)?;
        }
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); RELAYS.len()];
        for _ in 0..repeats {
            for &i in &measured {
                runs[i].push(measure(root, &proxies[i].0, load, c, secs, hz)?);
            }
        }
        for &i in &measured {
            let med = |f: fn(&Run) -> f64| median(runs[i].iter().map(f).collect());
            let rate = med(|r| r.rate);
            let line = format!(
                "| {} | {} | {rate:.0} | {:.1} | {:.2} | {:.1} | {:.0}% |\n",
                case.label,
                RELAYS[i],
                rate * case.size as f64 / f64::from(1u32 << 20),
                med(|r| r.p99_ms),
                med(|r| r.worker_us),
                med(|r| r.busy) * 100.0,
            );
            print!("{line}");
            table.push_str(&line);
        }
    }
    for &i in &measured {
        let n = tunnels_by(proxies[i].1, RELAYS[i])?;
        if n < 1.0 {
            bail!("{}: no tunnel was relayed by {}", NAMES[i], RELAYS[i]);
        }
    }
    table.push_str(
        "\nmsg/s: echoed messages per second; MiB/s: message bytes per second one way (the echo \
         carries as many back); cell CPU: the cell's utime + stime per message; CPU busy below \
         ~100% means the load generator, not the proxy, set the pace.\n",
    );
    drop(proxies);
    drop(backend);
    finish_bench(root, &dir, "tunnel", &table)
}
