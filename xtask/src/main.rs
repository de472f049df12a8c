//! Project tasks: `setup` (toolchain parts and packages, idempotent), `run` (the demo), `test`
//! (the whole suite), `bench` (Portico against its peers, side by side).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

const BPF_LINKER_VERSION: &str = "0.10.4";
/// Debian packages the test suite needs: network namespaces for the eBPF tests (and ethtool to
/// turn off a veth's checksum offload), promtool (from `prometheus`) for the metrics checks,
/// headless Chromium for the status page.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("prometheus", "promtool"),
    ("chromium", "chromium"),
];
/// Debian packages the benchmarks need (libev-dev: bjoern builds against it).
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("libev-dev", "/usr/include/ev.h"),
];
/// Python packages the end-to-end tests need, in the project's venv (`.venv`)
/// (prometheus-client: its strict OpenMetrics parser checks the exposition).
const TEST_PY: &[&str] = &["flask>=3,<4", "django>=5,<6", "prometheus-client>=0.20,<1"];
/// Python packages for the WSGI bench: the peers.
const BENCH_PY: &[&str] = &[
    "gunicorn>=23",
    "granian>=2,<3",
    "uwsgi>=2.0.28",
    "bjoern>=3.2",
];

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need (nightly rust-src, bpf-linker, apt packages).
    Setup,
    /// Build everything and serve the demo site on http://127.0.0.1:8080 (admin 127.0.0.1:9090).
    Run {
        /// Extra arguments for `portico serve`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the whole test suite (unit and end-to-end).
    Test,
    /// Benchmarks against peers, started side by side in the same run.
    Bench {
        /// Which bench: `static` (nginx), `wsgi` (granian, gunicorn, uWSGI, bjoern),
        /// `metrics` (the cost of the per-request histograms, and scrape time) or `steering`
        /// (the steering policies side by side, and the XDP guard's cost per packet).
        #[arg(default_value = "static")]
        which: String,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Interleaved repeats per row (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// wrk connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Workers for both servers (default: usable CPUs).
        #[arg(long)]
        workers: Option<usize>,
        /// wrk threads (default: the worker count, so new connections start on every CPU).
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Setup => setup(TEST_PACKAGES),
        Cmd::Run { args } => {
            setup(TEST_PACKAGES)?;
            build()?;
            let mut cmd = Command::new(root.join("target/release/portico"));
            cmd.args(["serve", "-c", "examples/demo/portico.toml"])
                .args(args);
            let st = cmd.status().context("running portico")?;
            if !st.success() {
                bail!("portico exited with {st}");
            }
            Ok(())
        }
        Cmd::Test => {
            setup(TEST_PACKAGES)?;
            let venv = setup_venv(&root, TEST_PY)?;
            build()?;
            // Unit tests of every host crate (lb-ebpf only builds for the BPF target).
            run(Command::new("cargo").args([
                "test",
                "--release",
                "-p",
                "lb-common",
                "-p",
                "lb-userspace",
                "-p",
                "wsgi-worker",
                "-p",
                "xtask",
            ]))?;
            // End-to-end tests start many servers under load: one at a time on small machines,
            // with output shown so SKIP lines are visible.
            run(Command::new("cargo").env("PORTICO_TEST_VENV", &venv).args([
                "test",
                "--release",
                "-p",
                "portico-tests",
                "--",
                "--test-threads=1",
                "--nocapture",
            ]))
        }
        Cmd::Bench {
            which,
            duration,
            repeats,
            connections,
            workers,
            threads,
        } => {
            setup(TEST_PACKAGES)?;
            setup_packages(BENCH_PACKAGES)?;
            build()?;
            let opts = BenchOpts {
                secs: duration,
                repeats,
                conns: connections,
                workers,
                threads,
            };
            match which.as_str() {
                "static" => bench_static(&root, opts),
                "wsgi" => {
                    let venv = setup_venv(&root, &[TEST_PY, BENCH_PY].concat())?;
                    bench_wsgi(&root, &venv, opts)
                }
                "metrics" => bench_metrics(&root, opts),
                "steering" => bench_steering(&root, opts),
                other => {
                    bail!("unknown bench {other:?} (available: static, wsgi, metrics, steering)")
                }
            }
        }
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(dir
        .parent()
        .context("xtask has no parent dir")?
        .to_path_buf())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn build() -> anyhow::Result<()> {
    run(Command::new("cargo").args(["build", "--release", "-p", "lb-userspace"]))
}

/// Idempotent: each step checks first and does nothing when already done.
fn setup(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask setup: adding rust-src to the nightly toolchain");
        let toolchains =
            output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
        if !toolchains.lines().any(|l| l.starts_with("nightly")) {
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]))?;
        }
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION}");
        run(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ]))?;
    }
    setup_packages(packages)
}

/// The project's virtualenv (`.venv`, from the `python3` on PATH) with `packages` installed;
/// pip runs only when the list changed since the last install.
fn setup_venv(root: &Path, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("xtask: creating {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("creating the test virtualenv (python3 -m venv)")?;
    }
    let mut wanted: Vec<&str> = packages.to_vec();
    wanted.sort_unstable();
    let marker = venv.join(format!("portico-{}.txt", short_hash(&wanted.join("\n"))));
    if !marker.exists() {
        eprintln!("xtask: pip install {}", wanted.join(" "));
        run(Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(&wanted))
        .context("installing Python packages into .venv")?;
        std::fs::write(&marker, wanted.join("\n"))?;
    }
    Ok(venv)
}

fn short_hash(s: &str) -> String {
    // FNV-1a: stable across runs (the marker names a package list).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

fn setup_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, bin)| which(bin).is_none())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing Debian packages {missing:?}");
    let sudo = !rustix_is_root();
    let apt = |args: &[&str]| {
        let mut c = if sudo {
            Command::new("sudo")
        } else {
            Command::new("apt-get")
        };
        if sudo {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update", "-qq"]))?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    run(&mut install)?;
    if missing.contains(&"prometheus") {
        // Only its tools are wanted: a packaged server started by systemd would hold :9090.
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "prometheus"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    Ok(())
}

fn rustix_is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------- bench static

struct Server {
    name: &'static str,
    child: std::process::Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-QUIT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Servers run in their own process group: take any worker left behind with them.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on 127.0.0.1:{port}")
}

/// Starts a server in its own process group, output discarded, and waits for its port.
fn spawn_server(name: &'static str, mut cmd: Command, port: u16) -> anyhow::Result<Server> {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    // Built before waiting, so a server that never comes up is still stopped (Drop).
    let server = Server { name, child, port };
    wait_port(port).with_context(|| format!("{name} did not start"))?;
    Ok(server)
}

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

#[derive(Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

struct BenchOpts {
    secs: u64,
    repeats: usize,
    conns: usize,
    workers: Option<usize>,
    threads: Option<usize>,
}

impl BenchOpts {
    /// Workers per server (default: usable CPUs) and wrk threads (default: the workers, so new
    /// connections start on every CPU).
    fn workers_and_threads(&self) -> (usize, usize) {
        let workers = self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        (workers, self.threads.unwrap_or(workers))
    }
}

fn wrk(
    port: u16,
    path: &str,
    threads: usize,
    conns: usize,
    secs: u64,
    close: bool,
) -> anyhow::Result<Sample> {
    wrk_with(port, path, threads, conns, secs, close, None)
}

fn wrk_with(
    port: u16,
    path: &str,
    threads: usize,
    conns: usize,
    secs: u64,
    close: bool,
    script: Option<&Path>,
) -> anyhow::Result<Sample> {
    let mut cmd = Command::new("wrk");
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.args([
        "-t",
        &threads.to_string(),
        "-c",
        &conns.to_string(),
        "-d",
        &format!("{secs}s"),
        "--latency",
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = cmd.output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let pct = |p: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .and_then(|v| parse_ms(v.trim()))
            .unwrap_or(f64::NAN)
    };
    Ok(Sample {
        rps,
        p50_ms: pct("50%"),
        p99_ms: pct("99%"),
    })
}

fn parse_ms(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => return None,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn bench_static(root: &Path, o: BenchOpts) -> anyhow::Result<()> {
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

/// Prints the table, writes it to bench-results/NAME.md and removes the scratch directory.
fn finish_bench(root: &Path, scratch: &Path, name: &str, table: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("bench-results"))?;
    let out = root.join(format!("bench-results/{name}.md"));
    std::fs::write(&out, table)?;
    println!("\n{table}\n(written to bench-results/{name}.md)");
    let _ = std::fs::remove_dir_all(scratch);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("portico-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The bench directory for a static + WSGI Portico: `www/1k.bin` and the app module `app`.
fn mixed_bench_dir(app: (&str, &str)) -> anyhow::Result<PathBuf> {
    let dir = tempfile_dir()?;
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/1k.bin"), vec![b'x'; 1024])?;
    std::fs::write(dir.join(app.0), app.1)?;
    Ok(dir)
}

// ---------------------------------------------------------------- bench wsgi

const BENCH_APP: &str = r#"
import json

HELLO = b"Hello, World!"
TEN_K = b"x" * 10240

def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]

def ten_k(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", "10240")])
    return [TEN_K]

def echo(environ, start_response):
    n = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(n)
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
    return [body]

ROUTES = {"/": hello, "/10k": ten_k, "/echo": echo}

def app(environ, start_response):
    return ROUTES[environ["PATH_INFO"]](environ, start_response)
"#;

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

fn bench_wsgi(root: &Path, venv: &Path, o: BenchOpts) -> anyhow::Result<()> {
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

// ---------------------------------------------------------------- bench metrics

/// Starts portico with a config file in `dir` (static `/static/` + WSGI `/`) and `extra` TOML.
fn start_portico_cfg(
    root: &Path,
    dir: &Path,
    name: &'static str,
    extra: &str,
    workers: usize,
    admin: bool,
) -> anyhow::Result<(Server, Option<u16>)> {
    start_portico_with(
        root,
        dir,
        name,
        "[ebpf]\nmode = \"off\"",
        extra,
        "benchapp:app",
        workers,
        admin,
    )
}

/// A portico with `ebpf` as its `[ebpf]` section, a static route at /static/ and `app` at /.
#[allow(clippy::too_many_arguments)]
fn start_portico_with(
    root: &Path,
    dir: &Path,
    name: &'static str,
    ebpf: &str,
    extra: &str,
    app: &str,
    workers: usize,
    admin: bool,
) -> anyhow::Result<(Server, Option<u16>)> {
    let port = free_port()?;
    let admin_port = if admin { Some(free_port()?) } else { None };
    let cfg = dir.join(format!("{}.toml", name.replace(' ', "-")));
    std::fs::write(
        &cfg,
        format!(
            "{ebpf}\n{extra}\n[[route]]\nprefix = \"/static/\"\nstatic = {{ root = \"{www}\" }}\n[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"{app}\", chdir = \"{dir}\" }}\n",
            www = dir.join("www").display(),
            dir = dir.display()
        ),
    )?;
    let admin_arg = admin_port.map_or("off".to_string(), |p| format!("127.0.0.1:{p}"));
    let mut cmd = Command::new(root.join("target/release/portico"));
    cmd.arg("serve")
        .arg("-c")
        .arg(&cfg)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            &admin_arg,
        ])
        .args(["--access-log", "off", "--workers", &workers.to_string()]);
    let server = spawn_server(name, cmd, port)?;
    if let Some(a) = admin_port {
        wait_port(a)?;
    }
    Ok((server, admin_port))
}

fn bench_metrics(root: &Path, o: BenchOpts) -> anyhow::Result<()> {
    let (secs, repeats, conns) = (o.secs, o.repeats, o.conns);
    let (workers, threads) = o.workers_and_threads();
    let dir = mixed_bench_dir(("benchapp.py", BENCH_APP))?;
    let servers = [
        start_portico_cfg(root, &dir, "metrics on", "", workers, false)?.0,
        start_portico_cfg(
            root,
            &dir,
            "metrics off",
            "[metrics]\nenabled = false",
            workers,
            false,
        )?
        .0,
    ];
    println!(
        "bench metrics: {workers} workers, wrk -t{threads} -c{conns} -d{secs}s, {repeats} interleaved repeats (median)\n"
    );
    let mut table = String::from(
        "| row | metrics on req/s | metrics off req/s | cost |\n|---|---:|---:|---:|\n",
    );
    for (label, path) in [("static 1 KiB", "/static/1k.bin"), ("WSGI hello", "/")] {
        for s in &servers {
            wrk(s.port, path, threads, conns, 1, false)?;
        }
        let mut samples: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..repeats {
            for (i, s) in servers.iter().enumerate() {
                samples[i].push(wrk(s.port, path, threads, conns, secs, false)?.rps);
            }
        }
        let (on, off) = (median(samples[0].clone()), median(samples[1].clone()));
        let line = format!(
            "| {label} | {on:.0} | {off:.0} | {:+.1}% |\n",
            (off - on) / off * 100.0
        );
        print!("{line}");
        table.push_str(&line);
    }
    drop(servers);

    // Scrape time with 64 cells' worth of series (cells share the CPUs here).
    let (big, admin) = start_portico_cfg(root, &dir, "64 cells", "", 64, true)?;
    let admin = admin.expect("admin port");
    for _ in 0..3 {
        wrk(big.port, "/static/1k.bin", threads, 64, 1, false)?;
        wrk(big.port, "/", threads, 64, 1, false)?;
    }
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        scrape(admin)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(50));
    }
    let max = times.iter().cloned().fold(0.0, f64::max);
    let line = format!(
        "| scrape of 64 cells (ms, median / max of 30) | {:.2} | {max:.2} | |\n",
        median(times)
    );
    print!("{line}");
    table.push_str(&line);
    drop(big);
    finish_bench(root, &dir, "metrics", &table)
}

/// The steering bench's app: `/sleep` holds its cell's Python thread for 200 ms.
const STALL_APP: &str = r#"import time
def app(environ, start_response):
    if environ['PATH_INFO'] == '/sleep':
        time.sleep(0.2)
    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', '5')])
    return [b'hello']
"#;

/// One admin scrape's body.
fn scrape(admin: u16) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

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

fn bench_steering(root: &Path, o: BenchOpts) -> anyhow::Result<()> {
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
