//! The proxy's connection pool against a keep-alive upstream (Python's `http.server` with
//! HTTP/1.1): connections are reused, and one the upstream closed while idle is replaced
//! without the client seeing an error.
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portico_tests::*;

/// Answers every GET with the client port of the connection it came on; closes connections
/// idle for `IDLE` seconds (the upstream's own keep-alive timeout).
const BACKEND: &str = r#"
import http.server, socketserver, sys
IDLE = float(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE
    def do_GET(self):
        b = str(self.client_address[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

struct Backend {
    child: Child,
    port: u16,
}

impl Backend {
    fn start(idle_secs: f64) -> Backend {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-c", BACKEND, &port.to_string(), &idle_secs.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        wait_until(Duration::from_secs(10), "the backend listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Backend { child, port }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The upstream-side client port each of `n` requests came on.
fn ports(p: &Portico, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = get(p.addr, "/k/x").unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.text()
        })
        .collect()
}

#[test]
fn proxy_pool_reuses_upstream_connections() {
    let b = Backend::start(30.0);
    let url = format!("/k/=http://127.0.0.1:{}/", b.port);
    let p = Portico::start(&["--proxy", &url, "--workers", "1"]);
    let seen = ports(&p, 5);
    assert!(
        seen.iter().all(|s| *s == seen[0]),
        "every request on one pooled connection: {seen:?}"
    );
}

#[test]
fn proxy_pool_replaces_a_connection_the_upstream_closed() {
    let b = Backend::start(0.5);
    let url = format!("/k/=http://127.0.0.1:{}/", b.port);
    let p = Portico::start(&["--proxy", &url, "--workers", "1"]);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.extend(ports(&p, 1));
        // Longer than the upstream's keep-alive timeout (the scenario itself): the pooled
        // connection is closed by the upstream before the next request takes it.
        std::thread::sleep(Duration::from_millis(800));
    }
    assert_eq!(seen.len(), 3, "no request failed");
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]),
        "each request after the upstream's timeout on a new connection: {seen:?}"
    );
}
