//! `bench proxy`: the reverse proxy, Portico against nginx `proxy_pass`, one worker each pinned
//! to CPU0, in front of the same native backend (`bench-backend`), which shares CPU1 with the
//! load generator (wrk, `ws-load`). Proxy CPU per request comes from /proc, proxy processes only.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

use super::{Server, finish_bench, free_port, median, parse_ms, spawn_server, tempfile_dir};
use crate::process::{output, which};

/// The proxies' CPU; the backend and the load generator share the other.
const PROXY_CPU: &str = "0";
const LOAD_CPU: &str = "1";

/// Bytes per WebSocket message (ws-load's `--size`).
const WS_MESSAGE: usize = 64;

#[derive(Clone, Copy)]
enum Load {
    /// wrk GETs of `path`, with `Connection: close` when `close`.
    Http { path: &'static str, close: bool },
    /// ws-load echo messages on /ws.
    WebSocket,
}

struct Case {
    label: &'static str,
    load: Load,
    /// The target: 1 KiB rows need 1.2x nginx and less CPU per request, others 1.0x.
    min_ratio: f64,
    lower_cpu: bool,
}

const CASES: [Case; 4] = [
    Case {
        label: "1 KiB keep-alive",
        load: Load::Http {
            path: "/1k",
            close: false,
        },
        min_ratio: 1.2,
        lower_cpu: true,
    },
    Case {
        label: "1 KiB new connection per request",
        load: Load::Http {
            path: "/1k",
            close: true,
        },
        min_ratio: 1.2,
        lower_cpu: true,
    },
    Case {
        label: "1 MiB keep-alive",
        load: Load::Http {
            path: "/1m",
            close: false,
        },
        min_ratio: 1.0,
        lower_cpu: false,
    },
    Case {
        label: "WebSocket echo (64 B messages)",
        load: Load::WebSocket,
        min_ratio: 1.0,
        lower_cpu: false,
    },
];

/// One run against one proxy: requests (or messages) per second, p99, and the proxy's CPU.
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    p99_ms: f64,
    /// Proxy CPU per request (or message): workers (Portico's cells, nginx's worker) and master.
    worker_us: f64,
    master_us: f64,
    /// Proxy CPU time over wall time: below ~100% the proxy was not the bottleneck.
    busy: f64,
}

/// CPU ticks (utime + stime) of a proxy's master and of its children, the workers.
#[derive(Clone, Copy)]
struct Ticks {
    master: u64,
    workers: u64,
}

fn proc_ticks(pid: u32) -> anyhow::Result<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces): state, ppid, ... utime, stime.
    let rest = stat
        .rsplit_once(')')
        .with_context(|| format!("/proc/{pid}/stat: no command name"))?
        .1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> anyhow::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat: field {}", i + 3))
    };
    Ok((u32::try_from(num(1)?)?, num(11)? + num(12)?))
}

fn tree_ticks(master: u32) -> anyhow::Result<Ticks> {
    let mut workers = 0;
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A process that exits between the listing and the read is no worker of ours.
        if let Ok((ppid, t)) = proc_ticks(pid)
            && ppid == master
        {
            workers += t;
        }
    }
    Ok(Ticks {
        master: proc_ticks(master)?.1,
        workers,
    })
}

fn clock_ticks() -> f64 {
    output(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs `cmd` pinned to the load CPU and returns its stdout; fails on a non-zero exit.
fn run_load(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

fn pinned(bin: impl AsRef<std::ffi::OsStr>, cpu: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu]).arg(bin);
    c
}

/// (count, per second, p99 ms) of one load run.
fn drive(
    root: &Path,
    port: u16,
    load: Load,
    conns: usize,
    secs: u64,
) -> anyhow::Result<(f64, f64, f64)> {
    match load {
        Load::Http { path, close } => {
            let mut cmd = pinned("wrk", LOAD_CPU);
            cmd.args(["-t", "1", "-c", &conns.to_string()]).args([
                "-d",
                &format!("{secs}s"),
                "--latency",
            ]);
            if close {
                cmd.args(["-H", "Connection: close"]);
            }
            cmd.arg(format!("http://127.0.0.1:{port}{path}"));
            let text = run_load(cmd, "wrk")?;
            let line = |prefix: &str| {
                text.lines()
                    .map(str::trim)
                    .find_map(|l| l.strip_prefix(prefix))
                    .map(str::trim)
            };
            if let Some(bad) = line("Non-2xx or 3xx responses:") {
                bail!("wrk through :{port}{path}: {bad} responses were not 2xx/3xx:\n{text}");
            }
            let requests: f64 = text
                .lines()
                .find_map(|l| l.trim().split_once(" requests in "))
                .and_then(|(n, _)| n.parse().ok())
                .with_context(|| format!("no request count in wrk output:\n{text}"))?;
            let rps = line("Requests/sec:")
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
            let p99 = line("99%").and_then(parse_ms).unwrap_or(f64::NAN);
            Ok((requests, rps, p99))
        }
        Load::WebSocket => {
            let mut cmd = pinned(root.join("target/release/ws-load"), LOAD_CPU);
            cmd.arg(format!("ws://127.0.0.1:{port}/ws")).args([
                "--connections",
                &conns.to_string(),
                "--duration",
                &secs.to_string(),
                "--size",
                &WS_MESSAGE.to_string(),
            ]);
            let text = run_load(cmd, "ws-load")?;
            let field = |name: &str| -> anyhow::Result<f64> {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                    .with_context(|| format!("no {name} in ws-load output:\n{text}"))
            };
            Ok((
                field("messages:")?,
                field("messages/s:")?,
                field("p99_us:")? / 1000.0,
            ))
        }
    }
}

fn measure(
    root: &Path,
    proxy: &Server,
    load: Load,
    conns: usize,
    secs: u64,
    hz: f64,
) -> anyhow::Result<Run> {
    let pid = proxy.child.id();
    let before = tree_ticks(pid)?;
    let t0 = std::time::Instant::now();
    let (count, rate, p99_ms) = drive(root, proxy.port, load, conns, secs)?;
    let wall = t0.elapsed().as_secs_f64();
    let after = tree_ticks(pid)?;
    if count <= 0.0 {
        bail!("{}: no request completed", proxy.name);
    }
    let us = |a: u64, b: u64| a.saturating_sub(b) as f64 / hz * 1e6 / count;
    let worker_us = us(after.workers, before.workers);
    let master_us = us(after.master, before.master);
    Ok(Run {
        rate,
        p99_ms,
        worker_us,
        master_us,
        busy: (worker_us + master_us) * count / 1e6 / wall,
    })
}

fn start_backend(root: &Path) -> anyhow::Result<Server> {
    let port = free_port()?;
    let mut cmd = pinned(root.join("target/release/bench-backend"), LOAD_CPU);
    cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
    spawn_server("bench-backend", cmd, port)
}

fn start_portico(root: &Path, dir: &Path, backend: u16, conns: usize) -> anyhow::Result<Server> {
    let port = free_port()?;
    let cfg = dir.join("portico-proxy.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[upstream]]\nname = \"backend\"\nservers = [\"127.0.0.1:{backend}\"]\nkeepalive = {conns}\n\n\
             [[route]]\nprefix = \"/\"\nproxy = {{ upstream = \"backend\", websocket = true }}\n"
        ),
    )?;
    let mut cmd = pinned(root.join("target/release/portico"), PROXY_CPU);
    cmd.arg("serve")
        .arg("-c")
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin", "off"])
        .args(["--access-log", "off", "--workers", "1"]);
    spawn_server("portico", cmd, port)
}

fn start_nginx(dir: &Path, backend: u16, conns: usize) -> anyhow::Result<Server> {
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    // The request headers Portico sets by default, so both send the backend the same request.
    let forwarded = "proxy_set_header Host $http_host;\n      \
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      \
        proxy_set_header X-Forwarded-Proto $scheme;\n      \
        proxy_set_header X-Real-IP $remote_addr;";
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\nworker_cpu_affinity 1;\ndaemon off;\nmaster_process on;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nworker_rlimit_nofile 65536;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n  access_log off;\n  tcp_nodelay on;\n\
               keepalive_requests 1000000;\n  keepalive_timeout 75s;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               proxy_max_temp_file_size 0;\n\
               upstream backend {{\n    server 127.0.0.1:{backend};\n    keepalive {conns};\n\
                 keepalive_requests 1000000;\n    keepalive_timeout 60s;\n  }}\n\
               server {{\n    listen 127.0.0.1:{port};\n\
                 location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      \
                   proxy_set_header Connection \"\";\n      {forwarded}\n    }}\n\
                 location /ws {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      \
                   proxy_set_header Upgrade $http_upgrade;\n      \
                   proxy_set_header Connection \"upgrade\";\n      {forwarded}\n      \
                   proxy_read_timeout 3600s;\n    }}\n  }}\n}}\n",
            d = dir.display(),
        ),
    )?;
    let mut cmd = pinned(which("nginx").context("nginx not installed")?, PROXY_CPU);
    cmd.arg("-c").arg(&conf).arg("-p").arg(dir);
    spawn_server("nginx", cmd, port)
}

/// The status and body length of one GET, so a misconfigured proxy fails before it is timed.
fn check_get(port: u16, path: &str, want_len: usize) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no response head")?;
    let status = String::from_utf8_lossy(&resp[..head_end.min(12)]).into_owned();
    let body = resp.len() - head_end - 4;
    if !status.ends_with(" 200") || body != want_len {
        bail!("GET {path} through :{port}: {status:?} with {body} bytes (want 200, {want_len})");
    }
    Ok(())
}

pub(super) fn bench_proxy(root: &Path, o: super::BenchOpts) -> anyhow::Result<()> {
    let (secs, repeats, conns) = (o.secs, o.repeats.max(1), o.conns);
    if o.workers.is_some_and(|w| w != 1) || o.threads.is_some_and(|t| t != 1) {
        bail!(
            "bench proxy runs one proxy worker and one load thread; --workers/--threads do not apply"
        );
    }
    if std::thread::available_parallelism().map_or(1, std::num::NonZero::get) < 2 {
        bail!("bench proxy needs two CPUs: the proxy on CPU0, backend and load on CPU1");
    }
    which("nginx").context("nginx not installed")?;
    let dir = tempfile_dir()?;
    let hz = clock_ticks();
    let backend = start_backend(root)?;
    let proxies = [
        start_portico(root, &dir, backend.port, conns)?,
        start_nginx(&dir, backend.port, conns)?,
    ];
    for p in &proxies {
        check_get(p.port, "/1k", 1024).with_context(|| p.name)?;
        check_get(p.port, "/1m", 1 << 20).with_context(|| p.name)?;
    }
    // The setup goes into the result file too: numbers without it cannot be compared.
    let setup = format!(
        "bench proxy: portico and nginx, 1 worker each on CPU{PROXY_CPU}; bench-backend and the load \
         (wrk -t1 / ws-load) on CPU{LOAD_CPU}; {conns} connections, upstream keepalive {conns}, \
         {secs}s per run, {repeats} interleaved repeats (median)"
    );
    println!("{setup}\n");
    let mut table = format!(
        "{setup}\n\n| case | portico /s | nginx /s | ratio | portico CPU µs/req (master) | nginx CPU µs/req (master) \
         | CPU busy portico / nginx | p99 ms portico / nginx | target |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for case in &CASES {
        // Warm both: pooled upstream connections, the backend's allocator, page cache.
        for p in &proxies {
            drive(root, p.port, case.load, conns, 1)?;
        }
        let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..repeats {
            for (i, p) in proxies.iter().enumerate() {
                runs[i].push(measure(root, p, case.load, conns, secs, hz)?);
            }
        }
        let med = |i: usize, f: fn(&Run) -> f64| median(runs[i].iter().map(f).collect());
        let (rate, cpu) = (
            |i| med(i, |r| r.rate),
            |i| med(i, |r| r.worker_us + r.master_us),
        );
        let ratio = rate(0) / rate(1);
        let met = ratio >= case.min_ratio && (!case.lower_cpu || cpu(0) < cpu(1));
        let want = if case.lower_cpu {
            format!(">= {:.1}x, lower CPU/req", case.min_ratio)
        } else {
            format!(">= {:.1}x", case.min_ratio)
        };
        let line = format!(
            "| {} | {:.0} | {:.0} | {ratio:.2} | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.0}% / {:.0}% | {:.2} / {:.2} | {} ({want}) |\n",
            case.label,
            rate(0),
            rate(1),
            cpu(0),
            med(0, |r| r.master_us),
            cpu(1),
            med(1, |r| r.master_us),
            med(0, |r| r.busy) * 100.0,
            med(1, |r| r.busy) * 100.0,
            med(0, |r| r.p99_ms),
            med(1, |r| r.p99_ms),
            if met { "met" } else { "not met" },
        );
        print!("{line}");
        table.push_str(&line);
    }
    table.push_str(
        "\n/s is requests per second (WebSocket: echoed messages); CPU is the proxy's processes' \
         utime + stime per request, the master's part in brackets; CPU busy below ~100% means \
         the load generator, not the proxy, set the pace.\n",
    );
    drop(proxies);
    drop(backend);
    finish_bench(root, &dir, "proxy", &table)
}
