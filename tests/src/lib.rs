//! Harness for end-to-end tests: starts the real `portico` binary on ephemeral ports, reads the
//! addresses it logs, and speaks raw HTTP/1.1 to it (so malformed requests can be sent too).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
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
        full.extend(args.iter().map(|s| s.to_string()));
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
                if let Some(a) = after(l, "listening on http://") {
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

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One client connection that can send several requests (keep-alive, pipelining).
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn send(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(raw)
    }

    /// Reads one response to a request with `method` (HEAD has no body).
    pub fn read_response(&mut self, method: &str) -> std::io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                l.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        let resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let no_body =
            method == "HEAD" || status == 304 || status == 204 || (100..200).contains(&status);
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let body = if no_body {
            Vec::new()
        } else if chunked {
            self.read_chunked()?
        } else if let Some(len) = resp
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            while self.buf.len() < len {
                self.fill()?;
            }
            self.buf.drain(..len).collect()
        } else {
            // Read to EOF.
            loop {
                match self.fill() {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            std::mem::take(&mut self.buf)
        };
        Ok(Response { body, ..resp })
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }

    /// A chunked body (RFC 9112 section 7.1), trailers skipped.
    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                while !self.read_line()?.is_empty() {}
                return Ok(body);
            }
            while self.buf.len() < size + 2 {
                self.fill()?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Reads the head of a response and then only the first `n` body bytes that arrive.
    pub fn read_some(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..).collect())
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut tmp = [0u8; 65536];
        let n = self.stream.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// True when the server has closed the connection (EOF) within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut tmp = [0u8; 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        self.send(raw_request(method, path, headers).as_bytes())?;
        self.read_response(method)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn raw_request(method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s
}

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    Conn::open(addr)?.request(method, path, headers)
}

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, "GET", path, &[])
}

/// Sends raw bytes on a fresh connection and reads one response.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Response> {
    let mut c = Conn::open(addr)?;
    c.send(bytes)?;
    c.read_response("GET")
}

/// A temporary site: files relative to a fresh directory.
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

/// Is this test process privileged enough for eBPF and network namespaces?
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A network namespace for a privileged test; deleted (with its links) on drop.
pub struct Netns(pub String);

impl Netns {
    /// `portico-<tag>-<pid>`, with loopback up. None when `ip netns add` fails.
    pub fn create(tag: &str) -> Option<Netns> {
        let name = format!("portico-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    /// `ip -n NS ARGS`; panics when it fails.
    pub fn ip(&self, args: &[&str]) {
        let st = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .status()
            .expect("run ip");
        assert!(st.success(), "ip -n {} {args:?} failed", self.0);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }

    /// Runs `f` on a thread that joined the namespace (and is pinned to `cpu`, if given).
    pub fn run<T: Send + 'static>(
        &self,
        cpu: Option<usize>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        self.spawn(cpu, f)
            .join()
            .expect("namespace thread panicked")
    }

    /// Like `run`, without waiting.
    pub fn spawn<T: Send + 'static>(
        &self,
        cpu: Option<usize>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&fd),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            if let Some(cpu) = cpu {
                let mut set = rustix::thread::CpuSet::new();
                set.set(cpu);
                rustix::thread::sched_setaffinity(None, &set).expect("pin thread");
            }
            f()
        })
    }

    /// Scrapes `/metrics` of an admin endpoint inside the namespace.
    pub fn scrape(&self, admin: SocketAddr) -> String {
        self.run(None, move || {
            get(admin, "/metrics").map(|r| r.text()).unwrap_or_default()
        })
    }

    /// Waits until `cells` cells report up through an admin endpoint inside the namespace.
    pub fn wait_cells_up(&self, p: &Portico, cells: usize) -> String {
        let admin = p.admin.expect("admin");
        for _ in 0..400 {
            let m = self.scrape(admin);
            if (0..cells)
                .all(|i| metric_value(&m, &format!("portico_cell_up{{cell=\"{i}\"}}")) == Some(1.0))
            {
                return m;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("cells never came up:\n{}", p.stderr_text());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Difference of one series between two scrapes (absent = 0).
pub fn delta(after: &str, before: &str, series: &str) -> f64 {
    metric_value(after, series).unwrap_or(0.0) - metric_value(before, series).unwrap_or(0.0)
}

/// CPUs this test may use.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
