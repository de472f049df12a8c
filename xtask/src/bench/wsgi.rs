//! `bench wsgi`: the WSGI gateway, Portico against granian, gunicorn, uWSGI and bjoern.

use std::path::Path;

use super::measure::{Ctx, Load};
use super::results::Family;
use super::runner::{Row, run_rows};
use super::{BENCH_APP, BenchOpts, Server, free_port, spawn_server};

const BENCH_FLASK: &str = r#"
from flask import Flask, jsonify
app = Flask(__name__)

@app.get("/json")
def data():
    return jsonify(message="Hello, World!", items=[1, 2, 3])
"#;

/// bjoern is one process; fork it per worker on one shared listener (equal cores).
const BJOERN_RUN: &str = r#"
import importlib, os, sys
import bjoern
mod, attr = sys.argv[1].split(":")
app = getattr(importlib.import_module(mod), attr)
bjoern.listen(app, "127.0.0.1", int(sys.argv[2]))
for _ in range(int(sys.argv[3]) - 1):
    if os.fork() == 0:
        break
bjoern.run()
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Portico,
    Granian,
    GunicornSync,
    GunicornGthread,
    Uwsgi,
    Bjoern,
}

impl Peer {
    const ALL: [Peer; 6] = [
        Peer::Portico,
        Peer::Granian,
        Peer::GunicornSync,
        Peer::GunicornGthread,
        Peer::Uwsgi,
        Peer::Bjoern,
    ];
    fn name(self) -> &'static str {
        match self {
            Peer::Portico => "portico",
            Peer::Granian => "granian",
            Peer::GunicornSync => "gunicorn (sync)",
            Peer::GunicornGthread => "gunicorn (gthread, 4 threads)",
            Peer::Uwsgi => "uWSGI",
            Peer::Bjoern => "bjoern",
        }
    }
}

fn start_peer(peer: Peer, ctx: &Ctx, venv: &Path, app: &str) -> anyhow::Result<Server> {
    let (root, dir, layout) = (&ctx.root, &ctx.scratch, &ctx.layout);
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let bin = |b: &str| venv.join("bin").join(b);
    let w = layout.workers.to_string();
    let mut cmd = match peer {
        Peer::Portico => {
            // Plain SO_REUSEPORT, like every peer: on loopback the `cpu` steering policy puts
            // all of the load's connections on the cell of the CPU it connected from (see
            // README); this bench measures the WSGI gateway, `bench steering` the policies.
            let cfg = dir.join("portico-bench.toml");
            std::fs::write(&cfg, "[ebpf]\nmode = \"off\"\n")?;
            let mut c = layout.server(root.join("target/release/portico"));
            c.arg("serve")
                .arg("-c")
                .arg(&cfg)
                .args([app, "--listen", &addr, "--admin", "off"])
                .args(["--access-log", "off", "--workers", &w, "--venv"])
                .arg(venv);
            c
        }
        Peer::Granian => {
            let mut c = layout.server(bin("granian"));
            c.args(["--interface", "wsgi", "--host", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .args([
                    "--workers",
                    &w,
                    "--http",
                    "1",
                    "--log-level",
                    "warning",
                    app,
                ]);
            c
        }
        Peer::GunicornSync | Peer::GunicornGthread => {
            let mut c = layout.server(bin("gunicorn"));
            c.args(["-w", &w, "-b", &addr, "--log-level", "warning"]);
            if peer == Peer::GunicornGthread {
                c.args(["-k", "gthread", "--threads", "4"]);
            }
            c.arg(app);
            c
        }
        Peer::Uwsgi => {
            let mut c = layout.server(bin("uwsgi"));
            c.args(["--http11-socket", &addr, "--master", "--processes", &w])
                .args(["--module", app, "--disable-logging", "--need-app"])
                .args(["--pythonpath"])
                .arg(dir)
                .args(["--virtualenv"])
                .arg(venv);
            c
        }
        Peer::Bjoern => {
            let mut c = layout.server(bin("python"));
            c.arg(dir.join("bjoern_run.py"))
                .args([app, &port.to_string(), &w]);
            c
        }
    };
    cmd.current_dir(dir).env("PYTHONPATH", dir);
    spawn_server(peer.name(), cmd, port)
}

/// Writes the apps (and bjoern's launcher) into the scratch directory.
pub(super) fn write_apps(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("benchapp.py"), BENCH_APP)?;
    std::fs::write(dir.join("benchflask.py"), BENCH_FLASK)?;
    std::fs::write(dir.join("bjoern_run.py"), BJOERN_RUN)?;
    Ok(())
}

/// (app, its scenarios)
pub(super) const GROUPS: [(&str, &[Row]); 2] = [
    (
        "benchapp:app",
        &[
            ("hello", "hello world (13 B) keep-alive", Load::get("/")),
            (
                "hello-new-conn",
                "hello world, new connection per request",
                Load::get_close("/"),
            ),
            ("10k", "10 KiB body", Load::get("/10k")),
            (
                "post-echo",
                "4 KiB POST echo",
                Load::Http {
                    path: "/echo",
                    close: false,
                    body: 4096,
                    tls: false,
                },
            ),
        ],
    ),
    (
        "benchflask:app",
        &[("flask-json", "Flask JSON", Load::get("/json"))],
    ),
];

/// Portico alone serving `app`, for `xtask profile`.
pub(super) fn start_portico(ctx: &Ctx, venv: &Path, app: &str) -> anyhow::Result<Server> {
    write_apps(&ctx.scratch)?;
    start_peer(Peer::Portico, ctx, venv, app)
}

pub(super) fn bench_wsgi(ctx: &Ctx, venv: &Path, o: &BenchOpts) -> anyhow::Result<Family> {
    write_apps(&ctx.scratch)?;
    let mut family = o.family(
        "wsgi",
        ctx,
        format!(
            "bench wsgi: portico, granian, gunicorn (sync, gthread), uWSGI and bjoern, {}; oha -c{}",
            ctx.layout.describe(),
            o.conns
        ),
    );
    for (app, rows) in GROUPS {
        let mut servers = Vec::new();
        for peer in Peer::ALL {
            match start_peer(peer, ctx, venv, app) {
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
