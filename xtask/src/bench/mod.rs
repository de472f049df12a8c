//! `cargo xtask bench`: Portico against its peers, started side by side in the same run and
//! measured in interleaved rounds through one measurement layer (`measure`: oha / ws-load, CPU
//! and RSS of each server's processes from /proc). Every run writes
//! target/bench/<timestamp>/results.json and report.html and the bench-results/*.md tables;
//! `--compare` flags regressions against a previous results.json. One module per family.

mod asgi;
mod compare;
mod idle;
mod measure;
mod metrics;
mod parse;
pub mod profile;
mod proxy;
mod report;
mod results;
mod row;
mod runner;
mod static_files;
mod steering;
mod targets;
mod tls;
mod tunnel;
mod wsgi;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{compile, setup};
pub use measure::oha_bin;
use measure::{Ctx, Layout, Units};
use results::{Family, Results};

/// Every family, in the order `bench all` runs them.
pub const FAMILIES: [&str; 9] = [
    "static", "wsgi", "asgi", "proxy", "tunnel", "metrics", "steering", "tls", "idle",
];

/// Options shared by every bench (the `bench` command line).
#[derive(Debug)]
pub struct BenchOpts {
    pub secs: u64,
    pub repeats: usize,
    pub conns: usize,
    /// Workers per server; the default is one (per core), and `steering` uses every CPU.
    pub workers: Option<usize>,
    /// A previous results.json to compare this run with.
    pub compare: Option<PathBuf>,
    /// Compare this results.json instead of running (with `compare`); alone, draw its report
    /// and charts again.
    pub results: Option<PathBuf>,
    /// Relative change beyond the spread that counts as a regression.
    pub tolerance: f64,
}

impl BenchOpts {
    /// An empty family run with this run's settings.
    fn family(&self, name: &str, ctx: &Ctx, setup: String) -> Family {
        Family {
            family: name.to_string(),
            setup: format!(
                "{setup}; {}s per run, {} interleaved rounds (median, min-max)",
                self.secs, self.repeats
            ),
            server_cpus: ctx.layout.server_cpus.clone(),
            load_cpus: ctx.layout.load_cpus.clone(),
            workers: ctx.layout.workers,
            secs: self.secs,
            repeats: self.repeats.max(1),
            scenarios: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Per core unless --workers asks for more; steering spreads its cells over every CPU.
    fn layout(&self, family: &str) -> Layout {
        if family == "steering" {
            Layout::shared(self.workers.unwrap_or_else(measure::usable_cpus).max(2))
        } else {
            Layout::new(self.workers.unwrap_or(1))
        }
    }
}

/// Installs what the benches need, builds, runs bench `which` (a family or `all`), writes the
/// results and the report, and compares with a previous run when asked.
pub fn bench(root: &Path, which: &str, opts: BenchOpts) -> anyhow::Result<()> {
    match (&opts.compare, &opts.results) {
        (Some(prev), Some(cur)) => return compare_files(prev, cur, opts.tolerance).map(|_| ()),
        (None, Some(cur)) => {
            // Drawn again from its figures, beside it (after a change to the report or targets).
            let mut r = Results::read(cur)?;
            r.targets = targets::judge(&r);
            let dir = cur.parent().unwrap_or(Path::new("."));
            r.write_report(dir)?;
            println!("report:  {}", dir.join("report.html").display());
            return Ok(());
        }
        _ => {}
    }
    let families: Vec<&str> = if which == "all" {
        FAMILIES.to_vec()
    } else if FAMILIES.contains(&which) {
        vec![which]
    } else {
        bail!(
            "unknown bench {which:?} (available: {}, all)",
            FAMILIES.join(", ")
        )
    };
    let previous = opts.compare.as_deref().map(Results::read).transpose()?;
    setup::setup(setup::TEST_PACKAGES)?;
    setup::setup_packages(setup::BENCH_PACKAGES)?;
    setup::setup_oha()?;
    compile::build()?;
    compile::build_bench_backend()?;
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let mut results = Results::new(format!("cargo xtask {command}"));
    println!(
        "machine: {}
",
        results.machine.describe()
    );
    for name in families {
        let family = run_family(root, name, &opts).with_context(|| format!("bench {name}"))?;
        results.families.push(family);
        // Written after every family, so a later failure keeps what was measured.
        results.write(root)?;
    }
    let dir = results.write(root)?;
    std::fs::create_dir_all(root.join("bench-results"))?;
    for f in &results.families {
        let mut md = runner::markdown(f, &results.machine.describe());
        md.push_str(&targets_markdown(&results, &f.family));
        std::fs::write(root.join(format!("bench-results/{}.md", f.family)), &md)?;
        println!("\n{md}(written to bench-results/{}.md)", f.family);
    }
    println!(
        "results: {}\nreport:  {}",
        dir.join("results.json").display(),
        dir.join("report.html").display()
    );
    if let Some(prev) = previous {
        let (text, regressions) = compare::compare(&prev, &results, opts.tolerance);
        std::fs::write(dir.join("compare.md"), &text)?;
        println!("\n{text}");
        if regressions > 0 {
            bail!("{regressions} regression(s) against {}", prev.started);
        }
    }
    Ok(())
}

/// `--compare OLD --results NEW`: no run, only the comparison.
fn compare_files(prev: &Path, cur: &Path, tolerance: f64) -> anyhow::Result<usize> {
    let (old, new) = (Results::read(prev)?, Results::read(cur)?);
    let (text, regressions) = compare::compare(&old, &new, tolerance);
    println!("{text}");
    if regressions > 0 {
        bail!("{regressions} regression(s) against {}", old.started);
    }
    Ok(regressions)
}

/// The targets of one family as a Markdown table (empty when it has none).
fn targets_markdown(results: &Results, family: &str) -> String {
    let rows: Vec<_> = results
        .targets
        .iter()
        .filter(|v| v.family == family)
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "\n| target | scenario | req/s ratio | CPU/req ratio | verdict | from |\n|---|---|---:|---:|---|---|\n",
    );
    let x = |o: Option<f64>| o.map_or("-".into(), |v| format!("{v:.2}x"));
    for v in rows {
        let met = match v.met {
            Some(true) => "met",
            Some(false) => "not met",
            None => "not measured",
        };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {met} | {} |\n",
            v.want,
            v.label,
            x(v.ratio),
            x(v.cpu_ratio),
            v.source
        ));
    }
    t
}

/// The measurement context of one family: its layout, a fresh scratch directory.
fn context(root: &Path, family: &str, opts: &BenchOpts) -> anyhow::Result<Ctx> {
    let scratch =
        std::env::temp_dir().join(format!("portico-bench-{}-{family}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let layout = opts.layout(family);
    layout.pin_self();
    Ok(Ctx {
        root: root.to_path_buf(),
        layout,
        scratch,
        units: Units::read(),
    })
}

fn run_family(root: &Path, name: &str, opts: &BenchOpts) -> anyhow::Result<Family> {
    let ctx = context(root, name, opts)?;
    println!("== bench {name}: {}", ctx.layout.describe());
    let venv = || setup::setup_venv(root, &[setup::TEST_PY, setup::BENCH_PY].concat());
    let family = match name {
        "static" => static_files::bench_static(&ctx, opts),
        "wsgi" => wsgi::bench_wsgi(&ctx, &venv()?, opts),
        "asgi" => asgi::bench_asgi(&ctx, &venv()?, opts),
        "proxy" => proxy::bench_proxy(&ctx, opts),
        "tunnel" => tunnel::bench_tunnel(&ctx, opts),
        "metrics" => metrics::bench_metrics(&ctx, opts),
        "steering" => steering::bench_steering(&ctx, opts),
        "tls" => tls::bench_tls(&ctx, opts),
        "idle" => idle::bench_idle(&ctx, opts),
        other => bail!("unknown bench {other:?}"),
    };
    let _ = std::fs::remove_dir_all(&ctx.scratch);
    family
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
/// nginx with the benches' common settings (the workers pinned by `auto` from CPU 0, no access
/// log, keep-alive without limits) and the `http` block's own lines, which get the port.
fn start_nginx(ctx: &Ctx, dir: &Path, http: impl FnOnce(u16) -> String) -> anyhow::Result<Server> {
    start_nginx_with(
        ctx,
        dir,
        "worker_rlimit_nofile 65536;\nevents { worker_connections 16384; }",
        http,
    )
}

/// `start_nginx` with its own descriptor limit and `events` block (`limits`).
fn start_nginx_with(
    ctx: &Ctx,
    dir: &Path,
    limits: &str,
    http: impl FnOnce(u16) -> String,
) -> anyhow::Result<Server> {
    let port = free_port()?;
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes {w};\nworker_cpu_affinity auto;\ndaemon off;\nmaster_process on;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n{limits}\n\
             http {{\n  access_log off;\n  tcp_nodelay on;\n\
               keepalive_requests 1000000;\n  keepalive_timeout 75s;\n{http}}}\n",
            w = ctx.layout.workers,
            d = dir.display(),
            http = http(port),
        ),
    )?;
    let mut cmd = ctx
        .layout
        .server(crate::process::which("nginx").context("nginx not installed")?);
    cmd.arg("-c").arg(&conf).arg("-p").arg(dir);
    spawn_server("nginx", cmd, port)
}

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// The bench directory for a static + WSGI Portico: `www/1k.bin` and the app module `app`.
fn mixed_bench_dir(dir: &Path, app: (&str, &str)) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/1k.bin"), vec![b'x'; 1024])?;
    std::fs::write(dir.join(app.0), app.1)?;
    Ok(())
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

/// A portico with `ebpf` as its `[ebpf]` section, a static route at /static/ and `app` at /,
/// files in the scratch directory, `layout.workers` cells on the layout's server CPUs.
fn start_portico_with(
    ctx: &Ctx,
    layout: &Layout,
    name: &'static str,
    ebpf: &str,
    extra: &str,
    app: &str,
    admin: bool,
) -> anyhow::Result<(Server, Option<u16>)> {
    let dir = &ctx.scratch;
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
    let cmd = portico_serve(ctx, layout, &cfg, port, admin_port);
    let server = spawn_server(name, cmd, port)?;
    if let Some(a) = admin_port {
        wait_port(a)?;
    }
    Ok((server, admin_port))
}

/// `portico serve -c CFG --listen 127.0.0.1:PORT --admin ADDR|off --access-log off --workers W`
/// on `layout`'s server CPUs: how the families that write a config start Portico.
fn portico_serve(ctx: &Ctx, layout: &Layout, cfg: &Path, port: u16, admin: Option<u16>) -> Command {
    let admin = admin.map_or("off".to_string(), |p| format!("127.0.0.1:{p}"));
    let mut cmd = layout.server(ctx.root.join("target/release/portico"));
    cmd.arg("serve")
        .arg("-c")
        .arg(cfg)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &admin, "--access-log", "off"])
        .args(["--workers", &layout.workers.to_string()]);
    cmd
}

/// The whole answer (head and body) to one GET of `path` on its own connection: the checks
/// made before a server is timed, and the admin scrapes.
fn get_close(port: u16, path: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .with_context(|| format!("GET {path} on :{port}"))?;
    Ok(resp)
}

/// One admin scrape's answer.
fn scrape(admin: u16) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&get_close(admin, "/metrics")?).into_owned())
}

fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}
