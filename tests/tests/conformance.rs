//! RFC 9112 conformance of the request path: malformed framing and heads are answered 4xx by
//! Portico and never reach the app; responses whose body falls short of the app's own
//! Content-Length arrive truncated, as from gunicorn; `workers = "auto"` is seen by the app.
use std::io::{Read as _, Write as _};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use portico_tests::*;

/// Counts its calls (one cell, so one counter), echoes bodies, and answers short.
const APP: &str = r#"
import json, os
CALLS = [0]

def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/calls":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(CALLS[0]).encode()]
    CALLS[0] += 1
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    if path == "/short-list":
        start_response("200 OK", [("Content-Length", "10")])
        return [b"abc"]
    if path == "/short-gen":
        start_response("200 OK", [("Content-Length", "100")])
        def gen():
            yield b"only-ten!!"
        return gen()
    if path == "/multiprocess":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps([environ["wsgi.multiprocess"], environ["wsgi.multithread"]]).encode()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"#;

fn serve(site: &Site, workers: &str) -> Portico {
    serve_with(site, workers, "")
}

fn serve_with(site: &Site, workers: &str, wsgi_extra: &str) -> Portico {
    site.file("app/app.py", APP.as_bytes());
    let cfg = format!(
        "[server]\nworkers = {workers}\n[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"app:application\", chdir = \"{}\"{wsgi_extra} }}\n",
        site.root("app")
    );
    site.file("p.toml", cfg.as_bytes());
    Portico::start(&["-c", &site.root("p.toml")])
}

fn calls(p: &Portico) -> u64 {
    get(p.addr, "/calls").unwrap().text().parse().unwrap()
}

/// Sends `raw` on a fresh connection; the response (if any) and whether the server then
/// closed the connection.
fn exchange(p: &Portico, raw: &[u8], half_close: bool) -> (Option<Response>, bool) {
    let mut c = Conn::open(p.addr).unwrap();
    c.send(raw).unwrap();
    if half_close {
        c.stream.shutdown(Shutdown::Write).unwrap();
    }
    let resp = c.read_response("POST").ok();
    let closed = c.closed_within(Duration::from_secs(5));
    (resp, closed)
}

fn chunked_post(body: &[u8]) -> Vec<u8> {
    let mut raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    raw.extend_from_slice(body);
    raw
}

#[test]
fn malformed_chunked_bodies_are_400_and_never_reach_the_app() {
    let site = Site::new();
    let p = serve(&site, "1");
    // A well-formed chunked body (with an extension and a trailer) reaches the app.
    let (r, _) = exchange(
        &p,
        &chunked_post(b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"),
        false,
    );
    assert_eq!(r.as_ref().map(Response::text), Some("hello world".into()));
    let before = calls(&p);
    let cases: &[(&str, &[u8])] = &[
        ("signed size", b"+5\r\nhello\r\n0\r\n\r\n"),
        ("negative size", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("underscore", b"0_5\r\nhello\r\n0\r\n\r\n"),
        ("garbage size", b"zz\r\nhello\r\n0\r\n\r\n"),
        ("size overflow", b"100000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("bare LF after size", b"5\nhello\r\n0\r\n\r\n"),
        ("bare LF after data", b"5\r\nhello\n0\r\n\r\n"),
        ("bare CR in extension", b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
        ("data longer than size", b"3\r\nhello\r\n0\r\n\r\n"),
        ("data shorter than size", b"5\r\nhel\r\n0\r\n\r\n"),
    ];
    for (what, body) in cases {
        let (r, closed) = exchange(&p, &chunked_post(body), false);
        let r = r.unwrap_or_else(|| panic!("{what}: no response"));
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert!(closed, "{what}: connection left open after a framing error");
    }
    // A missing final CRLF: the client stops there; whatever comes back is never the app's.
    let (r, closed) = exchange(&p, &chunked_post(b"5\r\nhello\r\n0\r\n"), true);
    if let Some(r) = r {
        assert_eq!(r.status, 400, "missing final CRLF: {}", r.text());
    }
    assert!(closed);
    assert_eq!(calls(&p), before, "a malformed body reached the app");
    assert!(
        !p.stderr_text().contains("Traceback"),
        "framing errors are client errors, not app errors:\n{}",
        p.stderr_text()
    );
}

#[test]
fn a_small_body_that_never_finishes_is_408_without_the_app() {
    let site = Site::new();
    let p = serve_with(&site, "1", ", request_timeout = \"1s\"");
    let before = calls(&p);
    let mut c = Conn::open(p.addr).unwrap();
    // Half a chunked body, then nothing: the pre-read gives up after request_timeout.
    c.send(&chunked_post(b"5\r\nhel")).unwrap();
    let r = c.read_response("POST").unwrap();
    assert_eq!(r.status, 408);
    assert!(c.closed_within(Duration::from_secs(5)));
    assert_eq!(calls(&p), before);
}

#[test]
fn a_framing_error_in_a_large_streamed_body_is_400_not_500() {
    let site = Site::new();
    let p = serve(&site, "1");
    // 80 KiB of good chunks (past the pre-read limit), then a broken chunk-size line.
    let mut body = Vec::new();
    for _ in 0..80 {
        body.extend_from_slice(b"400\r\n");
        body.extend_from_slice(&[b'x'; 1024]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"+5\r\nhello\r\n0\r\n\r\n");
    let (r, closed) = exchange(&p, &chunked_post(&body), false);
    let r = r.expect("a response");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(closed);
    p.wait_stderr(Duration::from_secs(10), "client error");
    let log = p.stderr_text();
    assert!(!log.contains("Traceback"), "{log}");
    assert!(
        p.metric("portico_wsgi_app_exceptions_total{route=\"/\"}")
            .unwrap_or(0.0)
            == 0.0,
        "counted as an app exception"
    );
}

#[test]
fn a_header_line_inside_a_body_is_body() {
    let site = Site::new();
    let p = serve(&site, "1");
    let body = b"Transfer-Encoding: chunked\r\n\r\nmore";
    let mut raw = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    // And a second request on the same connection, to show the framing stayed in step.
    raw.extend_from_slice(b"GET /calls HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut c = Conn::open(p.addr).unwrap();
    c.send(&raw).unwrap();
    let r = c.read_response("POST").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &body[..]));
    let r = c.read_response("GET").unwrap();
    assert_eq!((r.status, r.text()), (200, "1".to_string()));
    // The real smuggling shape is still refused, also when pipelined behind a good request.
    let mut c = Conn::open(p.addr).unwrap();
    c.send(b"GET /calls HTTP/1.1\r\nHost: t\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response("GET").unwrap().status, 200);
    assert_eq!(c.read_response("POST").unwrap().status, 400);
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn repeated_singleton_fields_are_400() {
    let site = Site::new();
    let p = serve(&site, "1");
    let before = calls(&p);
    for (what, raw) in [
        (
            "two Host fields",
            &b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
        ),
        (
            "two Content-Type fields",
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        ),
        (
            "two different Content-Lengths",
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        ),
    ] {
        let (r, _) = exchange(&p, raw, false);
        assert_eq!(r.map(|r| r.status), Some(400), "{what}");
    }
    assert_eq!(calls(&p), before, "a refused request reached the app");
}

#[test]
fn targets_outside_visible_ascii_are_400() {
    let site = Site::new();
    let p = serve(&site, "1");
    let before = calls(&p);
    for (what, target) in [
        ("raw UTF-8", &b"/caf\xc3\xa9"[..]),
        ("DEL", b"/a\x7fb"),
        ("control byte", b"/a\x01b"),
        ("latin-1 byte", b"/a\xe9"),
    ] {
        let mut raw = b"GET ".to_vec();
        raw.extend_from_slice(target);
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\n\r\n");
        let (r, _) = exchange(&p, &raw, false);
        assert_eq!(r.map(|r| r.status), Some(400), "{what}");
    }
    // Percent-encoded, the same path is fine.
    assert_eq!(get(p.addr, "/caf%C3%A9").unwrap().status, 200);
    assert_eq!(calls(&p), before + 1);
}

/// Reads everything until the server closes: (head, body bytes after it).
fn read_to_close(p: &Portico, path: &str) -> (String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    loop {
        assert!(Instant::now() < deadline, "the connection never closed");
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{path}: {e}"),
        }
    }
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{path}: no response head in {all:?}"));
    (
        String::from_utf8_lossy(&all[..split]).into_owned(),
        all[split + 4..].to_vec(),
    )
}

#[test]
fn a_body_shorter_than_its_content_length_arrives_truncated_then_closes() {
    let site = Site::new();
    let p = serve(&site, "1");
    for (path, declared, sent) in [
        ("/short-list", "10", &b"abc"[..]),
        ("/short-gen", "100", b"only-ten!!"),
    ] {
        let (head, body) = read_to_close(&p, path);
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-length: {declared}")),
            "{path}: the app's Content-Length is kept: {head}"
        );
        assert_eq!(body, sent, "{path}");
    }
    p.wait_stderr(
        Duration::from_secs(10),
        "sending them and closing the connection",
    );
}

#[test]
fn workers_auto_counts_cpus_in_the_master() {
    let site = Site::new();
    let p = serve(&site, "\"auto\"");
    let r = get(p.addr, "/multiprocess").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v[0].as_bool(),
        Some(cpus() > 1),
        "wsgi.multiprocess with {} usable CPUs",
        cpus()
    );
    assert_eq!(p.cell_pids().len(), cpus());
}
