//! `bench asgi`: the ASGI gateway, Portico against uvicorn, granian, hypercorn and daphne, the
//! same workers each (per core by default: one on CPU 0, the load (oha, `ws-load`) on the
//! others).

use std::path::Path;

use anyhow::{Context as _, bail};

use super::measure::{Ctx, Load};
use super::results::Family;
use super::runner::{Row, run_rows};
use super::{BenchOpts, Server, free_port, spawn_server};

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
pub(super) enum Peer {
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

/// Starts `peer` serving `app` (`module:attr` in the scratch directory) on the server CPUs.
pub(super) fn start_peer(peer: Peer, ctx: &Ctx, venv: &Path, app: &str) -> anyhow::Result<Server> {
    let (dir, layout) = (&ctx.scratch, &ctx.layout);
    std::fs::write(dir.join("benchasgi.py"), BENCH_ASGI)?;
    std::fs::write(dir.join("benchstarlette.py"), BENCH_STARLETTE)?;
    let port = free_port()?;
    let p = port.to_string();
    let w = layout.workers.to_string();
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
            let mut c = layout.server(ctx.root.join("target/release/portico"));
            c.arg("serve")
                .arg("-c")
                .arg(&cfg)
                .args(["--listen", &format!("127.0.0.1:{port}"), "--admin", "off"])
                .args(["--access-log", "off", "--workers", &w]);
            c
        }
        Peer::Uvicorn => {
            let mut c = layout.server(bin);
            c.args([app, "--host", "127.0.0.1", "--port", &p, "--workers", &w])
                .args(["--http", "httptools", "--loop", "uvloop"])
                .args(["--no-access-log", "--log-level", "warning"]);
            c
        }
        Peer::Granian => {
            let mut c = layout.server(bin);
            c.args(["--interface", "asgi", "--host", "127.0.0.1", "--port", &p])
                .args(["--workers", &w, "--http", "1", "--log-level", "warning"])
                .arg(app);
            c
        }
        Peer::Hypercorn => {
            let mut c = layout.server(bin);
            c.args(["--bind", &format!("127.0.0.1:{port}"), "--workers", &w])
                .args(["--worker-class", "uvloop", "--log-level", "warning"])
                .arg(app);
            c
        }
        Peer::Daphne => {
            // One process whatever the workers: daphne has no worker option.
            let mut c = layout.server(bin);
            c.args(["-b", "127.0.0.1", "-p", &p, "-v", "0", app]);
            c
        }
    };
    cmd.current_dir(dir).env("PYTHONPATH", dir);
    spawn_server(peer.name(), cmd, port)
}

/// Status and body of one GET, so a server that answers wrongly is skipped before it is timed.
fn check_get(port: u16, path: &str, want_body: &str) -> anyhow::Result<()> {
    let resp = super::get_close(port, path)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").context("no response head")?;
    if !head.starts_with("HTTP/1.1 200") || !body.contains(want_body) {
        bail!("GET {path}: {head:?} with body {body:?} (want 200 and {want_body:?})");
    }
    Ok(())
}

/// (app, the GET that checks it and the body it must contain, its scenarios)
type Group = (&'static str, (&'static str, &'static str), &'static [Row]);

pub(super) const GROUPS: [Group; 2] = [
    (
        "benchasgi:app",
        ("/", "Hello, World!"),
        &[
            ("hello", "hello world keep-alive", Load::get("/")),
            (
                "hello-new-conn",
                "hello world, new connection per request",
                Load::get_close("/"),
            ),
            (
                "ws-64",
                "WebSocket echo (64 B)",
                Load::WebSocket { size: 64 },
            ),
            (
                "ws-4k",
                "WebSocket echo (4 KiB)",
                Load::WebSocket { size: 4096 },
            ),
        ],
    ),
    (
        "benchstarlette:app",
        ("/json", "Hello, World!"),
        &[("starlette-json", "Starlette JSON", Load::get("/json"))],
    ),
];

pub(super) fn bench_asgi(ctx: &Ctx, venv: &Path, o: &BenchOpts) -> anyhow::Result<Family> {
    let mut family = o.family(
        "asgi",
        ctx,
        format!(
            "bench asgi: portico (loop uvloop), uvicorn (httptools, uvloop), granian (--interface \
             asgi), hypercorn (uvloop) and daphne, {}; {} connections (oha / ws-load)",
            ctx.layout.describe(),
            o.conns
        ),
    );
    for (app, (check_path, check_body), rows) in GROUPS {
        let mut servers = Vec::new();
        for peer in Peer::ALL {
            let started = start_peer(peer, ctx, venv, app)
                .and_then(|s| check_get(s.port, check_path, check_body).map(|()| s));
            match started {
                Ok(s) => servers.push(s),
                Err(e) => {
                    let why = format!("{} ({app}) skipped: {e:#}", peer.name());
                    eprintln!("{why}");
                    family.notes.push(why);
                }
            }
        }
        let refs: Vec<&Server> = servers.iter().collect();
        run_rows(ctx, &mut family, &refs, rows, o.conns);
    }
    Ok(family)
}
