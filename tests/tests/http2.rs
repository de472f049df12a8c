//! HTTP/2 with prior knowledge (`--h2c`) against the real binary: every route kind (static,
//! WSGI, ASGI, proxy to gunicorn) with curl and with httpx limited to HTTP/2; the floods its
//! limits stop (rapid reset, CONTINUATION, tiny frames), refused streams, the idle and header
//! timeouts, GOAWAY on drain; and with h2c off, the preface stays an HTTP/1 error. The raw
//! frames come from `http2_app/h2raw.py` (hpack, no client state machine).
#[expect(
    dead_code,
    reason = "the shared upstream module; this file needs only its gunicorn"
)]
mod proxy_upstream;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portico_tests::*;
use serde_json::Value;

const APPS: &str = include_str!("http2_app/apps.py");
const H2RAW: &str = include_str!("http2_app/h2raw.py");

/// The test virtualenv with gunicorn (the proxy's upstream), httpx and h2; None after a SKIP.
fn venv_or_skip(test: &str) -> Option<PathBuf> {
    let v = proxy_upstream::venv_or_skip(test)?;
    let ok = Command::new(v.join("bin/python"))
        .args(["-c", "import httpx, h2, hpack"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(
            test,
            "no httpx[http2] in the test virtualenv (run `cargo xtask test` to install it)",
        );
        return None;
    }
    Some(v)
}

fn curl_or_skip(test: &str) -> bool {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("nghttp2"));
    if !ok {
        skip(test, "no curl with HTTP/2 (nghttp2) on PATH");
    }
    ok
}

/// A site with a static file, the WSGI and ASGI apps of `http2_app/apps.py`, and (with
/// `upstream`) a proxy route to it; `extra` goes into the configuration's top (`[limits]`...).
fn serve(
    site: &Site,
    venv: &Path,
    upstream: Option<&Upstream>,
    args: &[&str],
    extra: &str,
) -> Portico {
    site.file("static/a.txt", b"static over h2\n");
    site.file("apps/apps.py", APPS.as_bytes());
    let apps = site.root("apps");
    let venv = venv.display();
    let mut cfg = format!(
        "[server]\nworkers = 1\n{extra}\n\
         [[route]]\nprefix = \"/static/\"\nstatic = {{ root = \"{}\" }}\n\
         [[route]]\nprefix = \"/wsgi/\"\nwsgi = {{ app = \"apps:wsgi\", chdir = \"{apps}\", venv = \"{venv}\" }}\n\
         [[route]]\nprefix = \"/asgi/\"\nasgi = {{ app = \"apps:asgi\", chdir = \"{apps}\", venv = \"{venv}\" }}\n",
        site.root("static"),
    );
    if let Some(up) = upstream {
        cfg.push_str(&format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
             [[route]]\nprefix = \"/proxy/\"\nproxy = {{ upstream = \"app\", path = \"/\" }}\n",
            up.bind.server()
        ));
    }
    site.file("portico.toml", cfg.as_bytes());
    let path = site.root("portico.toml");
    let mut all = vec!["-c", path.as_str()];
    all.extend_from_slice(args);
    Portico::start(&all)
}

/// curl with prior knowledge: status, the HTTP version it used, and the body.
fn curl_h2(p: &Portico, path: &str, data: Option<&str>) -> (u16, String, String) {
    let url = format!("http://{}{path}", p.addr);
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_code} %{http_version}",
    ]);
    if let Some(d) = data {
        cmd.args(["--data-binary", d]);
    }
    let out = cmd.arg(&url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, version) = tail.split_once(' ').unwrap_or((tail, ""));
    (
        code.parse().unwrap_or(0),
        version.to_owned(),
        body.to_owned(),
    )
}

/// Runs one scenario of `h2raw.py` against `p`; its JSON result.
fn h2raw(venv: &Path, site: &Site, p: &Portico, scenario: &str, arg: &str) -> Value {
    let script = site.file("h2raw.py", H2RAW.as_bytes());
    let out = Command::new(venv.join("bin/python"))
        .arg(script)
        .args([scenario, &p.addr.port().to_string(), arg])
        .output()
        .expect("run h2raw.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "h2raw {scenario}: {e}\nstdout: {stdout}\nstderr: {}\nportico:\n{}",
            String::from_utf8_lossy(&out.stderr),
            p.stderr_text()
        )
    })
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// The cell's resident memory, in KiB (the one cell of these tests).
fn cell_rss_kib(p: &Portico) -> u64 {
    let pid = p.cell_pids()[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// What a normal client gets after an attack: the static file over HTTP/2, from the same cell.
fn still_serves(p: &Portico, cell: i32) {
    assert_eq!(p.cell_pids(), vec![cell], "the cell survived");
    let mut r = None;
    wait_until(Duration::from_secs(10), "a normal HTTP/2 request", || {
        let c = curl_h2(p, "/static/a.txt", None);
        let ok = c.0 == 200;
        r = Some(c);
        ok
    });
    let (_, version, body) = r.unwrap();
    assert_eq!((version.as_str(), body.as_str()), ("2", "static over h2\n"));
}

/// `promtool check metrics` passes the scrape `m` (a SKIP-PART without promtool).
fn promtool_passes(test: &str, m: &str) {
    match promtool_check(m) {
        Some((passed, text)) => assert!(passed, "promtool: {text}"),
        None => skip_part(test, "promtool", PROMTOOL_MISSING),
    }
}

#[test]
fn curl_with_prior_knowledge_gets_every_route_kind() {
    let test = "curl_with_prior_knowledge_gets_every_route_kind";
    let Some(venv) = venv_or_skip(test) else {
        return;
    };
    if !curl_or_skip(test) {
        return;
    }
    let site = Site::new();
    let up = proxy_upstream::gunicorn(&venv, &site, Bind::Tcp(free_port()), &[]);
    let p = serve(&site, &venv, Some(&up), &["--h2c"], "");

    let (code, version, body) = curl_h2(&p, "/static/a.txt", None);
    assert_eq!(
        (code, version.as_str(), body.as_str()),
        (200, "2", "static over h2\n")
    );

    let (code, version, body) = curl_h2(&p, "/wsgi/hello", Some("twelve bytes"));
    assert_eq!((code, version.as_str()), (200, "2"), "{body}");
    let w = json(&body);
    assert_eq!(w["protocol"], "HTTP/2.0");
    assert_eq!(w["host"], p.addr.to_string(), ":authority becomes Host");
    assert_eq!(
        (w["method"].as_str(), w["len"].as_u64()),
        (Some("POST"), Some(12))
    );

    let (code, version, body) = curl_h2(&p, "/asgi/hello", Some("twelve bytes"));
    assert_eq!((code, version.as_str()), (200, "2"), "{body}");
    let a = json(&body);
    assert_eq!(a["http_version"], "2");
    assert_eq!(a["host"], p.addr.to_string());
    assert_eq!(a["len"], 12);

    let (code, version, body) = curl_h2(&p, "/proxy/echo?x=1", Some("twelve bytes"));
    assert_eq!((code, version.as_str()), (200, "2"), "{body}");
    let e = json(&body);
    assert_eq!(e["uri"], "/echo?x=1");
    assert_eq!(e["body_len"], 12);
    assert_eq!(e["headers"]["host"], p.addr.to_string());

    // The same answers over HTTP/1.1 on the same port (the preface picks the protocol).
    let r = get(p.addr, "/static/a.txt").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "static over h2\n"));

    let m = p.wait_metrics(Duration::from_secs(10), |m| {
        metric_value(
            m,
            "portico_cell_requests_by_protocol_total{cell=\"0\",network_protocol_version=\"2\"}",
        ) == Some(4.0)
    });
    assert_eq!(
        metric_value(
            &m,
            "portico_cell_requests_by_protocol_total{cell=\"0\",network_protocol_version=\"1.1\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&m, "portico_http2_connections_total{cell=\"0\"}"),
        Some(4.0)
    );
}

#[test]
fn httpx_over_http2_only_gets_every_route_kind() {
    let test = "httpx_over_http2_only_gets_every_route_kind";
    let Some(venv) = venv_or_skip(test) else {
        return;
    };
    let site = Site::new();
    let up = proxy_upstream::gunicorn(&venv, &site, Bind::Tcp(free_port()), &[]);
    let p = serve(&site, &venv, Some(&up), &["--h2c"], "");
    let script = format!(
        r#"
import json, httpx
out = {{}}
with httpx.Client(http1=False, http2=True, base_url="http://{addr}") as c:
    for path in ("/static/a.txt", "/wsgi/x", "/asgi/x", "/proxy/echo", "/static/missing", "/nowhere"):
        r = c.post(path, content=b"0123456789") if path != "/static/a.txt" else c.get(path)
        out[path] = {{"status": r.status_code, "version": r.http_version,
                      "connection": r.headers.get("connection"), "text": r.text}}
    # A streamed request body (no Content-Length): DATA frames until END_STREAM.
    def gen():
        yield b"abc"
        yield b"defg"
    for path in ("/wsgi/stream", "/asgi/stream", "/proxy/upload"):
        r = c.post(path, content=gen())
        out[path] = {{"status": r.status_code, "version": r.http_version, "text": r.text}}
print(json.dumps(out))
"#,
        addr = p.addr
    );
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", &script])
        .output()
        .expect("run httpx");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{e}: {stdout}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            p.stderr_text()
        )
    });
    for (path, status) in [
        ("/static/a.txt", 200),
        ("/wsgi/x", 200),
        ("/asgi/x", 200),
        ("/proxy/echo", 200),
        ("/static/missing", 405),
        ("/nowhere", 404),
    ] {
        let r = &v[path];
        assert_eq!(r["status"], status, "{path}: {r}");
        assert_eq!(r["version"], "HTTP/2", "{path}");
        // Connection-specific fields never go out in HTTP/2 (the refusals of a POST with an
        // unread body say `Connection: close` in HTTP/1).
        assert!(r["connection"].is_null(), "{path}: {r}");
    }
    assert_eq!(json(v["/wsgi/x"]["text"].as_str().unwrap())["len"], 10);
    assert_eq!(json(v["/asgi/x"]["text"].as_str().unwrap())["len"], 10);
    assert_eq!(
        json(v["/proxy/echo"]["text"].as_str().unwrap())["body_len"],
        10
    );
    assert_eq!(json(v["/wsgi/stream"]["text"].as_str().unwrap())["len"], 7);
    assert_eq!(json(v["/asgi/stream"]["text"].as_str().unwrap())["len"], 7);
    assert_eq!(json(v["/proxy/upload"]["text"].as_str().unwrap())["len"], 7);
}

#[test]
fn rapid_reset_gets_goaway_and_the_cell_keeps_serving() {
    let test = "rapid_reset_gets_goaway_and_the_cell_keeps_serving";
    let Some(venv) = venv_or_skip(test) else {
        return;
    };
    if !curl_or_skip(test) {
        return;
    }
    let site = Site::new();
    let p = serve(&site, &venv, None, &["--h2c"], "");
    let cell = p.cell_pids()[0];
    let r = h2raw(&venv, &site, &p, "rapid_reset", "2000");
    assert_eq!(r["goaway"], 11, "GOAWAY(ENHANCE_YOUR_CALM): {r}");
    assert_eq!(r["closed"], true, "{r}");
    let m = p.wait_metrics(Duration::from_secs(10), |m| {
        metric_value(
            m,
            "portico_http2_goaways_total{cell=\"0\",error_code=\"enhance_your_calm\"}",
        ) == Some(1.0)
    });
    promtool_passes(test, &m);
    still_serves(&p, cell);
}

#[test]
fn continuation_floods_close_the_connection_with_bounded_memory() {
    let test = "continuation_floods_close_the_connection_with_bounded_memory";
    let Some(venv) = venv_or_skip(test) else {
        return;
    };
    if !curl_or_skip(test) {
        return;
    }
    let site = Site::new();
    let p = serve(&site, &venv, None, &["--h2c"], "");
    let cell = p.cell_pids()[0];
    let before = cell_rss_kib(&p);
    for mode in ["tiny", "large"] {
        let r = h2raw(&venv, &site, &p, "continuation", mode);
        assert_eq!(r["goaway"], 11, "{mode}: GOAWAY(ENHANCE_YOUR_CALM): {r}");
        assert_eq!(r["closed"], true, "{mode}: {r}");
        // The large field would be 64 MiB: the connection ended long before.
        assert!(r["sent"].as_u64().unwrap() < 8 << 20, "{mode}: {r}");
    }
    let grown = cell_rss_kib(&p).saturating_sub(before);
    assert!(grown < 32 << 10, "the cell grew by {grown} KiB");
    p.wait_metrics(Duration::from_secs(10), |m| {
        metric_value(
            m,
            "portico_http2_goaways_total{cell=\"0\",error_code=\"enhance_your_calm\"}",
        ) == Some(2.0)
    });
    still_serves(&p, cell);
}

#[test]
fn tiny_frame_floods_stay_bounded() {
    let test = "tiny_frame_floods_stay_bounded";
    let Some(venv) = venv_or_skip(test) else {
        return;
    };
    if !curl_or_skip(test) {
        return;
    }
    let site = Site::new();
    let p = serve(&site, &venv, None, &["--h2c"], "");
    let cell = p.cell_pids()[0];
    let before = cell_rss_kib(&p);
    // One-byte DATA frames the app does not read: h2's frame budget ends the connection.
    let r = h2raw(&venv, &site, &p, "tiny_frames", "data");
    assert_eq!(r["goaway"], 11, "data: GOAWAY(ENHANCE_YOUR_CALM): {r}");
    // WINDOW_UPDATEs and PINGs cost the cell no memory: the connection goes on.
    for kind in ["window_update", "ping"] {
        let r = h2raw(&venv, &site, &p, "tiny_frames", kind);
        assert_eq!(r["alive"], true, "{kind}: {r}");
        assert_eq!(r["sent"], 200_000, "{kind}: {r}");
    }
    let grown = cell_rss_kib(&p).saturating_sub(before);
    assert!(grown < 32 << 10, "the cell grew by {grown} KiB");
    still_serves(&p, cell);
}

#[test]
fn large_headers_get_431_and_the_connection_goes_on() {
    let test = "large_headers_get_431_and_the_connection_goes_on";
    let Some(venv) = venv_or_skip(test) else {
        return;
    };
    let site = Site::new();
    let p = serve(&site, &venv, None, &["--h2c"], "");
    // Past max_header_size (the head checks), then past the header list size (h2 itself).
    for size in ["35000", "60000"] {
        let r = h2raw(&venv, &site, &p, "big_header", size);
        assert_eq!(r["statuses"]["1"], 431, "{size}: {r}");
        assert_eq!(r["statuses"]["3"], 200, "{size}: {r}");
        assert!(r["goaway"].is_null() && r["closed"] == false, "{size}: {r}");
    }
}

#[test]
fn streams_past_the_limit_are_refused() {
    let test = "streams_past_the_limit_are_refused";
    let Some(venv) = venv_or_skip(test) else {
        return;
    };
    let site = Site::new();
    let p = serve(
        &site,
        &venv,
        None,
        &["--h2c"],
        "[limits]\nhttp2_max_concurrent_streams = 2\n",
    );
    let r = h2raw(&venv, &site, &p, "concurrent", "3");
    assert_eq!(r["statuses"]["1"], 200, "{r}");
    assert_eq!(r["statuses"]["3"], 200, "{r}");
    assert_eq!(r["resets"]["5"], 7, "RST_STREAM(REFUSED_STREAM): {r}");
    assert!(r["goaway"].is_null(), "{r}");
    let m = p.wait_metrics(Duration::from_secs(10), |m| {
        metric_value(
            m,
            "portico_http2_stream_resets_total{cell=\"0\",error_code=\"refused_stream\"}",
        ) == Some(1.0)
    });
    promtool_passes(test, &m);
}

#[test]
fn idle_connections_get_goaway_and_a_preface_alone_times_out() {
    let test = "idle_connections_get_goaway_and_a_preface_alone_times_out";
    let Some(venv) = venv_or_skip(test) else {
        return;
    };
    let site = Site::new();
    let p = serve(
        &site,
        &venv,
        None,
        &["--h2c"],
        "[limits]\nheader_timeout = \"1s\"\nkeepalive_timeout = \"1s\"\n",
    );
    // After its answer, nothing: GOAWAY(NO_ERROR), then the close; keepalive_timeout counts
    // from the end of a request that outlasted header_timeout.
    for path in ["/static/a.txt", "/asgi/slow?sleep=2"] {
        let r = h2raw(&venv, &site, &p, "idle", path);
        assert_eq!(r["statuses"]["1"], 200, "{path}: {r}");
        let (goaway, closed) = (r["goaway"].as_u64(), r["closed"].as_bool());
        assert_eq!((goaway, closed), (Some(0), Some(true)), "{path}: {r}");
    }
    // The preface and no request: closed after header_timeout, and counted.
    let r = h2raw(&venv, &site, &p, "preface_only", "");
    assert_eq!(r["closed"], true, "{r}");
    p.wait_metrics(Duration::from_secs(10), |m| {
        metric_value(m, "portico_http2_header_timeouts_total{cell=\"0\"}") == Some(1.0)
    });
    // Not even a preface: closed like an HTTP/1 connection that sends nothing.
    let mut c = Conn::open(p.addr).unwrap();
    assert!(c.closed_within(Duration::from_secs(10)));
}

#[test]
fn a_draining_cell_sends_goaway_and_finishes_streams_in_flight() {
    let test = "a_draining_cell_sends_goaway_and_finishes_streams_in_flight";
    let Some(venv) = venv_or_skip(test) else {
        return;
    };
    let site = Site::new();
    let mut p = serve(&site, &venv, None, &["--h2c"], "");
    let r = h2raw(&venv, &site, &p, "drain", &p.pid().to_string());
    assert_eq!(r["goaway"], 0, "GOAWAY(NO_ERROR): {r}");
    assert_eq!(r["statuses"]["1"], 200, "{r}");
    assert_eq!(json(r["body"].as_str().unwrap())["path"], "/asgi/slow");
    assert_eq!(r["closed"], true);
    assert!(p.wait_exit(Duration::from_secs(20)).is_some());
}

#[test]
fn without_h2c_the_preface_is_an_http1_error() {
    let test = "without_h2c_the_preface_is_an_http1_error";
    let Some(venv) = venv_or_skip(test) else {
        return;
    };
    let site = Site::new();
    let p = serve(&site, &venv, None, &[], "");
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let r = raw(p.addr, preface).unwrap();
    assert_eq!(r.status, 505, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    // Part of it is a malformed HTTP/1 request line.
    let r = raw(p.addr, &preface[..16]).unwrap();
    assert_eq!(r.status, 400);
    drop(p);

    // With h2c, a client that sends part of the preface and waits is HTTP/1 too.
    let p = serve(&site, &venv, None, &["--h2c"], "");
    let r = raw(p.addr, &preface[..16]).unwrap();
    assert_eq!(r.status, 400);
    let r = get(p.addr, "/static/a.txt").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "static over h2\n"));
}
