//! The one measurement layer of every bench: where servers and load run (`Layout`), one load
//! run (`oha` for HTTP, `ws-load` for WebSocket echo, `tls-load` for TLS handshakes) and
//! what the server's processes spent during it, from /proc: CPU (utime + stime of the whole
//! process tree) and sampled peak RSS.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::Server;
use super::parse::{parse_h2load, parse_oha, parse_own};
use super::results::Round;
use crate::process::{output, which};

/// Which CPUs the servers and the load generator get.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Workers (cells) per server.
    pub workers: usize,
    /// `taskset -c` lists; `None` when servers and load share every CPU.
    pub server_cpus: Option<String>,
    pub load_cpus: Option<String>,
}

impl Layout {
    /// Per core when the machine has a CPU left for the load: `workers` servers' CPUs from 0,
    /// the load on the rest; otherwise everything shares the CPUs (said in `describe`).
    pub fn new(workers: usize) -> Self {
        let cpus = usable_cpus();
        let workers = workers.max(1);
        if workers < cpus {
            Layout {
                workers,
                server_cpus: Some(cpu_range(0, workers)),
                load_cpus: Some(cpu_range(workers, cpus)),
            }
        } else {
            Layout::shared(workers)
        }
    }

    /// Servers and load share every CPU (`bench steering` needs several cells).
    pub fn shared(workers: usize) -> Self {
        Layout {
            workers,
            server_cpus: None,
            load_cpus: None,
        }
    }

    pub fn describe(&self) -> String {
        match (&self.server_cpus, &self.load_cpus) {
            (Some(s), Some(l)) => format!(
                "{} worker(s) per server pinned to CPU {s}, the load generator on CPU {l}",
                self.workers
            ),
            _ => format!(
                "{} worker(s) per server, servers and load generator sharing all {} CPUs",
                self.workers,
                usable_cpus()
            ),
        }
    }

    /// `bin` as a server process: under `taskset` on the server CPUs when pinned.
    pub fn server(&self, bin: impl AsRef<std::ffi::OsStr>) -> Command {
        pinned(bin, self.server_cpus.as_deref())
    }

    /// `bin` as a load generator or backend: on the load CPUs when pinned.
    pub fn load(&self, bin: impl AsRef<std::ffi::OsStr>) -> Command {
        pinned(bin, self.load_cpus.as_deref())
    }

    /// How many CPUs the load generator has.
    pub fn load_cpu_count(&self) -> usize {
        self.load_cpus
            .as_ref()
            .map_or(usable_cpus(), |_| usable_cpus() - self.workers)
    }

    /// Moves this process (the sampler) off the servers' CPUs, so it does not steal their
    /// time; back onto every CPU when shared (what it starts unpinned inherits this).
    pub fn pin_self(&self) {
        let all = cpu_range(0, usable_cpus());
        let cpus = self.load_cpus.as_deref().unwrap_or(&all);
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn cpu_range(from: usize, to: usize) -> String {
    if to - from == 1 {
        from.to_string()
    } else {
        format!("{from}-{}", to - 1)
    }
}

/// The CPUs this process could use when it started (read once: `pin_self` narrows them later).
pub fn usable_cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

fn pinned(bin: impl AsRef<std::ffi::OsStr>, cpus: Option<&str>) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c]).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// What a load run sends.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// GETs of `path` (POSTs of `body` bytes when not 0), a new connection per request when
    /// `close`.
    Http {
        path: &'static str,
        close: bool,
        body: usize,
        /// https (the server's certificate is not verified: the bench made it).
        tls: bool,
    },
    /// `ws-load` echo messages of `size` bytes on /ws.
    WebSocket { size: usize },
    /// `tls-load`: GETs of `path`, each on a new TLS connection trusting `scratch/<cert>.pem`:
    /// a full handshake, or when `resume` one that resumes the client's previous session.
    NewTls {
        path: &'static str,
        cert: &'static str,
        resume: bool,
    },
    /// `h2load` (nghttp2): GETs of `path` over HTTP/2 on TLS, 10 concurrent streams per
    /// connection.
    Http2 { path: &'static str },
}

impl Load {
    pub const fn get(path: &'static str) -> Self {
        Load::Http {
            path,
            close: false,
            body: 0,
            tls: false,
        }
    }
    pub const fn get_close(path: &'static str) -> Self {
        Load::Http {
            path,
            close: true,
            body: 0,
            tls: false,
        }
    }
    /// The same load over https.
    pub const fn over_tls(self) -> Self {
        match self {
            Load::Http {
                path, close, body, ..
            } => Load::Http {
                path,
                close,
                body,
                tls: true,
            },
            other => other,
        }
    }
    /// "req" or "msg": what one counted unit is.
    pub fn unit(self) -> &'static str {
        match self {
            Load::Http { .. } | Load::NewTls { .. } | Load::Http2 { .. } => "req",
            Load::WebSocket { .. } => "msg",
        }
    }
}

/// One process from /proc/PID/stat.
struct Stat {
    ppid: u32,
    state: char,
    ticks: u64,
    rss_pages: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces and parentheses).
    let f: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: u32::try_from(num(1)?).ok()?,
        ticks: num(11)? + num(12)?,
        rss_pages: num(21)?,
    })
}

/// CPU ticks and resident pages of `root` and all its descendants, now.
#[derive(Clone, Copy, Default)]
struct TreeSample {
    ticks: u64,
    root_ticks: u64,
    rss_pages: u64,
}

fn tree_sample(root: u32) -> anyhow::Result<TreeSample> {
    let mut all: HashMap<u32, Stat> = HashMap::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A process that exits between the listing and the read is gone from the tree too.
        if let Some(s) = stat(pid) {
            all.insert(pid, s);
        }
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, s) in &all {
        children.entry(s.ppid).or_default().push(*pid);
    }
    let root_stat = all
        .get(&root)
        .with_context(|| format!("server process {root} is gone"))?;
    let mut sample = TreeSample {
        root_ticks: root_stat.ticks,
        ..TreeSample::default()
    };
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if let Some(s) = all.get(&pid) {
            sample.ticks += s.ticks;
            sample.rss_pages += s.rss_pages;
        }
        todo.extend(children.get(&pid).into_iter().flatten());
    }
    Ok(sample)
}

/// CPU time and resident memory of a server's whole process tree, now.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub cpu_us: f64,
    pub rss_kib: f64,
}

/// `root`'s and its descendants' CPU time and RSS (for families that measure without `measure`).
pub fn usage(ctx: &Ctx, root: u32) -> anyhow::Result<Usage> {
    let s = tree_sample(root)?;
    Ok(Usage {
        cpu_us: s.ticks as f64 / ctx.units.hz * 1e6,
        rss_kib: s.rss_pages as f64 * ctx.units.page_kib,
    })
}

/// The pids of `root`'s children whose command line contains `arg` (Portico's cells).
pub fn children_with_arg(root: u32, arg: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == root))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}

/// Machine constants for turning ticks and pages into µs and KiB.
#[derive(Clone, Copy, Debug)]
pub struct Units {
    pub hz: f64,
    pub page_kib: f64,
}

impl Units {
    pub fn read() -> Self {
        let conf = |name: &str, default: f64| {
            output(Command::new("getconf").arg(name))
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(default)
        };
        Units {
            hz: conf("CLK_TCK", 100.0),
            page_kib: conf("PAGESIZE", 4096.0) / 1024.0,
        }
    }
}

/// How often the server tree's RSS is sampled (and the load's end looked for) during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Everything one measured run needs besides the server.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub root: PathBuf,
    pub layout: Layout,
    pub scratch: PathBuf,
    pub units: Units,
}

/// One load run of `secs` seconds with `conns` connections against `server`, with the server's
/// CPU and peak RSS over the same window. Fails when no request succeeded or the load failed.
pub fn measure(
    ctx: &Ctx,
    server: &Server,
    load: Load,
    conns: usize,
    secs: u64,
) -> anyhow::Result<Round> {
    let pid = server.child.id();
    let out_path = ctx.scratch.join("load.out");
    let err_path = ctx.scratch.join("load.err");
    let mut cmd = load_command(ctx, server.port, load, conns, secs)?;
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?);
    let before = tree_sample(pid)?;
    let mut peak_rss = before.rss_pages;
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("starting the load generator")?;
    let load_pid = child.id();
    // The load's own CPU is read while it is a zombie: exited (all threads' time summed into
    // its stat) but not yet reaped.
    let (load_ticks, after) = loop {
        std::thread::sleep(SAMPLE_EVERY);
        let s = tree_sample(pid)?;
        peak_rss = peak_rss.max(s.rss_pages);
        match stat(load_pid) {
            Some(st) if st.state == 'Z' => break (st.ticks, s),
            Some(_) => {}
            None => break (0, s),
        }
        if t0.elapsed() > Duration::from_secs(secs + 60) {
            let _ = child.kill();
            bail!("the load generator ran 60 s past its {secs} s");
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    let status = child.wait()?;
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        bail!(
            "load generator failed ({status}):\n{text}{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
    }
    let parsed = match load {
        Load::Http { .. } => parse_oha(&text)?,
        Load::WebSocket { .. } => parse_own(&text, "messages")?,
        Load::NewTls { .. } => parse_own(&text, "requests")?,
        Load::Http2 { .. } => parse_h2load(&text)?,
    };
    if parsed.count <= 0.0 {
        bail!(
            "{}: no request succeeded ({} errors)",
            server.name,
            parsed.errors
        );
    }
    let us = |ticks: u64| ticks as f64 / ctx.units.hz * 1e6;
    let cpu = us(after.ticks.saturating_sub(before.ticks));
    let load_cpus = ctx.layout.load_cpu_count();
    Ok(Round {
        rate: parsed.count / parsed.secs.unwrap_or(wall),
        count: parsed.count,
        errors: parsed.errors,
        wall_s: wall,
        latency_ms: parsed.latency_ms,
        cpu_us: cpu / parsed.count,
        root_cpu_us: us(after.root_ticks.saturating_sub(before.root_ticks)) / parsed.count,
        server_busy: cpu / 1e6 / wall,
        load_busy: us(load_ticks) / 1e6 / wall / load_cpus as f64,
        peak_rss_kib: peak_rss as f64 * ctx.units.page_kib,
        extra: BTreeMap::new(),
    })
}

fn load_command(
    ctx: &Ctx,
    port: u16,
    load: Load,
    conns: usize,
    secs: u64,
) -> anyhow::Result<Command> {
    Ok(match load {
        Load::Http {
            path,
            close,
            body,
            tls,
        } => {
            let mut cmd = ctx.layout.load(oha_bin().context("oha not installed")?);
            // -w: requests still running at the deadline are waited for, not counted as
            // errors; no latency correction: each connection sends when the last answer came.
            cmd.args(["--no-tui", "--output-format", "json", "-w"])
                .args(["-z", &format!("{secs}s"), "-c", &conns.to_string()]);
            if close {
                cmd.arg("--disable-keepalive");
            }
            if body > 0 {
                let file = ctx.scratch.join(format!("body-{body}.bin"));
                if !file.exists() {
                    std::fs::write(&file, vec![b'a'; body])?;
                }
                cmd.args(["-m", "POST", "-T", "application/octet-stream", "-D"])
                    .arg(file);
            }
            if tls {
                // oha keeps TLS sessions: each new connection resumes one.
                cmd.arg("--insecure");
                cmd.arg(format!("https://127.0.0.1:{port}{path}"));
            } else {
                cmd.arg(format!("http://127.0.0.1:{port}{path}"));
            }
            cmd
        }
        Load::WebSocket { size } => {
            let mut cmd = ctx.layout.load(ctx.root.join("target/release/ws-load"));
            cmd.arg(format!("ws://127.0.0.1:{port}/ws")).args([
                "--connections",
                &conns.to_string(),
                "--duration",
                &secs.to_string(),
                "--size",
                &size.to_string(),
            ]);
            cmd
        }
        Load::NewTls { path, cert, resume } => {
            let mut cmd = ctx.layout.load(ctx.root.join("target/release/tls-load"));
            cmd.arg(format!("127.0.0.1:{port}"))
                .args(["--path", path, "--ca"])
                .arg(ctx.scratch.join(format!("{cert}.pem")))
                .args(["--connections", &conns.to_string()])
                .args(["--duration", &secs.to_string()]);
            if resume {
                cmd.arg("--resume");
            }
            cmd
        }
        Load::Http2 { path } => {
            let mut cmd = ctx
                .layout
                .load(which("h2load").context("h2load not installed")?);
            cmd.args([
                "-D",
                &secs.to_string(),
                "-c",
                &conns.to_string(),
                "-m",
                "10",
            ])
            .arg(format!("https://127.0.0.1:{port}{path}"));
            cmd
        }
    })
}

/// `oha` on PATH or where `cargo install` puts it.
pub fn oha_bin() -> Option<PathBuf> {
    which("oha").or_else(|| {
        let p = Path::new(&std::env::var_os("HOME")?).join(".cargo/bin/oha");
        p.is_file().then_some(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_pins_servers_first() {
        assert_eq!(cpu_range(0, 1), "0");
        assert_eq!(cpu_range(1, 4), "1-3");
    }
}
