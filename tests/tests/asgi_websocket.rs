//! WebSocket on ASGI routes (the `websocket` scope) against the real binary, with Starlette
//! `WebSocketRoute` endpoints (fixture in `asgi_websocket_app/`) and the Python `websockets`
//! client from the test virtualenv: echoes of text, binary and fragmented messages, the chosen
//! subprotocol and accept headers, the scope, close codes and reasons both ways, the
//! disconnect the app sees, a rejection before accept (403), an app exception (1011), an
//! oversized message (1009, `websocket_max_message`), the WebSocket metrics; handshakes
//! refused before the app (400, 426), invalid UTF-8 (1007), a draining cell that keeps
//! its WebSockets, inbound flow control (a fast client, a slow app, bounded cell RSS),
//! `websocket_idle_timeout` (1001), and hand-written frames: a ping inside a fragmented
//! message, an unmasked client frame (1002); the denial response extension (the app's own
//! refusal, streamed).
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portico_tests::*;
use serde_json::Value;

const APP: &str = include_str!("asgi_websocket_app/wsapp.py");
const CLIENT: &str = include_str!("asgi_websocket_app/client.py");

/// How long one client scenario may run.
const WITHIN: Duration = Duration::from_secs(60);

struct Ws {
    venv: PathBuf,
    site: Site,
    portico: Portico,
}

impl Ws {
    /// portico serving the fixture at `/ws/` (with `extra` keys in its asgi table), or a SKIP
    /// line and None when the test virtualenv lacks Starlette or `websockets`.
    fn start(test: &str, extra: &str) -> Option<Ws> {
        let venv = venv_for(test, "Starlette and websockets")?;
        let has = Command::new(venv.join("bin/python"))
            .args(["-c", "import starlette, websockets.sync.client"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            skip(
                test,
                "no starlette or websockets>=13 in the test virtualenv (run `cargo xtask test`)",
            );
            return None;
        }
        let site = Site::new();
        site.file("wsapp.py", APP.as_bytes());
        site.file("client.py", CLIENT.as_bytes());
        site.file(
            "portico.toml",
            format!(
                "[server]\nworkers = 1\n[[route]]\nprefix = \"/ws/\"\nasgi = {{ app = \"wsapp:app\", venv = \"{}\"{extra} }}\n",
                venv.display()
            )
            .as_bytes(),
        );
        let portico = Portico::start(&["-c", &site.root("portico.toml")]);
        Some(Ws {
            venv,
            site,
            portico,
        })
    }

    fn client_cmd(&self, mode: &str, path: &str) -> Command {
        let url = format!("ws://{}{path}", self.portico.addr);
        let mut cmd = Command::new(self.venv.join("bin/python"));
        cmd.arg(self.site.root("client.py"))
            .args([mode, &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs a client scenario against `path` to its end and returns its summary.
    fn client(&self, mode: &str, path: &str) -> Value {
        let mut cmd = self.client_cmd(mode, path);
        summary(cmd.stdin(Stdio::null()).spawn().expect("spawn the client"))
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.site.path().join(name)).unwrap_or_default()
    }
}

/// The client's JSON summary, waiting at most `WITHIN` for it to exit.
fn summary(mut child: Child) -> Value {
    let done = poll_until(WITHIN, || matches!(child.try_wait(), Ok(Some(_))));
    if !done {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("client output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        done,
        "client still running after {WITHIN:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "client summary ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn series(metrics: &str, name: &str) -> f64 {
    metric_sum(metrics, name)
}

#[test]
fn asgi_websocket_echo_close_codes_and_metrics() {
    let Some(ws) = Ws::start("asgi_websocket_echo_close_codes_and_metrics", "") else {
        return;
    };

    // 200 text and 200 binary messages and a fragmented one come back unchanged; the app
    // chose the last subprotocol offered and its accept headers reached the client.
    let s = ws.client("echo", "/ws/echo");
    assert_eq!(s["connected"], true, "{s}");
    assert_eq!(s["mismatches"], 0, "{s}");
    assert_eq!(s["subprotocol"], "chat.v2", "{s}");
    assert_eq!(s["accepted_header"], "yes", "{s}");
    // The client's close code reached the app as websocket.disconnect.
    wait_until(Duration::from_secs(10), "the app's disconnect note", || {
        ws.file("disconnect.log").lines().any(|l| l == "4000")
    });

    // The app closes with a code and reason; the client gets both.
    let s = ws.client("server_close", "/ws/echo");
    assert_eq!(s["connected"], true, "{s}");
    assert_eq!(
        (s["close_code"].as_u64(), s["close_reason"].as_str()),
        (Some(4001), Some("bye now")),
        "{s}"
    );

    // The scope of a websocket request.
    let s = ws.client("scope", "/ws/scope");
    assert_eq!(s["connected"], true, "{s}");
    let sc = &s["scope"];
    assert_eq!(sc["type"], "websocket", "{s}");
    assert_eq!(sc["scheme"], "ws", "{s}");
    assert_eq!(sc["http_version"], "1.1", "{s}");
    assert_eq!(sc["path"], "/ws/scope", "{s}");
    assert_eq!(sc["raw_path"], "/ws/scope", "{s}");
    assert_eq!(sc["query_string"], "a=1", "{s}");
    assert_eq!(sc["root_path"], "/ws", "{s}");
    assert_eq!(sc["subprotocols"], serde_json::json!(["one", "two"]), "{s}");
    assert_eq!(sc["asgi"]["version"], "3.0", "{s}");
    assert_eq!(sc["client"][0], "127.0.0.1", "{s}");
    assert_eq!(sc["server"][1], ws.portico.addr.port(), "{s}");
    assert_eq!(sc["has_state"], true, "{s}");
    assert_eq!(
        sc["extensions"],
        serde_json::json!({"websocket.http.response": {}}),
        "{s}"
    );
    let headers = sc["headers"].as_array().expect("headers");
    assert!(headers.iter().any(|h| h[0] == "sec-websocket-key"), "{s}");

    // Every message counted each way; no WebSocket left open.
    wait_until(Duration::from_secs(10), "no WebSocket open", || {
        series(
            &ws.portico.metrics(),
            "portico_websocket_connections_active{",
        ) == 0.0
    });
    let m = ws.portico.metrics();
    let inbound = series(
        &m,
        "portico_websocket_messages_total{cell=\"0\",direction=\"in\"}",
    );
    let outbound = series(
        &m,
        "portico_websocket_messages_total{cell=\"0\",direction=\"out\"}",
    );
    // echo: 401 each way; server_close: 1 in; scope: 1 out.
    assert_eq!((inbound, outbound), (402.0, 402.0), "{m}");
    assert!(
        m.contains("# HELP portico_websocket_connections_active "),
        "{m}"
    );
}

#[test]
fn asgi_websocket_rejection_exception_and_size_limit() {
    let Some(ws) = Ws::start(
        "asgi_websocket_rejection_exception_and_size_limit",
        ", websocket_max_message = \"64k\"",
    ) else {
        return;
    };

    // websocket.close before websocket.accept: the handshake gets 403.
    let s = ws.client("reject", "/ws/reject");
    assert_eq!(
        (s["connected"].as_bool(), s["status"].as_u64()),
        (Some(false), Some(403)),
        "{s}"
    );

    // An exception in the handler closes with 1011; the traceback is in the error log.
    let s = ws.client("boom", "/ws/boom");
    assert_eq!(s["connected"], true, "{s}");
    assert_eq!(s["close_code"], 1011, "{s}");
    wait_until(
        Duration::from_secs(10),
        "the traceback in the error log",
        || {
            ws.portico
                .stderr_text()
                .contains("boom in the websocket handler")
        },
    );

    // A message over websocket_max_message: close 1009 (smaller ones pass).
    let s = ws.client("big", "/ws/echo");
    assert_eq!(s["connected"], true, "{s}");
    assert_eq!(s["small"], "small", "{s}");
    assert_eq!(s["close_code"], 1009, "{s}");
    wait_until(Duration::from_secs(10), "the app's disconnect note", || {
        ws.file("disconnect.log").lines().any(|l| l == "1009")
    });

    // The same route still answers after all that.
    let s = ws.client("server_close", "/ws/echo");
    assert_eq!(s["close_code"], 4001, "{s}");
}

const UPGRADE: [(&str, &str); 2] = [("Upgrade", "websocket"), ("Connection", "Upgrade")];
const KEY: (&str, &str) = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
const HANDSHAKE: [(&str, &str); 4] = [UPGRADE[0], UPGRADE[1], KEY, ("Sec-WebSocket-Version", "13")];

/// Reads from `c` until `needle` has arrived; returns everything read.
fn read_until(c: &mut Conn, needle: &str) -> String {
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains(needle) {
        got.extend(c.read_some(1).unwrap_or_else(|e| {
            panic!(
                "waiting for {needle:?}: {e}; got {:?}",
                String::from_utf8_lossy(&got)
            )
        }));
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn asgi_websocket_denial_response() {
    let Some(ws) = Ws::start("asgi_websocket_denial_response", "") else {
        return;
    };
    let addr = ws.portico.addr;

    // The app refuses the handshake with its own response: its status, header and body reach
    // the client as they are sent (the second piece only once the app is let go on), then the
    // connection closes.
    let mut c = Conn::open(addr).unwrap();
    c.send(raw_request("GET", "/ws/deny", &HANDSHAKE).as_bytes())
        .unwrap();
    let got = read_until(&mut c, "first piece\n");
    assert!(got.starts_with("HTTP/1.1 401 "), "{got}");
    let lower = got.to_ascii_lowercase();
    assert!(lower.contains("\r\nx-denied: yes\r\n"), "{got}");
    assert!(lower.contains("\r\nconnection: close\r\n"), "{got}");
    assert!(!lower.contains("upgrade: websocket"), "{got}");
    assert!(!got.contains("go away"), "{got}");
    ws.site.file("gate-deny", b"");
    read_until(&mut c, "go away\n");
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "the connection is closed after the denial response"
    );

    // The same in one piece: with its length.
    let r = request(addr, "GET", "/ws/deny?whole=1", &HANDSHAKE).unwrap();
    assert_eq!((r.status, r.text().as_str()), (401, "go away\n"));
    assert_eq!(r.header("content-length"), Some("8"));
    assert_eq!(r.header("x-denied"), Some("yes"));

    // A WebSocket client sees the refusal as such, with that status and body.
    let s = ws.client("deny", "/ws/deny");
    assert_eq!(
        (s["connected"].as_bool(), s["status"].as_u64()),
        (Some(false), Some(401)),
        "{s}"
    );
    assert_eq!(s["body"], "first piece\ngo away\n", "{s}");
    assert_eq!(s["denied_header"], "yes", "{s}");

    // websocket.close before accept is still the 403 of the server's own.
    let s = ws.client("reject", "/ws/reject");
    assert_eq!(s["status"], 403, "{s}");
    assert_eq!(s["body"], "403 Forbidden\n", "{s}");

    // An accept after a denial response started is the app's error: 500, the reason in the
    // error log, and the connection still serves.
    let mut c = Conn::open(addr).unwrap();
    let r = c
        .request("GET", "/ws/deny_then_accept", &HANDSHAKE)
        .unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    ws.portico.wait_stderr(
        Duration::from_secs(5),
        "websocket.accept sent after websocket.http.response.start",
    );
    let r = c.request("GET", "/ws/deny?whole=1", &HANDSHAKE).unwrap();
    assert_eq!(r.status, 401);
}

#[test]
fn asgi_websocket_handshake_checks_utf8_and_drain() {
    let Some(mut ws) = Ws::start("asgi_websocket_handshake_checks_utf8_and_drain", "") else {
        return;
    };
    let addr = ws.portico.addr;
    // A bad key is a bad request; another version asks for 13. Neither reaches the app.
    let bad_key = [
        UPGRADE[0],
        UPGRADE[1],
        ("Sec-WebSocket-Key", "short"),
        ("Sec-WebSocket-Version", "13"),
    ];
    let r = request(addr, "GET", "/ws/echo", &bad_key).unwrap();
    assert_eq!(r.status, 400);
    let v8 = [UPGRADE[0], UPGRADE[1], KEY, ("Sec-WebSocket-Version", "8")];
    let r = request(addr, "GET", "/ws/echo", &v8).unwrap();
    assert_eq!(
        (r.status, r.header("sec-websocket-version")),
        (426, Some("13"))
    );

    // A text frame that is not UTF-8: the server closes with 1007.
    let mut c = Conn::open(addr).unwrap();
    let ok = [UPGRADE[0], UPGRADE[1], KEY, ("Sec-WebSocket-Version", "13")];
    c.send(raw_request("GET", "/ws/echo", &ok).as_bytes())
        .unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        got.extend(c.read_some(1).unwrap());
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The RFC 6455 example key's accept value.
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    let mask = [1u8, 2, 3, 4];
    c.send(&[
        0x81,
        0x81,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        0xff ^ mask[0],
    ])
    .unwrap();
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut frame = got[end..].to_vec();
    while frame.len() < 4 {
        frame.extend(c.read_some(1).unwrap());
    }
    assert_eq!(&frame[..1], &[0x88], "a close frame: {frame:?}");
    assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1007, "{frame:?}");

    // A draining cell keeps an open WebSocket past its idle keep-alives' grace.
    let mut cmd = ws.client_cmd("hold", "/ws/echo");
    let mut child = cmd.stdin(Stdio::piped()).spawn().expect("spawn the client");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "open", "the WebSocket did not open: {line}");
    let mut idle = Conn::open(addr).unwrap();
    assert_eq!(idle.request("GET", "/nothing", &[]).unwrap().status, 404);
    ws.portico.signal(rustix::process::Signal::TERM);
    assert!(
        idle.closed_within(Duration::from_secs(10)),
        "the draining cell never closed an idle keep-alive connection"
    );
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let deadline = Instant::now() + WITHIN;
    let mut rest = String::new();
    while Instant::now() < deadline {
        let mut l = String::new();
        if stdout.read_line(&mut l).unwrap_or(0) == 0 {
            break;
        }
        rest = l;
    }
    let _ = child.wait();
    let s: Value = serde_json::from_str(rest.trim()).unwrap_or_else(|e| panic!("{e}: {rest}"));
    assert_eq!(
        (s["before"].as_str(), s["after"].as_str()),
        (Some("before"), Some("after")),
        "{s}"
    );
    let status = ws
        .portico
        .wait_exit(Duration::from_secs(20))
        .expect("exits once the WebSocket closed");
    assert!(status.success(), "{status:?}");
}

/// A process's `Vm...:` line from /proc/PID/status, in KiB.
fn vm_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} for {pid}"))
}

#[test]
fn asgi_websocket_flow_control() {
    let Some(ws) = Ws::start("asgi_websocket_flow_control", "") else {
        return;
    };
    let cells = ws.portico.cell_pids();
    assert_eq!(cells.len(), 1, "one cell: {cells:?}");
    let cell = cells[0];
    // Warm the route up (the app's first WebSocket), then reset the cell's peak RSS.
    let s = ws.client("server_close", "/ws/echo");
    assert_eq!(s["close_code"], 4001, "{s}");
    let _ = std::fs::write(format!("/proc/{cell}/clear_refs"), "5");
    let before = vm_kib(cell, "VmRSS:");

    // 200 MiB from a client as fast as it can write, to an app that takes 50 messages a
    // second: all arrive in order, and the cell holds a few of them at a time, not 200.
    let s = ws.client("flood", "/ws/slow");
    assert_eq!(s["connected"], true, "{s}");
    assert_eq!(s["app"]["count"], 200, "{s}");
    assert_eq!(s["app"]["in_order"], true, "{s}");
    let peak = vm_kib(cell, "VmHWM:");
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 64 * 1024,
        "the cell's RSS grew by {grew} KiB (from {before} KiB) while 200 MiB went through"
    );
}

#[test]
fn asgi_websocket_idle_timeout() {
    let Some(ws) = Ws::start(
        "asgi_websocket_idle_timeout",
        ", websocket_idle_timeout = \"1s\"",
    ) else {
        return;
    };
    // Messages keep the WebSocket open past the timeout; a silent one is closed with 1001,
    // and the app hears of it as websocket.disconnect.
    let s = ws.client("idle", "/ws/echo");
    assert_eq!(s["connected"], true, "{s}");
    assert!(s["sent"].as_u64() > Some(0), "{s}");
    assert_eq!(s["echoed"], s["sent"], "{s}");
    assert_eq!(
        (s["close_code"].as_u64(), s["close_reason"].as_str()),
        (Some(1001), Some("idle timeout")),
        "{s}"
    );
    ws.portico
        .wait_stderr(Duration::from_secs(10), "past websocket_idle_timeout");
    wait_until(Duration::from_secs(10), "the app's disconnect note", || {
        ws.file("disconnect.log").lines().any(|l| l == "1001")
    });
}

/// A WebSocket client that writes its frames by hand, for the protocol errors and frame
/// orders a library client will not produce.
struct RawWs {
    c: Conn,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects to `path` and completes the handshake (101).
    fn open(addr: std::net::SocketAddr, path: &str) -> RawWs {
        let mut c = Conn::open(addr).unwrap();
        let ok = [UPGRADE[0], UPGRADE[1], KEY, ("Sec-WebSocket-Version", "13")];
        c.send(raw_request("GET", path, &ok).as_bytes()).unwrap();
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            got.extend(c.read_some(1).unwrap());
        }
        let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&got[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawWs {
            c,
            buf: got[end..].to_vec(),
        }
    }

    /// Writes one frame (`masked` as a client must, or not, to break the rule).
    fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => f.push(m | n as u8),
            n => {
                f.push(m | 126);
                f.extend((n as u16).to_be_bytes());
            }
        }
        let key = [0x37u8, 0xfa, 0x21, 0x3d];
        if masked {
            f.extend(key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend(payload);
        }
        self.c.send(&f).unwrap();
    }

    /// Reads one (unmasked, server) frame: its first byte (FIN and opcode) and its payload.
    fn read_frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let first = self.buf[0];
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return (first, payload);
                }
            }
            let more = self.c.read_some(1).expect("a frame from the server");
            self.buf.extend(more);
        }
    }
}

#[test]
fn asgi_websocket_protocol_frames() {
    let Some(ws) = Ws::start("asgi_websocket_protocol_frames", "") else {
        return;
    };
    let addr = ws.portico.addr;

    // A ping between the fragments of a text message is answered at once, and the message
    // still reaches the app (and comes back) whole.
    let mut c = RawWs::open(addr, "/ws/echo");
    c.frame(false, 0x1, b"frag", true);
    c.frame(true, 0x9, b"are you there", true);
    c.frame(false, 0x0, b"men", true);
    c.frame(true, 0x0, b"ted", true);
    let mut pong = None;
    let text = loop {
        match c.read_frame() {
            (0x8a, p) => pong = Some(p),
            (0x81, p) => break p,
            (first, p) => panic!("unexpected frame {first:#x}: {p:?}"),
        }
    };
    assert_eq!(
        pong.as_deref(),
        Some(&b"are you there"[..]),
        "the ping's pong"
    );
    assert_eq!(text, b"fragmented");
    c.frame(true, 0x8, &1000u16.to_be_bytes(), true);
    assert_eq!(c.read_frame(), (0x88, 1000u16.to_be_bytes().to_vec()));

    // An unmasked client frame is a protocol error: close 1002, and the app hears 1002.
    let mut c = RawWs::open(addr, "/ws/echo");
    c.frame(true, 0x1, b"hi", false);
    let (first, payload) = c.read_frame();
    assert_eq!(first, 0x88, "a close frame: {payload:?}");
    assert_eq!(
        u16::from_be_bytes([payload[0], payload[1]]),
        1002,
        "{payload:?}"
    );
    wait_until(Duration::from_secs(10), "the app's disconnect note", || {
        ws.file("disconnect.log").lines().any(|l| l == "1002")
    });
}
