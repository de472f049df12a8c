//! `bench wsgi`: the WSGI gateway, Portico against granian, gunicorn, uWSGI and bjoern.

use std::path::Path;
use std::process::Command;

use super::{
    BENCH_APP, BenchOpts, Sample, Server, finish_bench, free_port, median, spawn_server,
    tempfile_dir, wrk_with,
};

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

const POST_LUA: &str = "wrk.method = \"POST\"\nwrk.body = string.rep(\"a\", 4096)\nwrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n";

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

fn start_peer(
    peer: Peer,
    root: &Path,
    venv: &Path,
    dir: &Path,
    app: &str,
    workers: usize,
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let bin = |b: &str| venv.join("bin").join(b);
    let w = workers.to_string();
    let mut cmd = match peer {
        Peer::Portico => {
            // Plain SO_REUSEPORT, like every peer: on loopback the `cpu` steering policy puts
            // all of wrk's connections on the cell of the CPU wrk connected from (see README);
            // this bench measures the WSGI gateway, `bench steering` the policies.
            let cfg = dir.join("portico-bench.toml");
            std::fs::write(&cfg, "[ebpf]\nmode = \"off\"\n")?;
            let mut c = Command::new(root.join("target/release/portico"));
            c.arg("serve")
                .arg("-c")
                .arg(&cfg)
                .args([app, "--listen", &addr, "--admin", "off"])
                .args(["--access-log", "off", "--workers", &w, "--venv"])
                .arg(venv);
            c
        }
        Peer::Granian => {
            let mut c = Command::new(bin("granian"));
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
            let mut c = Command::new(bin("gunicorn"));
            c.args(["-w", &w, "-b", &addr, "--log-level", "warning"]);
            if peer == Peer::GunicornGthread {
                c.args(["-k", "gthread", "--threads", "4"]);
            }
            c.arg(app);
            c
        }
        Peer::Uwsgi => {
            let mut c = Command::new(bin("uwsgi"));
            c.args(["--http11-socket", &addr, "--master", "--processes", &w])
                .args(["--module", app, "--disable-logging", "--need-app"])
                .args(["--pythonpath"])
                .arg(dir)
                .args(["--virtualenv"])
                .arg(venv);
            c
        }
        Peer::Bjoern => {
            let mut c = Command::new(bin("python"));
            c.arg(dir.join("bjoern_run.py"))
                .args([app, &port.to_string(), &w]);
            c
        }
    };
    cmd.current_dir(dir).env("PYTHONPATH", dir);
    spawn_server(peer.name(), cmd, port)
}

/// (label, path, POST a 4 KiB body)
type Row = (&'static str, &'static str, bool);

pub(super) fn bench_wsgi(root: &Path, venv: &Path, o: BenchOpts) -> anyhow::Result<()> {
    let (secs, repeats, conns) = (o.secs, o.repeats, o.conns);
    let (workers, threads) = o.workers_and_threads();
    let dir = tempfile_dir()?;
    std::fs::write(dir.join("benchapp.py"), BENCH_APP)?;
    std::fs::write(dir.join("benchflask.py"), BENCH_FLASK)?;
    std::fs::write(dir.join("bjoern_run.py"), BJOERN_RUN)?;
    let post = dir.join("post.lua");
    std::fs::write(&post, POST_LUA)?;
    println!(
        "bench wsgi: {workers} workers each, wrk -t{threads} -c{conns} -d{secs}s, {repeats} interleaved repeats (median), same machine\n"
    );
    let groups: [(&str, &[Row]); 2] = [
        (
            "benchapp:app",
            &[
                ("hello world (13 B)", "/", false),
                ("10 KiB body", "/10k", false),
                ("4 KiB POST echo", "/echo", true),
            ],
        ),
        ("benchflask:app", &[("Flask JSON", "/json", false)]),
    ];
    let mut table = String::from(
        "| row | server | req/s | p50 (ms) | p99 (ms) | portico / server |\n|---|---|---:|---:|---:|---:|\n",
    );
    for (app, rows) in groups {
        let mut servers = Vec::new();
        for peer in Peer::ALL {
            match start_peer(peer, root, venv, &dir, app, workers) {
                Ok(s) => servers.push(s),
                Err(e) => eprintln!("skipping {}: {e:#}", peer.name()),
            }
        }
        for &(label, path, post_body) in rows {
            let script = post_body.then_some(post.as_path());
            for s in &servers {
                wrk_with(s.port, path, threads, conns, 1, false, script)?;
            }
            let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); servers.len()];
            for _ in 0..repeats {
                for (i, s) in servers.iter().enumerate() {
                    samples[i].push(wrk_with(s.port, path, threads, conns, secs, false, script)?);
                }
            }
            let med: Vec<Sample> = samples
                .iter()
                .map(|v| Sample {
                    rps: median(v.iter().map(|s| s.rps).collect()),
                    p50_ms: median(v.iter().map(|s| s.p50_ms).collect()),
                    p99_ms: median(v.iter().map(|s| s.p99_ms).collect()),
                })
                .collect();
            let ours = servers
                .iter()
                .position(|s| s.name == "portico")
                .map(|i| med[i].rps);
            for (s, m) in servers.iter().zip(&med) {
                let ratio = ours.map_or("-".to_string(), |p| format!("{:.2}", p / m.rps));
                let line = format!(
                    "| {label} | {} | {:.0} | {:.2} | {:.2} | {ratio} |\n",
                    s.name, m.rps, m.p50_ms, m.p99_ms
                );
                print!("{line}");
                table.push_str(&line);
            }
        }
        drop(servers);
    }
    finish_bench(root, &dir, "wsgi", &table)
}
