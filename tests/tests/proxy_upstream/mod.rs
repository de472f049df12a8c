//! The upstream app of `proxy.rs` and `proxy_transport.rs`: a WSGI app under gunicorn (from
//! the test virtualenv; SKIP without it), and how the tests start portico in front of it.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use portico_tests::*;
use serde_json::Value;

/// Echoes what it received as JSON; the last path segment picks another behaviour.
pub const APP: &str = r#"
import hashlib, json, time
from urllib.parse import parse_qs

def echo(environ):
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
    for k in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(k):
            headers[k.replace("_", "-").lower()] = environ[k]
    body = environ["wsgi.input"].read()
    return {
        "method": environ["REQUEST_METHOD"],
        "uri": environ.get("RAW_URI"),
        "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "headers": headers,
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "remote_port": environ.get("REMOTE_PORT"),
    }

def application(environ, start_response):
    q = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    what = environ["PATH_INFO"].rsplit("/", 1)[-1]
    if what == "redirect":
        start_response("302 Found", [("Location", q["to"]), ("Content-Length", "0")])
        return [b""]
    if what == "refresh":
        start_response("200 OK", [("Refresh", "0; url=" + q["to"]), ("Content-Length", "0")])
        return [b""]
    if what == "cookies":
        start_response("200 OK", [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/"),
                                  ("Content-Type", "text/plain")])
        return [b"cookies"]
    if what == "status":
        code = int(q["code"])
        start_response(f"{code} Status {code}", [("Content-Type", "text/plain")])
        return [b""] if code in (204, 304) else [f"status {code}".encode()]
    if what == "stream":
        def gen():
            yield b"chunk-0\n"
            for i in range(1, 5):
                time.sleep(0.3)
                yield f"chunk-{i}\n".encode()
            time.sleep(0.3)
            yield b"END\n"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()
    if what == "slow":
        time.sleep(float(q.get("s", "3")))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slow done"]
    if what == "first":
        # Only the first n bytes of the body: answered before the client has sent the rest.
        data = environ["wsgi.input"].read(int(q["n"]))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [data]
    if what == "upload":
        h, n = hashlib.sha256(), 0
        while True:
            block = environ["wsgi.input"].read(65536)
            if not block:
                break
            h.update(block)
            n += len(block)
        out = json.dumps({"len": n, "sha256": h.hexdigest()}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [out]
    out = json.dumps(echo(environ)).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("X-Upstream", "gunicorn")])
    return [out]
"#;

/// gunicorn with one worker (`extra`: more flags) serving `APP` from `site`.
pub fn gunicorn(venv: &Path, site: &Site, bind: Bind, extra: &[&str]) -> Upstream {
    site.file("app/app.py", APP.as_bytes());
    let mut cmd = Command::new(venv.join("bin/gunicorn"));
    cmd.args(["-b", &bind.server(), "-w", "1", "--graceful-timeout", "1"])
        .args(["--log-level", "warning", "--chdir", &site.root("app")])
        .args(extra)
        .arg("app:application");
    let log = site.path().join(format!("gunicorn-{}.log", bind.label()));
    Upstream::start(cmd, bind, log)
}

pub fn venv_or_skip(test: &str) -> Option<PathBuf> {
    let v = venv_for(test, "gunicorn")?;
    if !v.join("bin/gunicorn").is_file() {
        skip(
            test,
            "no gunicorn in the test virtualenv (run `cargo xtask test` to install it)",
        );
        return None;
    }
    Some(v)
}

/// Starts portico with `toml` (after `[server] workers = 1`).
pub fn portico(site: &Site, toml: &str) -> Portico {
    let cfg = format!("[server]\nworkers = 1\n{toml}");
    site.file("p.toml", cfg.as_bytes());
    Portico::start(&["-c", &site.root("p.toml")])
}

/// A raw request with its own `Host` and an optional body (sent with Content-Length).
pub fn request_to(
    addr: SocketAddr,
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut c = Conn::open(addr).unwrap();
    send_request(&mut c, method, target, host, headers, body);
    c.read_response(method)
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

pub fn send_request(
    c: &mut Conn,
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    c.send(raw.as_bytes()).unwrap();
    c.send(body).unwrap();
}

/// GET `target` through portico: what the echo app received.
pub fn echo(p: &Portico, target: &str) -> Value {
    echo_with(p, target, "test", &[])
}

pub fn echo_with(p: &Portico, target: &str, host: &str, headers: &[(&str, &str)]) -> Value {
    let r = request_to(p.addr, "GET", target, host, headers, b"");
    assert_eq!(
        r.status,
        200,
        "GET {target}: {}\n{}",
        r.text(),
        p.stderr_text()
    );
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("GET {target}: {e}: {}", r.text()))
}

pub fn header<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v["headers"][name].as_str()
}
