//! Tunnel relays (`relay = "copy" | "splice" | "sockmap"`) against a real upgrade server (a
//! Python echo behind `Upgrade: echo`) and a raw client: bytes sent along with the request head
//! and the 101 (hyper's read-ahead both ways), many messages both ways, a bulk transfer, a
//! half-close that still gets the upstream's last words, the idle timeout, the tunnel metrics
//! and the /status tunnel count, and the sockmap fallback to `copy` (eBPF off, no CAP_BPF).
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use portico_tests::*;

/// The upstream: answers any request with a 101 and "hello\n" in the same write, echoes every
/// byte, and after the client's end of stream sends "bye <bytes echoed>\n" and closes.
const SERVER: &str = r#"
import os, socket, sys, threading

def handle(c):
    data = b""
    while b"\r\n\r\n" not in data:
        d = c.recv(65536)
        if not d:
            return c.close()
        data += d
    rest = data.split(b"\r\n\r\n", 1)[1]
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nhello\n")
    total = len(rest)
    if rest:
        c.sendall(rest)
    while True:
        d = c.recv(65536)
        if not d:
            break
        total += len(d)
        c.sendall(d)
    c.sendall(b"bye %d\n" % total)
    c.close()

if sys.argv[1] == "unix":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sys.argv[2])
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[2])))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

const RELAYS: [&str; 3] = ["copy", "splice", "sockmap"];
const EARLY: &[u8] = b"early bytes with the head\n";
const HELLO: &[u8] = b"hello\n";

struct Echo {
    site: Site,
    python: PathBuf,
}

impl Echo {
    fn new(test: &str) -> Option<Echo> {
        let Some(venv) = test_venv() else {
            skip(
                test,
                "no test virtualenv (run `cargo xtask test`, which creates .venv)",
            );
            return None;
        };
        let site = Site::new();
        site.file("echo.py", SERVER.as_bytes());
        Some(Echo {
            site,
            python: venv.join("bin/python"),
        })
    }

    fn upstream(&self, bind: Bind) -> Upstream {
        let mut cmd = Command::new(&self.python);
        cmd.arg(self.site.root("echo.py"));
        match &bind {
            Bind::Tcp(a) => cmd.args(["tcp", &a.port().to_string()]),
            Bind::Unix(p) => cmd.arg("unix").arg(p),
        };
        cmd.stdin(Stdio::null());
        let log = self.site.path().join(format!("echo-{}.log", bind.label()));
        Upstream::start(cmd, bind, log)
    }

    /// portico with one worker, a route `/t/` to `server` relayed by `relay`, and `extra`.
    fn portico(&self, server: &str, relay: &str, upstream_extra: &str, extra: &str) -> Portico {
        let cfg = format!(
            "[server]\nworkers = 1\n{extra}\n\
             [[upstream]]\nname = \"echo\"\nservers = [\"{server}\"]\n{upstream_extra}\n\
             [[route]]\nprefix = \"/t/\"\n\
             proxy = {{ upstream = \"echo\", websocket = true, relay = \"{relay}\" }}\n"
        );
        self.site.file(&format!("{relay}.toml"), cfg.as_bytes());
        Portico::start(&["-c", &self.site.root(&format!("{relay}.toml"))])
    }
}

/// Opens a tunnel: the request head and EARLY in one write; reads the 101, HELLO and the echo
/// of EARLY.
fn open(p: &Portico) -> TcpStream {
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req =
        b"GET /t/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n".to_vec();
    req.extend_from_slice(EARLY);
    s.write_all(&req).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed in the head: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut first = vec![0u8; HELLO.len() + EARLY.len()];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first[..HELLO.len()], HELLO);
    assert_eq!(&first[HELLO.len()..], EARLY);
    s
}

/// Messages of many sizes, each echoed before the next, then a bulk transfer written by
/// another thread while this one reads. Returns the bytes sent.
fn exchange(s: &mut TcpStream) -> u64 {
    let mut sent = 0u64;
    for i in 0..300u32 {
        let len = 1 + (i as usize * 37) % 5000;
        let msg: Vec<u8> = (0..len).map(|k| (k as u32 ^ i) as u8).collect();
        s.write_all(&msg).unwrap();
        let mut back = vec![0u8; len];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg, "message {i} came back changed");
        sent += len as u64;
    }
    let bulk: Vec<u8> = (0..(4u32 << 20)).map(|k| (k % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let expect = bulk.clone();
    let writer = std::thread::spawn(move || w.write_all(&bulk));
    let mut back = vec![0u8; expect.len()];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap().unwrap();
    assert!(back == expect, "the bulk transfer came back changed");
    sent + expect.len() as u64
}

/// Half-closes and reads the upstream's last words to the end of stream.
fn half_close(s: &mut TcpStream, echoed: u64, relay: &str) {
    s.shutdown(Shutdown::Write).unwrap();
    let mut tail = Vec::new();
    s.read_to_end(&mut tail).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&tail),
        format!("bye {echoed}\n"),
        "{relay}: the upstream's answer to the half-close"
    );
}

fn sockmap_available(p: &Portico) -> bool {
    p.metric("portico_tunnel_sockmap_available") == Some(1.0)
}

/// Waits until no tunnel is open and returns the metrics then.
fn after_close(p: &Portico) -> String {
    p.wait_metrics(Duration::from_secs(10), |m| {
        metric_value(m, "portico_tunnels_active") == Some(0.0)
            && metric_sum(m, "portico_tunnels_total") >= 1.0
    })
}

#[test]
fn every_relay_carries_both_ways_and_half_closes() {
    let test = "every_relay_carries_both_ways_and_half_closes";
    let Some(echo) = Echo::new(test) else {
        return;
    };
    let up = echo.upstream(Bind::Tcp(free_port()));
    for relay in RELAYS {
        let p = echo.portico(&up.bind.server(), relay, "", "");
        let used = if relay == "sockmap" && !sockmap_available(&p) {
            skip_part(
                test,
                "sockmap",
                "the tunnel_relay program did not load (needs root and sockmap support); checked as its copy fallback",
            );
            "copy"
        } else {
            relay
        };
        let mut s = open(&p);
        let sent = exchange(&mut s);
        // Open now: in the gauge and in the /status upstreams table.
        assert_eq!(p.metric("portico_tunnels_active"), Some(1.0), "{relay}");
        let status = get(p.admin.unwrap(), "/status.json").unwrap().text();
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(status["upstreams"][0]["tunnels"], 1, "{relay}: {status}");
        let echoed = EARLY.len() as u64 + sent;
        if used != "sockmap" {
            // Counted as they move, not when the tunnel closes (the sockmap relay's kernel
            // counts are read at its end).
            let up = "portico_tunnel_bytes_total{direction=\"client_to_upstream\"}";
            let down = "portico_tunnel_bytes_total{direction=\"upstream_to_client\"}";
            let m = p.wait_metrics(Duration::from_secs(10), |m| {
                metric_value(m, up) == Some(echoed as f64)
            });
            let down_now = metric_value(&m, down).unwrap_or(-1.0);
            assert_eq!(down_now, (HELLO.len() as u64 + echoed) as f64, "{relay}");
            assert_eq!(
                p.metric("portico_tunnels_active"),
                Some(1.0),
                "{relay}: still open"
            );
        }
        half_close(&mut s, echoed, relay);
        let m = after_close(&p);
        let v = |series: &str| metric_value(&m, series).unwrap_or(-1.0);
        assert_eq!(
            v(&format!("portico_tunnels_total{{relay=\"{used}\"}}")),
            1.0,
            "{relay}: {m}"
        );
        assert_eq!(
            v("portico_tunnel_bytes_total{direction=\"client_to_upstream\"}"),
            echoed as f64,
            "{relay}"
        );
        let bye = format!("bye {echoed}\n").len() as u64;
        assert_eq!(
            v("portico_tunnel_bytes_total{direction=\"upstream_to_client\"}"),
            (HELLO.len() as u64 + echoed + bye) as f64,
            "{relay}"
        );
        assert!(!p.stderr_text().contains("panicked"), "{relay}");
    }
}

#[test]
fn every_relay_works_with_a_unix_socket_upstream() {
    let test = "every_relay_works_with_a_unix_socket_upstream";
    let Some(echo) = Echo::new(test) else {
        return;
    };
    let up = echo.upstream(Bind::Unix(echo.site.path().join("echo.sock")));
    for relay in RELAYS {
        let p = echo.portico(&up.bind.server(), relay, "", "");
        let mut s = open(&p);
        let sent = exchange(&mut s);
        half_close(&mut s, EARLY.len() as u64 + sent, relay);
        let m = after_close(&p);
        if relay == "sockmap" {
            // The program relays TCP sockets only: the tunnel is copied, and counted as such.
            let reason = if sockmap_available(&p) {
                "unix_socket"
            } else {
                "unavailable"
            };
            assert_eq!(
                metric_value(
                    &m,
                    &format!("portico_tunnel_relay_fallbacks_total{{reason=\"{reason}\"}}")
                ),
                Some(1.0),
                "{m}"
            );
            assert_eq!(
                metric_value(&m, "portico_tunnels_total{relay=\"copy\"}"),
                Some(1.0)
            );
        } else {
            assert_eq!(
                metric_value(&m, &format!("portico_tunnels_total{{relay=\"{relay}\"}}")),
                Some(1.0),
                "{m}"
            );
        }
    }
}

#[test]
fn every_relay_closes_an_idle_tunnel_after_read_timeout() {
    let test = "every_relay_closes_an_idle_tunnel_after_read_timeout";
    let Some(echo) = Echo::new(test) else {
        return;
    };
    let up = echo.upstream(Bind::Tcp(free_port()));
    for relay in RELAYS {
        let p = echo.portico(&up.bind.server(), relay, "read_timeout = \"1s\"", "");
        let mut s = open(&p);
        s.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        let start = std::time::Instant::now();
        let mut rest = Vec::new();
        // The cell closes the client side: end of stream (or a reset) well within 10 s.
        let r = s.read_to_end(&mut rest);
        let after = start.elapsed();
        // A read timeout (10 s) would mean the tunnel stayed open.
        let timed_out = r.as_ref().is_err_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        });
        assert!(!timed_out, "{relay}: still open after {after:?}");
        assert!(
            after >= Duration::from_millis(800) && after < Duration::from_secs(8),
            "{relay}: closed after {after:?}"
        );
        after_close(&p);
    }
}

#[test]
fn sockmap_falls_back_to_copy_when_ebpf_is_off() {
    let test = "sockmap_falls_back_to_copy_when_ebpf_is_off";
    let Some(echo) = Echo::new(test) else {
        return;
    };
    let up = echo.upstream(Bind::Tcp(free_port()));
    let p = echo.portico(&up.bind.server(), "sockmap", "", "[ebpf]\nmode = \"off\"\n");
    assert_eq!(p.metric("portico_tunnel_sockmap_available"), Some(0.0));
    let mut s = open(&p);
    let sent = exchange(&mut s);
    half_close(&mut s, EARLY.len() as u64 + sent, "sockmap");
    let m = after_close(&p);
    assert_eq!(
        metric_value(
            &m,
            "portico_tunnel_relay_fallbacks_total{reason=\"unavailable\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "portico_tunnels_total{relay=\"copy\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&m, "portico_tunnels_total{relay=\"sockmap\"}"),
        Some(0.0)
    );
    let err = p.stderr_text();
    assert_eq!(
        err.matches("relay = \"sockmap\" needs eBPF").count(),
        1,
        "one log line for the fallback: {err}"
    );
}

#[test]
fn sockmap_without_cap_bpf_falls_back_with_one_warning() {
    let test = "sockmap_without_cap_bpf_falls_back_with_one_warning";
    if !is_root() {
        skip(test, "needs root to drop capabilities from");
        return;
    }
    let Some(echo) = Echo::new(test) else {
        return;
    };
    let up = echo.upstream(Bind::Tcp(free_port()));
    let cfg = format!(
        "[server]\nworkers = 1\n\
         [[upstream]]\nname = \"echo\"\nservers = [\"{}\"]\n\
         [[route]]\nprefix = \"/t/\"\n\
         proxy = {{ upstream = \"echo\", websocket = true, relay = \"sockmap\" }}\n",
        up.bind.server()
    );
    echo.site.file("nocap.toml", cfg.as_bytes());
    // Root without CAP_BPF, CAP_SYS_ADMIN, CAP_PERFMON and CAP_NET_ADMIN in its bounding set.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set=-bpf,-sys_admin,-perfmon,-net_admin", "--"])
        .arg(portico_bin());
    let p = Portico::start_with(cmd, &["-c", &echo.site.root("nocap.toml")]);
    assert_eq!(p.metric("portico_tunnel_sockmap_available"), Some(0.0));
    let mut s = open(&p);
    let sent = exchange(&mut s);
    half_close(&mut s, EARLY.len() as u64 + sent, "sockmap");
    let m = after_close(&p);
    assert_eq!(
        metric_value(
            &m,
            "portico_tunnel_relay_fallbacks_total{reason=\"unavailable\"}"
        ),
        Some(1.0),
        "{m}"
    );
    let warnings = p
        .stderr_text()
        .lines()
        .filter(|l| l.contains("sockmap tunnel relay unavailable"))
        .count();
    assert_eq!(warnings, 1, "{}", p.stderr_text());
}
