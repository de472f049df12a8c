//! `bench asgi`: the ASGI gateway, Portico against uvicorn, granian, hypercorn and daphne, one
//! worker each pinned to CPU0 and the load (wrk -t1, `ws-load`) on CPU1. Server CPU per request
//! (or message) comes from /proc, as in `bench proxy`.

use std::path::Path;

use anyhow::{Context as _, bail};

use super::proxy::{LOAD_CPU, Load, PROXY_CPU, Run, clock_ticks, drive, measure, pinned};
use super::{Server, finish_bench, free_port, median, spawn_server, tempfile_dir};

/// A raw ASGI app: hello world at `/` and a WebSocket echo at `/ws`; it answers the lifespan
/// scope so no server logs a lifespan error per start.
const BENCH_ASGI: &str = r#"
HELLO_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
}
HELLO_BODY = {"type": "http.response.body", "body": b"Hello, World!"}

async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "http":
        await send(HELLO_START)
        await send(HELLO_BODY)
    elif kind == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            msg = await receive()
            if msg["type"] != "websocket.receive":
                return
            if msg.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": msg["bytes"]})
            else:
                await send({"type": "websocket.send", "text": msg["text"]})
    elif kind == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
"#;

const BENCH_STARLETTE: &str = r#"
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def data(request):
    return JSONResponse({"message": "Hello, World!", "items": [1, 2, 3]})

app = Starlette(routes=[Route("/json", data)])
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Portico,
    Uvicorn,
    Granian,
    Hypercorn,
    Daphne,
}

impl Peer {
    const ALL: [Peer; 5] = [
        Peer::Portico,
        Peer::Uvicorn,
        Peer::Granian,
        Peer::Hypercorn,
        Peer::Daphne,
    ];
    fn name(self) -> &'static str {
        match self {
            Peer::Portico => "portico",
            Peer::Uvicorn => "uvicorn (httptools, uvloop)",
            Peer::Granian => "granian",
            Peer::Hypercorn => "hypercorn (uvloop)",
            Peer::Daphne => "daphne",
        }
    }
    /// The executable in the venv: a peer without it is skipped with that reason.
    fn bin(self) -> &'static str {
        match self {
            Peer::Portico => "python",
            Peer::Uvicorn => "uvicorn",
            Peer::Granian => "granian",
            Peer::Hypercorn => "hypercorn",
            Peer::Daphne => "daphne",
        }
    }
}

/// Starts `peer` serving `app` (`module:attr` in `dir`) with one worker, pinned to CPU0.
fn start_peer(
    peer: Peer,
    root: &Path,
    venv: &Path,
    dir: &Path,
    app: &str,
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let p = port.to_string();
    let bin = venv.join("bin").join(peer.bin());
    if !bin.exists() {
        bail!("{} not installed", bin.display());
    }
    let mut cmd = match peer {
        Peer::Portico => {
            // `[ebpf] mode = "off"` like `bench wsgi`; uvloop as uvicorn and hypercorn use it.
            let cfg = dir.join(format!("portico-{}.toml", app.replace(':', "-")));
            std::fs::write(
                &cfg,
                format!(
                    "[ebpf]\nmode = \"off\"\n\n[[route]]\nprefix = \"/\"\n\
                     asgi = {{ app = \"{app}\", chdir = \"{d}\", venv = \"{v}\", loop = \"uvloop\" }}\n",
                    d = dir.display(),
                    v = venv.display(),
                ),
            )?;
            let mut c = pinned(root.join("target/release/portico"), PROXY_CPU);
            c.arg("serve")
                .arg("-c")
                .arg(&cfg)
                .args(["--listen", &format!("127.0.0.1:{port}"), "--admin", "off"])
                .args(["--access-log", "off", "--workers", "1"]);
            c
        }
        Peer::Uvicorn => {
            let mut c = pinned(bin, PROXY_CPU);
            c.args([app, "--host", "127.0.0.1", "--port", &p, "--workers", "1"])
                .args(["--http", "httptools", "--loop", "uvloop"])
                .args(["--no-access-log", "--log-level", "warning"]);
            c
        }
        Peer::Granian => {
            let mut c = pinned(bin, PROXY_CPU);
            c.args(["--interface", "asgi", "--host", "127.0.0.1", "--port", &p])
                .args(["--workers", "1", "--http", "1", "--log-level", "warning"])
                .arg(app);
            c
        }
        Peer::Hypercorn => {
            let mut c = pinned(bin, PROXY_CPU);
            c.args(["--bind", &format!("127.0.0.1:{port}"), "--workers", "1"])
                .args(["--worker-class", "uvloop", "--log-level", "warning"])
                .arg(app);
            c
        }
        Peer::Daphne => {
            let mut c = pinned(bin, PROXY_CPU);
            c.args(["-b", "127.0.0.1", "-p", &p, "-v", "0", app]);
            c
        }
    };
    cmd.current_dir(dir).env("PYTHONPATH", dir);
    spawn_server(peer.name(), cmd, port)
}

/// Status and body of one GET, so a server that answers wrongly is skipped before it is timed.
fn check_get(port: u16, path: &str, want_body: &str) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").context("no response head")?;
    if !head.starts_with("HTTP/1.1 200") || !body.contains(want_body) {
        bail!("GET {path}: {head:?} with body {body:?} (want 200 and {want_body:?})");
    }
    Ok(())
}

struct Row {
    label: &'static str,
    load: Load,
}

/// (app, the GET that checks it and the body it must contain, its rows)
type Group = (&'static str, (&'static str, &'static str), &'static [Row]);

const GROUPS: [Group; 2] = [
    (
        "benchasgi:app",
        ("/", "Hello, World!"),
        &[
            Row {
                label: "hello world keep-alive",
                load: Load::Http {
                    path: "/",
                    close: false,
                },
            },
            Row {
                label: "hello world, new connection per request",
                load: Load::Http {
                    path: "/",
                    close: true,
                },
            },
            Row {
                label: "WebSocket echo (64 B)",
                load: Load::WebSocket { size: 64 },
            },
            Row {
                label: "WebSocket echo (4 KiB)",
                load: Load::WebSocket { size: 4096 },
            },
        ],
    ),
    (
        "benchstarlette:app",
        ("/json", "Hello, World!"),
        &[Row {
            label: "Starlette JSON",
            load: Load::Http {
                path: "/json",
                close: false,
            },
        }],
    ),
];

/// One server's medians over a row's runs; CPU is the whole server (master and workers).
#[derive(Clone, Copy)]
struct Median {
    rate: f64,
    p99_ms: f64,
    cpu_us: f64,
    busy: f64,
}

/// The issue's target for one row: at least 1.2x the best peer's rate, p99 no worse than its.
const MIN_RATIO: f64 = 1.2;

pub(super) fn bench_asgi(root: &Path, venv: &Path, o: super::BenchOpts) -> anyhow::Result<()> {
    let (secs, repeats, conns) = (o.secs, o.repeats.max(1), o.conns);
    if o.workers.is_some_and(|w| w != 1) || o.threads.is_some_and(|t| t != 1) {
        bail!(
            "bench asgi runs one server worker and one load thread; --workers/--threads do not apply"
        );
    }
    if std::thread::available_parallelism().map_or(1, std::num::NonZero::get) < 2 {
        bail!("bench asgi needs two CPUs: the servers on CPU0, the load on CPU1");
    }
    let dir = tempfile_dir()?;
    std::fs::write(dir.join("benchasgi.py"), BENCH_ASGI)?;
    std::fs::write(dir.join("benchstarlette.py"), BENCH_STARLETTE)?;
    let hz = clock_ticks();
    let setup = format!(
        "bench asgi: portico (--workers 1, loop uvloop), uvicorn (httptools, uvloop), granian \
         (--interface asgi), hypercorn (uvloop) and daphne, 1 worker each on CPU{PROXY_CPU}; the \
         load (wrk -t1 / ws-load) on CPU{LOAD_CPU}; {conns} connections, {secs}s per run, \
         {repeats} interleaved repeats (median)"
    );
    println!("{setup}\n");
    let mut table = format!(
        "{setup}\n\n| row | server | req/s (msg/s) | p99 ms | CPU µs/req | CPU busy | portico / server |\n\
         |---|---|---:|---:|---:|---:|---:|\n"
    );
    let mut summary = String::from(
        "| row | portico /s | best peer | best peer /s | ratio | p99 ms portico / best peer | target |\n\
         |---|---:|---|---:|---:|---:|---|\n",
    );
    let mut skipped: Vec<String> = Vec::new();
    for (app, (check_path, check_body), rows) in GROUPS {
        let mut servers = Vec::new();
        for peer in Peer::ALL {
            let started = start_peer(peer, root, venv, &dir, app)
                .and_then(|s| check_get(s.port, check_path, check_body).map(|()| s));
            match started {
                Ok(s) => servers.push(s),
                Err(e) => {
                    let why = format!("{} ({app}): {e:#}", peer.name());
                    eprintln!("skipping {why}");
                    skipped.push(why);
                }
            }
        }
        for row in rows {
            // Per server: its runs, or why it failed under this row's load.
            let mut runs: Vec<Result<Vec<Run>, String>> = vec![Ok(Vec::new()); servers.len()];
            for (s, r) in servers.iter().zip(&mut runs) {
                if let Err(e) = drive(root, s.port, row.load, conns, 1) {
                    *r = Err(format!("{e:#}"));
                }
            }
            for _ in 0..repeats {
                for (s, r) in servers.iter().zip(&mut runs) {
                    if let Ok(v) = r {
                        match measure(root, s, row.load, conns, secs, hz) {
                            Ok(run) => v.push(run),
                            Err(e) => *r = Err(format!("{e:#}")),
                        }
                    }
                }
            }
            let med: Vec<Option<Median>> = runs
                .iter()
                .map(|r| {
                    let v = r.as_ref().ok()?;
                    let m = |f: fn(&Run) -> f64| median(v.iter().map(f).collect());
                    Some(Median {
                        rate: m(|r| r.rate),
                        p99_ms: m(|r| r.p99_ms),
                        cpu_us: m(|r| r.worker_us + r.master_us),
                        busy: m(|r| r.busy),
                    })
                })
                .collect();
            let ours = servers
                .iter()
                .position(|s| s.name == "portico")
                .and_then(|i| med[i]);
            for ((s, m), r) in servers.iter().zip(&med).zip(&runs) {
                let line = match (m, r) {
                    (Some(m), _) => format!(
                        "| {} | {} | {:.0} | {:.2} | {:.1} | {:.0}% | {} |\n",
                        row.label,
                        s.name,
                        m.rate,
                        m.p99_ms,
                        m.cpu_us,
                        m.busy * 100.0,
                        ours.map_or("-".into(), |p| format!("{:.2}", p.rate / m.rate)),
                    ),
                    (None, Err(e)) => {
                        let e = e.lines().next().unwrap_or_default().replace('|', "/");
                        format!("| {} | {} | failed: {e} | | | | |\n", row.label, s.name)
                    }
                    (None, Ok(_)) => unreachable!("a median exists for every server that ran"),
                };
                print!("{line}");
                table.push_str(&line);
            }
            let best = servers
                .iter()
                .zip(&med)
                .filter(|(s, _)| s.name != "portico")
                .filter_map(|(s, m)| Some((s.name, (*m)?)))
                .max_by(|a, b| a.1.rate.total_cmp(&b.1.rate));
            let line = match (ours, best) {
                (Some(p), Some((name, b))) => {
                    let ratio = p.rate / b.rate;
                    let met = ratio >= MIN_RATIO && p.p99_ms <= b.p99_ms;
                    format!(
                        "| {} | {:.0} | {name} | {:.0} | {ratio:.2} | {:.2} / {:.2} | {} |\n",
                        row.label,
                        p.rate,
                        b.rate,
                        p.p99_ms,
                        b.p99_ms,
                        if met { "met" } else { "not met" },
                    )
                }
                (None, _) => format!(
                    "| {} | - | | | | | not met (portico did not run) |\n",
                    row.label
                ),
                (Some(p), None) => format!(
                    "| {} | {:.0} | - | | | | no peer ran |\n",
                    row.label, p.rate
                ),
            };
            summary.push_str(&line);
        }
        drop(servers);
    }
    table.push_str(&format!(
        "\nTarget (issue 13): at least {MIN_RATIO:.1}x the best peer's rate of the same run and \
         p99 no worse than that peer's.\n\n{summary}"
    ));
    if !skipped.is_empty() {
        table.push_str("\nSkipped:\n");
        for s in &skipped {
            table.push_str(&format!("- {}\n", s.lines().next().unwrap_or_default()));
        }
    }
    table.push_str(
        "\nreq/s (msg/s for WebSocket rows: C connections, each sending a message and waiting for \
         its echo); CPU is the server's processes' utime + stime (master and workers, from \
         /proc) per request or message; CPU busy below ~100% means the load generator, not the \
         server, set the pace.\n",
    );
    finish_bench(root, &dir, "asgi", &table)
}
