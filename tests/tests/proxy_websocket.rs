//! WebSocket tunnels through proxy routes (`websocket = true`), against a real upstream (the
//! Python `websockets` echo server) and a real client (`websockets.sync.client`), both from
//! the test virtualenv: echoes both ways, close codes, refused and failed handshakes, the idle
//! timeout, a draining cell that keeps its tunnels, plain HTTP on the same route; the echoes
//! and close codes again through the `splice` and `sockmap` relays.
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portico_tests::*;
use serde_json::Value;

/// The upstream: echoes every message; `/close` closes with 4002 "server-bye" after the first
/// message; `/plain` answers plain HTTP.
const SERVER: &str = r#"
import asyncio, sys
from http import HTTPStatus
from websockets.asyncio.server import serve, unix_serve

async def handler(ws):
    path = ws.request.path
    async for msg in ws:
        if path.endswith("/close"):
            await ws.close(4002, "server-bye")
            return
        await ws.send(msg)

def plain(connection, request):
    if request.path.endswith("/plain"):
        return connection.respond(HTTPStatus.OK, "plain ok\n")
    return None

async def main():
    kw = dict(max_size=None, ping_interval=None, process_request=plain)
    if sys.argv[1] == "unix":
        server = unix_serve(handler, sys.argv[2], **kw)
    else:
        server = serve(handler, "127.0.0.1", int(sys.argv[2]), **kw)
    async with server:
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"#;

/// The client: one scenario (argv[1]) against one URL (argv[2]), a JSON summary on stdout.
const CLIENT: &str = r#"
import json, os, sys, time
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

mode, url = sys.argv[1], sys.argv[2]
out = {}
try:
    with connect(url, max_size=None, open_timeout=10, close_timeout=5) as ws:
        out["connected"] = True
        if mode == "echo":
            ok = bad = 0
            for i in range(200):
                msgs = [f"text {i} " + "x" * (i * 7), os.urandom(1 + i * 13)]
                if i == 100:
                    msgs.append(os.urandom(1 << 20))
                for m in msgs:
                    ws.send(m)
                    back = ws.recv(timeout=10)
                    if back == m and type(back) is type(m):
                        ok += 1
                    else:
                        bad += 1
            out.update(ok=ok, bad=bad)
            ws.close(4001, "client-bye")
            out.update(close_code=ws.close_code, close_reason=ws.close_reason)
        elif mode == "server-close":
            ws.send("hello")
            try:
                ws.recv(timeout=10)
                out["closed"] = False
            except ConnectionClosed as e:
                out.update(closed=True, code=e.rcvd.code, reason=e.rcvd.reason)
        elif mode == "idle":
            ws.send("ping")
            out["echo"] = ws.recv(timeout=10)
            start = time.monotonic()
            try:
                ws.recv(timeout=15)
                out["closed"] = False
            except ConnectionClosed:
                out["closed"] = True
            except TimeoutError:
                out["closed"] = False
            out["after_s"] = time.monotonic() - start
        elif mode == "hold":
            ws.send("before")
            out["before"] = ws.recv(timeout=10)
            print("open", flush=True)
            sys.stdin.readline()
            ws.send("after")
            out["after"] = ws.recv(timeout=10)
            ws.close(1000, "done")
            out["close_code"] = ws.close_code
except InvalidStatus as e:
    out.update(connected=False, status=e.response.status_code)
except Exception as e:
    out.update(connected=False, error=f"{type(e).__name__}: {e}")
print(json.dumps(out), flush=True)
"#;

struct Ws {
    venv: PathBuf,
    site: Site,
}

impl Ws {
    /// The venv with `websockets`, or a SKIP line and None.
    fn new(test: &str) -> Option<Ws> {
        let Some(venv) = test_venv() else {
            skip(
                test,
                "no test virtualenv (run `cargo xtask test`, which creates .venv)",
            );
            return None;
        };
        let has = Command::new(venv.join("bin/python"))
            .args([
                "-c",
                "import websockets.asyncio.server, websockets.sync.client",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            skip(
                test,
                "no websockets>=13 in the test virtualenv (run `cargo xtask test` to install it)",
            );
            return None;
        }
        let site = Site::new();
        site.file("server.py", SERVER.as_bytes());
        site.file("client.py", CLIENT.as_bytes());
        Some(Ws { venv, site })
    }

    fn upstream(&self, bind: Bind) -> Upstream {
        let mut cmd = Command::new(self.venv.join("bin/python"));
        cmd.arg(self.site.root("server.py"));
        match &bind {
            Bind::Tcp(a) => cmd.args(["tcp", &a.port().to_string()]),
            Bind::Unix(p) => cmd.arg("unix").arg(p),
        };
        let log = self.site.path().join(format!("ws-{}.log", bind.label()));
        Upstream::start(cmd, bind, log)
    }

    /// portico with one worker and `toml`.
    fn portico(&self, toml: &str) -> Portico {
        let cfg = format!("[server]\nworkers = 1\n{toml}");
        self.site.file("p.toml", cfg.as_bytes());
        Portico::start(&["-c", &self.site.root("p.toml")])
    }

    fn client_cmd(&self, mode: &str, url: &str) -> Command {
        let mut cmd = Command::new(self.venv.join("bin/python"));
        cmd.arg(self.site.root("client.py")).args([mode, url]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    /// Runs a client scenario to its end (killed past `within`) and returns its summary.
    fn client(&self, mode: &str, url: &str, within: Duration) -> Value {
        let mut cmd = self.client_cmd(mode, url);
        cmd.stdin(Stdio::null());
        summary(cmd.spawn().expect("spawn the client"), within)
    }
}

/// The client's JSON summary, waiting at most `within` for it to exit.
fn summary(mut child: Child, within: Duration) -> Value {
    let done = poll_until(within, || matches!(child.try_wait(), Ok(Some(_))));
    if !done {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("client output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        done,
        "client still running after {within:?}: {stdout}\n{}",
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

fn route(prefix: &str, server: &str, websocket: bool) -> String {
    format!(
        "[[upstream]]\nname = \"ws{n}\"\nservers = [\"{server}\"]\n\n\
         [[route]]\nprefix = \"{prefix}\"\nproxy = {{ upstream = \"ws{n}\", path = \"/\", websocket = {websocket} }}\n",
        n = prefix.len()
    )
}

fn url(p: &Portico, path: &str) -> String {
    format!("ws://{}{path}", p.addr)
}

#[test]
fn websocket_messages_and_close_codes_pass_through() {
    let Some(ws) = Ws::new("websocket_messages_and_close_codes_pass_through") else {
        return;
    };
    let up = ws.upstream(Bind::Tcp(free_port()));
    let p = ws.portico(&route("/ws/", &up.bind.server(), true));
    let s = ws.client("echo", &url(&p, "/ws/echo"), Duration::from_secs(60));
    assert_eq!(s["connected"], true, "{s}");
    assert_eq!(s["ok"], 401, "{s}");
    assert_eq!(s["bad"], 0, "{s}");
    assert_eq!(s["close_code"], 4001, "{s}");
    assert_eq!(s["close_reason"], "client-bye", "{s}");

    let s = ws.client(
        "server-close",
        &url(&p, "/ws/close"),
        Duration::from_secs(30),
    );
    assert_eq!(s["closed"], true, "{s}");
    assert_eq!(s["code"], 4002, "{s}");
    assert_eq!(s["reason"], "server-bye", "{s}");

    // Plain requests on the same route are proxied as before.
    let r = get(p.addr, "/ws/plain").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "plain ok\n");
    drop(up);
}

/// The same messages and close codes through the kernel relays (`copy` is the test above).
#[test]
fn websocket_messages_pass_through_splice_and_sockmap() {
    let Some(ws) = Ws::new("websocket_messages_pass_through_splice_and_sockmap") else {
        return;
    };
    let up = ws.upstream(Bind::Tcp(free_port()));
    for relay in ["splice", "sockmap"] {
        let toml = route("/ws/", &up.bind.server(), true).replace(
            "websocket = true",
            &format!("websocket = true, relay = \"{relay}\""),
        );
        let p = ws.portico(&toml);
        let s = ws.client("echo", &url(&p, "/ws/echo"), Duration::from_secs(60));
        assert_eq!(s["ok"], 401, "{relay}: {s}");
        assert_eq!(s["bad"], 0, "{relay}: {s}");
        assert_eq!(s["close_code"], 4001, "{relay}: {s}");
        assert_eq!(s["close_reason"], "client-bye", "{relay}: {s}");
        let s = ws.client(
            "server-close",
            &url(&p, "/ws/close"),
            Duration::from_secs(30),
        );
        assert_eq!(s["code"], 4002, "{relay}: {s}");
        assert_eq!(s["reason"], "server-bye", "{relay}: {s}");
    }
}

#[test]
fn websocket_over_a_unix_socket() {
    let Some(ws) = Ws::new("websocket_over_a_unix_socket") else {
        return;
    };
    let sock = ws.site.path().join("ws.sock");
    let up = ws.upstream(Bind::Unix(sock));
    let p = ws.portico(&route("/ws/", &up.bind.server(), true));
    let s = ws.client("echo", &url(&p, "/ws/echo"), Duration::from_secs(60));
    assert_eq!(s["ok"], 401, "{s}");
    assert_eq!(s["close_code"], 4001, "{s}");
}

#[test]
fn without_websocket_the_upgrade_is_not_tunnelled() {
    let Some(ws) = Ws::new("without_websocket_the_upgrade_is_not_tunnelled") else {
        return;
    };
    let up = ws.upstream(Bind::Tcp(free_port()));
    let p = ws.portico(&route("/ws/", &up.bind.server(), false));
    let s = ws.client("echo", &url(&p, "/ws/echo"), Duration::from_secs(30));
    assert_eq!(s["connected"], false, "{s}");
    let status = s["status"]
        .as_u64()
        .expect("a refused handshake has a status");
    assert_ne!(status, 101, "{s}");
    let r = get(p.addr, "/ws/plain").unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn websocket_to_a_down_upstream_is_502() {
    let Some(ws) = Ws::new("websocket_to_a_down_upstream_is_502") else {
        return;
    };
    let p = ws.portico(&route("/ws/", &free_port().to_string(), true));
    let s = ws.client("echo", &url(&p, "/ws/echo"), Duration::from_secs(30));
    assert_eq!(s["connected"], false, "{s}");
    assert_eq!(s["status"], 502, "{s}");
    // The log line reaches the test a little after the response.
    wait_until(Duration::from_secs(5), "the connect failure logged", || {
        p.stderr_text().contains("connect failed")
    });
    let err = p.stderr_text();
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_idle_tunnel_closes_after_read_timeout() {
    let Some(ws) = Ws::new("an_idle_tunnel_closes_after_read_timeout") else {
        return;
    };
    let up = ws.upstream(Bind::Tcp(free_port()));
    let toml = route("/ws/", &up.bind.server(), true)
        .replace("servers = [", "read_timeout = \"1s\"\nservers = [");
    let p = ws.portico(&toml);
    let s = ws.client("idle", &url(&p, "/ws/echo"), Duration::from_secs(30));
    assert_eq!(s["echo"], "ping", "{s}");
    assert_eq!(s["closed"], true, "{s}");
    let after = s["after_s"].as_f64().unwrap();
    assert!((0.8..5.0).contains(&after), "closed after {after} s: {s}");
}

#[test]
fn a_draining_cell_keeps_its_tunnels() {
    let Some(ws) = Ws::new("a_draining_cell_keeps_its_tunnels") else {
        return;
    };
    let up = ws.upstream(Bind::Tcp(free_port()));
    let mut p = ws.portico(&route("/ws/", &up.bind.server(), true));
    let mut cmd = ws.client_cmd("hold", &url(&p, "/ws/echo"));
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the client");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "open", "the tunnel did not open: {line}");
    // An idle keep-alive connection beside it: the drain closes it after its grace.
    let mut idle = Conn::open(p.addr).unwrap();
    assert_eq!(idle.request("GET", "/nothing", &[]).unwrap().status, 404);
    p.signal(rustix::process::Signal::TERM);
    // Once the idle connection is closed, the grace is over; the tunnel must still work.
    assert!(
        idle.closed_within(Duration::from_secs(10)),
        "the draining cell never closed an idle keep-alive connection"
    );
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
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
    assert_eq!(s["after"], "after", "{s}");
    assert_eq!(s["close_code"], 1000, "{s}");
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("exits once the tunnel closed");
    assert!(status.success(), "{status:?}");
}
