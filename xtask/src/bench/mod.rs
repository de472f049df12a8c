//! `cargo xtask bench`: Portico against its peers, started side by side in the same run and
//! measured with wrk in interleaved repeats. Shared here: starting and stopping servers, wrk and
//! its parsing, medians, the scratch directory and the result file. One module per scenario
//! family.

mod asgi;
mod metrics;
mod proxy;
mod static_files;
mod steering;
mod tunnel;
mod wsgi;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{compile, setup};

/// Options shared by every bench (the `bench` command line).
pub struct BenchOpts {
    pub secs: u64,
    pub repeats: usize,
    pub conns: usize,
    pub workers: Option<usize>,
    pub threads: Option<usize>,
}

/// Installs what the benches need, builds the server and runs bench `which`.
pub fn bench(root: &Path, which: &str, opts: BenchOpts) -> anyhow::Result<()> {
    setup::setup(setup::TEST_PACKAGES)?;
    setup::setup_packages(setup::BENCH_PACKAGES)?;
    compile::build()?;
    match which {
        "static" => static_files::bench_static(root, opts),
        "wsgi" => {
            let venv = setup::setup_venv(root, &[setup::TEST_PY, setup::BENCH_PY].concat())?;
            wsgi::bench_wsgi(root, &venv, opts)
        }
        "asgi" => {
            compile::build_bench_backend()?;
            let venv = setup::setup_venv(root, &[setup::TEST_PY, setup::BENCH_PY].concat())?;
            asgi::bench_asgi(root, &venv, opts)
        }
        "metrics" => metrics::bench_metrics(root, opts),
        "steering" => steering::bench_steering(root, opts),
        "proxy" => {
            compile::build_bench_backend()?;
            proxy::bench_proxy(root, opts)
        }
        "tunnel" => {
            compile::build_bench_backend()?;
            tunnel::bench_tunnel(root, opts)
        }
        other => {
            bail!(
                "unknown bench {other:?} (available: static, wsgi, asgi, metrics, steering, proxy, tunnel)"
            )
        }
    }
}

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

#[derive(Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl BenchOpts {
    /// Workers per server (default: usable CPUs) and wrk threads (default: the workers, so new
    /// connections start on every CPU).
    fn workers_and_threads(&self) -> (usize, usize) {
        let workers = self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
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

/// The app of the WSGI and metrics benches: hello world, a 10 KiB body and a POST echo.
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

/// A portico with `ebpf` as its `[ebpf]` section, a static route at /static/ and `app` at /.
#[expect(
    clippy::too_many_arguments,
    reason = "each bench passes a different mix; a builder would only rename them"
)]
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
