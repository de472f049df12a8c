//! Upstream servers for the reverse-proxy tests: a process listening on a loopback port or a
//! Unix socket, waited for by polling, killed (and reaped) on drop.
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::poll_until;

/// Where an upstream listens.
#[derive(Debug, Clone)]
pub enum Bind {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Bind {
    /// The address as portico's config and CLI write it (`host:port`, `unix:/path`).
    pub fn server(&self) -> String {
        match self {
            Bind::Tcp(a) => a.to_string(),
            Bind::Unix(p) => format!("unix:{}", p.display()),
        }
    }

    /// A name for files about this upstream (its port, or its socket's file stem).
    pub fn label(&self) -> String {
        match self {
            Bind::Tcp(a) => a.port().to_string(),
            Bind::Unix(p) => p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        }
    }

    /// Does something accept connections there now?
    pub fn accepts(&self) -> bool {
        match self {
            Bind::Tcp(a) => TcpStream::connect(a).is_ok(),
            Bind::Unix(p) => UnixStream::connect(p).is_ok(),
        }
    }
}

/// A loopback address nothing listens on right now (bound, then released).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// An upstream process.
#[derive(Debug)]
pub struct Upstream {
    child: Child,
    pub bind: Bind,
    log: PathBuf,
}

impl Upstream {
    /// Spawns `cmd` (stderr to `log`) and waits until `bind` accepts connections; panics with
    /// the log when it does not within 20 s or the process exits first.
    pub fn start(mut cmd: Command, bind: Bind, log: PathBuf) -> Upstream {
        let err = std::fs::File::create(&log).expect("upstream log file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err));
        let child = cmd.spawn().expect("spawn upstream");
        let mut u = Upstream { child, bind, log };
        let up = poll_until(Duration::from_secs(20), || {
            u.bind.accepts() || matches!(u.child.try_wait(), Ok(Some(_)))
        });
        assert!(
            up && u.bind.accepts(),
            "upstream on {} never accepted:\n{}",
            u.bind.server(),
            u.log_text()
        );
        u
    }

    /// The TCP address (panics for a Unix socket).
    pub fn addr(&self) -> SocketAddr {
        match &self.bind {
            Bind::Tcp(a) => *a,
            Bind::Unix(p) => panic!("{} is a Unix socket", p.display()),
        }
    }

    /// Kills the server the hard way (SIGKILL to the process and its children, e.g.
    /// gunicorn's workers), as a crash would, and reaps it: its connections are reset by the
    /// kernel, nothing is finished gracefully.
    pub fn kill(&mut self) {
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let pids = std::iter::once(pid).chain(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
        for p in pids {
            if let Some(p) = rustix::process::Pid::from_raw(p as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        let _ = self.child.wait();
    }

    /// What the process wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGQUIT: gunicorn's quick shutdown (its workers included); Python's default
            // action for other servers.
            if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
            }
            let gone = poll_until(Duration::from_secs(5), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            });
            if !gone {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A keep-alive HTTP/1.1 upstream (Python's `http.server`) answering every GET with
/// `<tag> <client port>`: which server and which connection took the request. `/slow?s=N`
/// answers after N seconds; `/healthz` answers 503 while a file `<tag>.down` exists in the
/// log's directory; connections idle `idle_secs` are closed (its keep-alive timeout).
const TAGGED_BACKEND: &str = r#"
import http.server, os, socketserver, sys, time, urllib.parse
TAG, IDLE, DOWN = sys.argv[2], float(sys.argv[3]), sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE
    def answer(self):
        u = urllib.parse.urlsplit(self.path)
        if u.path == "/healthz" and os.path.exists(DOWN):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if u.path.endswith("/slow"):
            time.sleep(float(urllib.parse.parse_qs(u.query).get("s", ["1"])[0]))
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        b = f"{TAG} {self.client_address[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    do_GET = answer
    do_POST = answer
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// Starts a `TAGGED_BACKEND` on a free port; its stderr goes to `log`.
pub fn tagged_backend(tag: &str, idle_secs: f64, log: PathBuf) -> Upstream {
    let addr = free_port();
    let down = log.with_file_name(format!("{tag}.down"));
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        TAGGED_BACKEND,
        &addr.port().to_string(),
        tag,
        &idle_secs.to_string(),
        &down.to_string_lossy(),
    ]);
    Upstream::start(cmd, Bind::Tcp(addr), log)
}

/// Established TCP connections (IPv4, either end) with `port` at one end, from
/// `/proc/net/tcp`: whether a pooled connection to an upstream is still open.
pub fn established(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let hex = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "01" && (f[1].ends_with(&hex) || f[2].ends_with(&hex))
        })
        .count()
}
