//! Harness for end-to-end tests: starts the real `portico` binary on ephemeral ports, reads the
//! addresses it logs, and speaks raw HTTP/1.1 to it (so malformed requests can be sent too).
#![forbid(unsafe_code)]

pub mod certs;
mod faultfs;
mod http;
mod load;
pub mod mixed;
mod netns;
pub mod smuggle;
pub mod smuggle_cases;
mod smuggle_pipeline;
pub mod strict;
pub mod tls_site;
mod upstream;

pub use faultfs::FaultyDir;
pub use http::{Conn, Response, get, raw, raw_request, request};
pub use load::{Load, Target};
pub use netns::Netns;
pub use upstream::{Bind, Upstream, established, free_port, tagged_backend};

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the portico binary built for this test run.
pub fn portico_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PORTICO_BIN") {
        return PathBuf::from(p);
    }
    // tests/ is a workspace member: target/<profile>/portico next to the test executable's dir.
    let exe = std::env::current_exe().expect("test exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("portico");
    assert!(
        bin.exists(),
        "{} missing: build it first (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// Prints the marker `cargo xtask test` counts as a skipped test, `SKIP <test>: <reason>`; the
/// caller returns right after. `test` is the test function's name (checked against the name
/// libtest runs it under, which is the test thread's name).
pub fn skip(test: &str, reason: &str) {
    check_test_name(test);
    println!("SKIP {test}: {reason}");
}

/// Prints the marker of a skipped part, `SKIP-PART <test> (<part>): <reason>`: the test ran
/// its main part and goes on (or returns) with a pass; the summary of `cargo xtask test` lists
/// the part it left out.
pub fn skip_part(test: &str, part: &str, reason: &str) {
    check_test_name(test);
    println!("SKIP-PART {test} ({part}): {reason}");
}

/// A marker must name the test that prints it, or the summary cannot attribute it.
fn check_test_name(test: &str) {
    assert!(
        !test.is_empty() && !test.contains(char::is_whitespace),
        "a skip marker names its test function: {test:?}"
    );
    let current = std::thread::current();
    if let Some(running) = current.name().filter(|n| *n != "main") {
        assert!(
            running == test || running.ends_with(&format!("::{test}")),
            "skip marker for {test:?} printed by test {running:?}"
        );
    }
}

/// Polls `cond` until it holds (true) or `within` has passed (false).
pub fn poll_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` until it holds; panics with `what` when `within` passes first.
pub fn wait_until(within: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        poll_until(within, cond),
        "timed out after {within:?}: {what}"
    );
}

/// Is process `pid` gone (no /proc entry: exited and reaped)?
pub fn process_gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// A running portico with its captured output.
#[derive(Debug)]
pub struct Portico {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub stdout: Arc<Mutex<Vec<String>>>,
}

fn pump<R: Read + Send + 'static>(r: R, sink: Arc<Mutex<Vec<String>>>, echo: bool) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if echo {
                eprintln!("[portico] {line}");
            }
            sink.lock().unwrap().push(line);
        }
    });
}

impl Portico {
    /// Starts `portico serve ARGS` (with `--listen 127.0.0.1:0 --admin 127.0.0.1:0` unless the
    /// args name their own) and waits until it logs its addresses.
    pub fn start(args: &[&str]) -> Portico {
        Self::start_with(Command::new(portico_bin()), args)
    }

    pub fn start_with(cmd: Command, args: &[&str]) -> Portico {
        Self::launch(cmd, args, true)
    }

    /// Like `start_with`; `wait_health = false` when the admin endpoint is out of this
    /// process's reach (another network namespace).
    pub fn launch(mut cmd: Command, args: &[&str], wait_health: bool) -> Portico {
        let mut full: Vec<String> = vec!["serve".into()];
        full.extend(args.iter().map(ToString::to_string));
        if !args.contains(&"--listen") {
            full.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        if !args.contains(&"--admin") {
            full.extend(["--admin".into(), "127.0.0.1:0".into()]);
        }
        if !args.contains(&"--access-log") {
            full.extend(["--access-log".into(), "off".into()]);
        }
        cmd.args(&full)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn portico");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        pump(
            child.stderr.take().unwrap(),
            stderr.clone(),
            std::env::var_os("PORTICO_TEST_ECHO").is_some(),
        );
        pump(child.stdout.take().unwrap(), stdout.clone(), false);
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut addr, mut admin) = (None, None);
        let wants_admin = !full.windows(2).any(|w| w[0] == "--admin" && w[1] == "off");
        while Instant::now() < deadline {
            for l in stderr.lock().unwrap().iter() {
                if let Some(a) =
                    after(l, "listening on http://").or_else(|| after(l, "listening on https://"))
                {
                    addr = a.parse().ok();
                }
                if let Some(a) = after(l, "admin on http://") {
                    admin = a.parse().ok();
                }
            }
            if addr.is_some() && (admin.is_some() || !wants_admin) {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "portico exited early ({st}):\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let addr = addr.unwrap_or_else(|| {
            panic!(
                "portico never logged its address:\n{}",
                stderr.lock().unwrap().join("\n")
            )
        });
        let p = Portico {
            child,
            addr,
            admin,
            stderr,
            stdout,
        };
        if p.admin.is_some() && wait_health {
            p.wait_healthy(Duration::from_secs(20));
        }
        p
    }

    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(r) = get(self.admin.unwrap(), "/healthz")
                && r.status == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "portico never became healthy:\n{}",
            self.stderr.lock().unwrap().join("\n")
        );
    }

    pub fn metrics(&self) -> String {
        get(self.admin.expect("admin"), "/metrics")
            .expect("scrape")
            .text()
    }

    /// Scrapes until `ready` holds (cells count after the bytes leave, so a client can see the
    /// response a moment before its counters); panics with the last scrape after `within`.
    pub fn wait_metrics(&self, within: Duration, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let m = self.metrics();
            if ready(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "metrics never got there:\n{m}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Value of one exposition sample, e.g. `portico_cell_up{cell="0"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics(), series)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_raw(self.pid()).unwrap(), sig)
            .unwrap();
    }

    /// Waits for exit, up to `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until a line of stderr contains `needle`; panics with the log after `within`.
    pub fn wait_stderr(&self, within: Duration, needle: &str) {
        let seen = poll_until(within, || {
            self.stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
        });
        assert!(
            seen,
            "no {needle:?} in the log within {within:?}:\n{}",
            self.stderr_text()
        );
    }

    /// PIDs of the cell processes (children of the master).
    pub fn cell_pids(&self) -> Vec<i32> {
        let path = format!("/proc/{}/task/{}/children", self.pid(), self.pid());
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Portico {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(self.pid()).unwrap(),
                rustix::process::Signal::QUIT,
            );
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let i = line.find(marker)?;
    line[i + marker.len()..].split_whitespace().next()
}

pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Sum of every sample whose line starts with `prefix` (e.g. a metric over all its cells).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A temporary site: files relative to a fresh directory.
#[derive(Debug)]
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new() -> Site {
        Site {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn file(&self, rel: &str, content: &[u8]) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }
    pub fn root(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_string_lossy().into_owned()
    }
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

/// The test virtualenv with Flask and Django (`cargo xtask test` creates it and sets
/// PORTICO_TEST_VENV). None: the caller prints a SKIP line.
pub fn test_venv() -> Option<PathBuf> {
    let v = match std::env::var_os("PORTICO_TEST_VENV") {
        Some(v) => PathBuf::from(v),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"),
    };
    v.join("pyvenv.cfg").is_file().then_some(v)
}

/// The test virtualenv, or a SKIP line for `test` saying which of its packages (`needs`) the
/// test wanted.
pub fn venv_for(test: &str, needs: &str) -> Option<PathBuf> {
    let v = test_venv();
    if v.is_none() {
        skip(
            test,
            &format!(
                "no test virtualenv (run `cargo xtask test`, which creates .venv with {needs})"
            ),
        );
    }
    v
}

/// Is this test process privileged enough for eBPF and network namespaces?
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Difference of one series between two scrapes (absent = 0).
pub fn delta(after: &str, before: &str, series: &str) -> f64 {
    metric_value(after, series).unwrap_or(0.0) - metric_value(before, series).unwrap_or(0.0)
}

/// CPUs this test may use.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Why a promtool check was skipped.
pub const PROMTOOL_MISSING: &str = "promtool not installed (cargo xtask test installs it)";

/// `promtool check metrics` on the exposition `m`: whether it passed and what it printed
/// (stdout, then stderr); None without promtool (the caller reports the skip).
pub fn promtool_check(m: &str) -> Option<(bool, String)> {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(m.as_bytes())
        .expect("writing the exposition to promtool");
    let out = child.wait_with_output().expect("promtool's output");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}
