//! WSGI end to end: PEP 3333 details, uploads, streaming, errors, timeouts, recycling, reload.
use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use portico_tests::*;

const APP: &str = r#"
import hashlib, json, os, sys, time

MARKERS = os.path.dirname(os.path.abspath(__file__))

def application(environ, start_response):
    path = environ["PATH_INFO"]
    qs = environ.get("QUERY_STRING", "")
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"Hello, World!"]
    if path.startswith("/environ"):
        out = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int))}
        out["wsgi.version"] = list(environ["wsgi.version"])
        out["has_input"] = hasattr(environ["wsgi.input"], "read")
        body = json.dumps(out).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/upload":
        inp = environ["wsgi.input"]
        h = hashlib.sha256()
        n = 0
        while True:
            b = inp.read(65536)
            if not b:
                break
            h.update(b)
            n += len(b)
        assert inp.read() == b"" and inp.read(10) == b""
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{n} {h.hexdigest()}".encode()]
    if path == "/lines":
        inp = environ["wsgi.input"]
        first = inp.readline()
        second = inp.readline(3)
        rest = inp.readlines()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps([first.decode(), second.decode()] + [l.decode() for l in rest]).encode()]
    if path == "/ignore-body":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ignored"]
    if path == "/boom":
        raise RuntimeError("secret-traceback-marker")
    if path == "/boom-late":
        start_response("200 OK", [("Content-Type", "text/plain")])
        def gen():
            yield b"partial"
            raise RuntimeError("late failure")
        return gen()
    if path == "/bad-status":
        start_response("2000 OK", [])
        return [b""]
    if path == "/bad-header":
        start_response("200 OK", [("X-Bad", "a\r\nInjected: yes")])
        return [b""]
    if path == "/slow":
        for _ in range(int(qs or "1") * 20):
            time.sleep(0.05)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slow done"]
    if path == "/stuck":
        import ctypes
        ctypes.CDLL(None).sleep(int(qs or "30"))
        start_response("200 OK", [])
        return [b"unstuck"]
    if path == "/stream":
        marker = os.path.join(MARKERS, "closed-" + qs)
        class Body:
            def __init__(self):
                self.i = 0
            def __iter__(self):
                return self
            def __next__(self):
                self.i += 1
                if self.i > 400:
                    raise StopIteration
                time.sleep(0.02)
                return b"x" * 1024
            def close(self):
                with open(marker, "w") as f:
                    f.write("closed")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Body()
    if path == "/gen":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"chunk%d;" % i for i in range(5))
    if path == "/short-cl":
        start_response("200 OK", [("Content-Length", "100")])
        def gen():
            yield b"only-ten!!"
        return gen()
    if path == "/long-cl":
        start_response("200 OK", [("Content-Length", "5")])
        return [b"0123456789"]
    if path == "/file":
        f = open(__file__, "rb")
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](f)
    if path == "/bigfile":
        f = open(os.path.join(MARKERS, "big.bin"), "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f)
    if path == "/pid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written-")
        return [b"returned"]
    if path == "/exc-info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("handled inside the app")
        except ValueError:
            start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"handled"]
    if path == "/errors":
        environ["wsgi.errors"].write("app-says-hello-to-the-error-log\n")
        start_response("200 OK", [])
        return [b""]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such path"]
"#;

/// Writes the app and a config mounting it at `prefix`, then starts portico.
fn serve(site: &Site, prefix: &str, wsgi_extra: &str, args: &[&str]) -> Portico {
    site.file("app/app.py", APP.as_bytes());
    let cfg = format!(
        "[server]\nworkers = 2\n[[route]]\nprefix = \"{prefix}\"\nwsgi = {{ app = \"app:application\", chdir = \"{}\"{wsgi_extra} }}\n",
        site.root("app")
    );
    site.file("portico.toml", cfg.as_bytes());
    let cfg_path = site.root("portico.toml");
    let mut all = vec!["-c", cfg_path.as_str()];
    all.extend_from_slice(args);
    Portico::start(&all)
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

#[test]
fn wsgi_environ_follows_pep_3333() {
    let site = Site::new();
    let p = serve(&site, "/app/", "", &[]);
    let r = get(p.addr, "/app/hello").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, World!"));
    assert_eq!(r.header("content-length"), Some("13"));

    let r = request(
        p.addr,
        "GET",
        "/app/environ/caf%C3%A9?x=1&y=%20",
        &[
            ("X-Multi", "a"),
            ("X-Multi", "b"),
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X_Sneaky", "dropped"),
            ("Authorization", "Bearer t"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let e = json(&r);
    assert_eq!(e["REQUEST_METHOD"], "GET");
    assert_eq!(e["SCRIPT_NAME"], "/app");
    assert_eq!(e["PATH_INFO"], "/environ/caf\u{c3}\u{a9}");
    assert_eq!(e["QUERY_STRING"], "x=1&y=%20");
    assert_eq!(e["REQUEST_URI"], "/app/environ/caf%C3%A9?x=1&y=%20");
    assert_eq!(e["RAW_URI"], "/app/environ/caf%C3%A9?x=1&y=%20");
    assert_eq!(e["SERVER_NAME"], "test");
    assert_eq!(e["SERVER_PORT"], "80");
    assert_eq!(e["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(
        e["REMOTE_ADDR"], "127.0.0.1",
        "untrusted X-Forwarded-For is ignored"
    );
    assert!(e["REMOTE_PORT"].as_str().unwrap().parse::<u16>().is_ok());
    assert_eq!(e["HTTP_X_MULTI"], "a, b");
    assert_eq!(e["HTTP_COOKIE"], "a=1; b=2");
    assert_eq!(e["HTTP_AUTHORIZATION"], "Bearer t");
    assert!(e.get("HTTP_X_SNEAKY").is_none());
    assert!(e.get("CONTENT_TYPE").is_none() && e.get("CONTENT_LENGTH").is_none());
    assert!(e.get("HTTP_CONTENT_LENGTH").is_none());
    assert_eq!(e["wsgi.url_scheme"], "http");
    assert_eq!(e["wsgi.version"], serde_json::json!([1, 0]));
    assert_eq!(e["wsgi.multithread"], false, "threads = 1 by default");
    assert_eq!(e["wsgi.multiprocess"], true);
    assert_eq!(e["wsgi.run_once"], false);
    assert_eq!(e["wsgi.input_terminated"], true);
    assert_eq!(e["has_input"], true);

    // Mount point without the slash redirects; a sibling prefix does not match.
    let r = get(p.addr, "/app?q=1").unwrap();
    assert_eq!((r.status, r.header("location")), (301, Some("/app/?q=1")));
    assert_eq!(get(p.addr, "/application").unwrap().status, 404);

    // POST: CONTENT_TYPE and CONTENT_LENGTH present.
    let mut c = Conn::open(p.addr).unwrap();
    c.send(b"POST /app/environ HTTP/1.1\r\nHost: example.com:8000\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap();
    let e = json(&c.read_response("POST").unwrap());
    assert_eq!(e["CONTENT_TYPE"], "text/plain");
    assert_eq!(e["CONTENT_LENGTH"], "3");
    assert_eq!(e["SERVER_NAME"], "example.com");
    assert_eq!(e["SERVER_PORT"], "8000");
}

#[test]
fn wsgi_trusted_proxies_and_authorization() {
    let site = Site::new();
    let p = serve(
        &site,
        "/",
        ", trusted_proxies = [\"127.0.0.1/32\"], pass_authorization = false",
        &[],
    );
    let r = request(
        p.addr,
        "GET",
        "/environ",
        &[
            ("X-Forwarded-For", "1.1.1.1, 203.0.113.9"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "shop.example"),
            ("X-Forwarded-Prefix", "/shop"),
            ("Authorization", "Basic c2VjcmV0"),
        ],
    )
    .unwrap();
    let e = json(&r);
    assert_eq!(e["REMOTE_ADDR"], "203.0.113.9");
    assert_eq!(e["wsgi.url_scheme"], "https");
    assert_eq!(e["HTTP_HOST"], "shop.example");
    assert_eq!(e["SERVER_NAME"], "shop.example");
    assert_eq!(e["SERVER_PORT"], "443");
    assert_eq!(e["SCRIPT_NAME"], "/shop");
    assert!(e.get("HTTP_AUTHORIZATION").is_none());
}

#[test]
fn wsgi_request_bodies_stream_and_never_desync() {
    let site = Site::new();
    let p = serve(&site, "/", "", &[]);
    // 3 MiB with Content-Length.
    let body: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let expect_hash = {
        let out = Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(&body)?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let mut c = Conn::open(p.addr).unwrap();
    c.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    c.send(&body).unwrap();
    let r = c.read_response("POST").unwrap();
    assert_eq!(r.text(), format!("{} {expect_hash}", body.len()));

    // Chunked, on the same connection.
    let mut chunked = Vec::new();
    for part in body.chunks(100_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    c.send(&chunked).unwrap();
    let r = c.read_response("POST").unwrap();
    assert_eq!(r.text(), format!("{} {expect_hash}", body.len()));

    // readline / readlines.
    c.send(b"POST /lines HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\none\ntwo\nthree\nend")
        .unwrap();
    let r = c.read_response("POST").unwrap();
    assert_eq!(
        json(&r),
        serde_json::json!(["one\n", "two", "\n", "three\n", "end"])
    );

    // A body the app never reads does not become the next request.
    c.send(b"POST /ignore-body HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\nGET /boom HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response("POST").unwrap().text(), "ignored");
    let r = c.request("GET", "/hello", &[]).unwrap();
    assert_eq!(r.text(), "Hello, World!");

    // Expect: 100-continue is answered when the app reads.
    let mut c = Conn::open(p.addr).unwrap();
    c.send(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let cont = c.read_some(12).unwrap();
    assert!(
        String::from_utf8_lossy(&cont).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&cont)
    );
    c.send(b"hello").unwrap();
    let rest = String::from_utf8_lossy(&c.read_some(1).unwrap()).into_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = rest;
    while !text.contains("5 2cf24dba") && Instant::now() < deadline {
        text.push_str(&String::from_utf8_lossy(&c.read_some(1).unwrap()));
    }
    assert!(
        text.contains("200 OK") && text.contains("5 2cf24dba"),
        "{text}"
    );
}

#[test]
fn wsgi_responses_write_exc_info_file_wrapper_and_lengths() {
    let site = Site::new();
    let p = serve(&site, "/", ", allow_ranges = true", &[]);
    let mut c = Conn::open(p.addr).unwrap();
    let r = c.request("GET", "/gen", &[]).unwrap();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "chunk0;chunk1;chunk2;chunk3;chunk4;");
    let r = c.request("HEAD", "/hello", &[]).unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
    let r = c.request("GET", "/write", &[]).unwrap();
    assert_eq!(r.text(), "written-returned");
    let r = c.request("GET", "/exc-info", &[]).unwrap();
    assert_eq!((r.status, r.text().as_str()), (500, "handled"));
    // The app says 5 but returns 10: sent as returned, and the connection stays in sync.
    let r = c.request("GET", "/long-cl", &[]).unwrap();
    assert_eq!(r.text(), "0123456789");
    let r = c.request("GET", "/file", &[]).unwrap();
    assert_eq!(r.body, APP.as_bytes());
    assert_eq!(r.header("content-type"), Some("text/x-python"));
    // The file went out with sendfile(2), not through a buffer.
    p.wait_metrics(Duration::from_secs(5), |m| {
        metric_sum(m, "portico_cell_sendfile_bytes_total{") >= APP.len() as f64
    });
    let r = c
        .request("GET", "/file", &[("Range", "bytes=1-6")])
        .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &APP.as_bytes()[1..7]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1-6/{}", APP.len()).as_str())
    );
    // A large file: sendfile in several steps as the socket buffer drains.
    let big: Vec<u8> = (0..6_000_000u32).map(|i| (i % 253) as u8).collect();
    site.file("app/big.bin", &big);
    let r = c.request("GET", "/bigfile", &[]).unwrap();
    assert!(r.body == big, "large file_wrapper body differs");
    let r = c
        .request("GET", "/bigfile", &[("Range", "bytes=1000000-1000009")])
        .unwrap();
    assert_eq!(r.body, &big[1_000_000..1_000_010]);
    let r = c.request("HEAD", "/file", &[]).unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
    let r = c.request("GET", "/hello", &[]).unwrap();
    assert_eq!(r.text(), "Hello, World!");
    let r = c.request("GET", "/file", &[("Range", "bytes=-5")]).unwrap();
    assert_eq!(r.body, &APP.as_bytes()[APP.len() - 5..]);

    // A streamed body shorter than its Content-Length: the connection is closed, never reused.
    let mut c = Conn::open(p.addr).unwrap();
    assert!(c.request("GET", "/short-cl", &[]).is_err());

    // HTTP/1.0 and no Content-Length: close-delimited.
    let mut c = Conn::open(p.addr).unwrap();
    c.send(b"GET /gen HTTP/1.0\r\n\r\n").unwrap();
    let r = c.read_response("GET").unwrap();
    assert!(r.header("transfer-encoding").is_none());
    assert_eq!(r.text(), "chunk0;chunk1;chunk2;chunk3;chunk4;");
}

#[test]
fn wsgi_app_errors_are_500_with_traceback_in_the_log_only() {
    let site = Site::new();
    let p = serve(&site, "/", "", &[]);
    let r = get(p.addr, "/boom").unwrap();
    assert_eq!(r.status, 500);
    assert!(!r.text().contains("secret"), "{}", r.text());
    for path in ["/bad-status", "/bad-header"] {
        let r = get(p.addr, path).unwrap();
        assert_eq!(r.status, 500, "{path}");
        assert!(!r.text().contains("Injected"));
    }
    // Failure after the head went out: the connection is aborted, not finished cleanly.
    let mut c = Conn::open(p.addr).unwrap();
    assert!(c.request("GET", "/boom-late", &[]).is_err());
    assert_eq!(get(p.addr, "/errors").unwrap().status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = p.stderr_text();
        if log.contains("secret-traceback-marker")
            && log.contains("Traceback (most recent call last)")
            && log.contains("invalid status")
            && log.contains("late failure")
            && log.contains("app-says-hello-to-the-error-log")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "log lacks the tracebacks:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(p.addr, "/hello").unwrap().status, 200);
}

#[test]
fn wsgi_client_disconnect_mid_stream_calls_close() {
    let site = Site::new();
    let p = serve(&site, "/", "", &[]);
    let mut c = Conn::open(p.addr).unwrap();
    c.send(raw_request("GET", "/stream?gone", &[]).as_bytes())
        .unwrap();
    let first = c.read_some(2000).unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("HTTP/1.1 200"));
    drop(c);
    let marker = site.path().join("app/closed-gone");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "close() was not called");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn wsgi_request_timeout_gives_504_and_recycles_a_stuck_cell() {
    let site = Site::new();
    let p = serve(
        &site,
        "/",
        ", threads = 2, request_timeout = \"1s\", request_timeout_grace = \"2s\"",
        &[],
    );
    // A Python-level sleep: RequestTimeout is raised in it; the thread comes back.
    let t = Instant::now();
    let r = get(p.addr, "/slow?5").unwrap();
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(get(p.addr, "/hello").unwrap().status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !p.stderr_text().contains("ran past request_timeout") {
        assert!(
            Instant::now() < deadline,
            "no stack logged:\n{}",
            p.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        p.stderr_text().contains("in application"),
        "the stuck stack names the app frame"
    );

    // Stuck in C (no bytecode boundary): 504, then the cell is replaced after the grace.
    let r = get(p.addr, "/stuck?60").unwrap();
    assert_eq!(r.status, 504);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut served = 0;
    loop {
        // Every request meanwhile is answered, by the other cell or the stuck cell's spare thread.
        assert_eq!(get(p.addr, "/hello").unwrap().status, 200);
        served += 1;
        let m = p.metrics();
        let recycled: f64 = (0..2)
            .filter_map(|c| {
                metric_value(
                    &m,
                    &format!("portico_cell_restarts_total{{cell=\"{c}\",reason=\"timeout\"}}"),
                )
            })
            .sum();
        if recycled >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recycle after the grace:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served > 0);
    let m = p.metrics();
    assert!(m.contains("portico_wsgi_request_timeouts_total"), "{m}");
    for _ in 0..20 {
        assert_eq!(get(p.addr, "/hello").unwrap().status, 200);
    }
}

#[test]
fn wsgi_full_queue_gives_503_with_retry_after() {
    let site = Site::new();
    let p = serve(
        &site,
        "/",
        ", threads = 1, max_queue = 1",
        &["--workers", "1"],
    );
    let addr = p.addr;
    let busy = std::thread::spawn(move || get(addr, "/slow?2").unwrap().status);
    // The gauges are published five times a second: the slow request holds the only thread,
    // then the next one waits in the queue.
    p.wait_metrics(Duration::from_secs(2), |m| {
        metric_sum(m, "portico_wsgi_threads_busy{") >= 1.0
    });
    let queued = std::thread::spawn(move || get(addr, "/hello").unwrap().status);
    p.wait_metrics(Duration::from_secs(2), |m| {
        metric_sum(m, "portico_wsgi_queue_depth{") >= 1.0
    });
    let r = get(p.addr, "/hello").unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(busy.join().unwrap(), 200);
    assert_eq!(queued.join().unwrap(), 200);
    assert!(
        p.metric("portico_wsgi_rejected_total{cell=\"0\",reason=\"queue_full\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn wsgi_max_requests_recycles_without_errors() {
    let site = Site::new();
    let p = serve(&site, "/", ", max_requests = 15", &["--workers", "1"]);
    let first = get(p.addr, "/pid").unwrap().text();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pids = std::collections::HashSet::new();
    while pids.len() < 2 {
        let r = get(p.addr, "/pid").unwrap();
        assert_eq!(r.status, 200, "no client sees an error during recycling");
        pids.insert(r.text());
        assert!(Instant::now() < deadline, "never recycled");
    }
    assert!(pids.contains(&first) || pids.len() >= 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while p
        .metric("portico_cell_restarts_total{cell=\"0\",reason=\"max_requests\"}")
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(Instant::now() < deadline, "{}", p.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn wsgi_lifetime_and_inactivity_recycle_cells() {
    let site = Site::new();
    let p = serve(
        &site,
        "/",
        ", lifetime = \"2s\", inactivity_timeout = \"1s\"",
        &["--workers", "1"],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(get(p.addr, "/hello").unwrap().status, 200);
        let m = p.metrics();
        let lifetime = metric_value(
            &m,
            "portico_cell_restarts_total{cell=\"0\",reason=\"lifetime\"}",
        );
        if lifetime.unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no lifetime recycle:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Now idle: the inactivity limit replaces the cell too.
    let deadline = Instant::now() + Duration::from_secs(20);
    while p
        .metric("portico_cell_restarts_total{cell=\"0\",reason=\"inactivity\"}")
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "no inactivity recycle:\n{}",
            p.metrics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(p.addr, "/hello").unwrap().status, 200);
}

#[test]
fn wsgi_200_concurrent_keepalive_clients() {
    let site = Site::new();
    let p = serve(&site, "/", "", &[]);
    let addr = p.addr;
    let threads: Vec<_> = (0..200)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Conn::open(addr).unwrap();
                for _ in 0..10 {
                    let r = c.request("GET", "/hello", &[]).unwrap();
                    assert_eq!(r.text(), "Hello, World!");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn wsgi_reload_replaces_cells_when_sources_change() {
    let site = Site::new();
    site.file("app/greet.py", b"WORD = 'v1'\n");
    site.file(
        "app/main.py",
        b"import greet\ndef application(e, s):\n    s('200 OK', [('Content-Type', 'text/plain')])\n    return [greet.WORD.encode()]\n",
    );
    let cfg = format!(
        "[server]\nworkers = 2\n[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"main:application\", chdir = \"{}\", reload = true }}\n",
        site.root("app")
    );
    site.file("portico.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("portico.toml")]);
    assert_eq!(get(p.addr, "/").unwrap().text(), "v1");
    let greet = site.file("app/greet.py", b"WORD = 'v2'\n");
    // Cells compare modification times: make the edit's one differ whatever the file system's
    // timestamp granularity (instead of sleeping past it).
    std::fs::File::options()
        .write(true)
        .open(&greet)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() + Duration::from_secs(2)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(p.addr, "/").unwrap();
        assert_eq!(r.status, 200);
        if r.text() == "v2" {
            break;
        }
        assert!(Instant::now() < deadline, "still serving the old code");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `portico serve APP` in the site's directory must fail; returns its stderr.
fn serve_fails(site: &Site, app: &str) -> String {
    let out = Command::new(portico_bin())
        .current_dir(site.path())
        .args(["serve", app, "--listen", "127.0.0.1:0", "--admin", "off"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit status 3 for an app that fails to import"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn wsgi_import_error_stops_startup_with_the_traceback() {
    let site = Site::new();
    site.file("broken.py", b"def application(e, s):\n    return [b'x'\n");
    let err = serve_fails(&site, "broken:application");
    assert!(err.contains("SyntaxError"), "{err}");
    assert!(err.contains("broken.py"), "{err}");
    assert!(!err.contains("listening on"), "nothing is served:\n{err}");

    site.file("raises.py", b"import not_a_module_anywhere\n");
    let err = serve_fails(&site, "raises:app");
    assert!(err.contains("ModuleNotFoundError"), "{err}");

    // `portico check` imports the app too.
    site.file(
        "c.toml",
        format!(
            "[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"broken:application\", chdir = \"{}\" }}\n",
            site.path().display()
        )
        .as_bytes(),
    );
    let out = Command::new(portico_bin())
        .args(["check", "-c", &site.root("c.toml")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SyntaxError"));
}

#[test]
fn wsgi_script_file_and_environ_extras() {
    let site = Site::new();
    site.file(
        "site/app.wsgi",
        b"import os\ndef application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [(environ['DEPLOY'] + ' ' + str(__debug__)).encode()]\n",
    );
    let cfg = format!(
        "[[route]]\nprefix = \"/\"\nwsgi = {{ script = \"{}\", environ = {{ DEPLOY = \"blue\" }}, optimize = 1 }}\n",
        site.root("site/app.wsgi")
    );
    site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("p.toml")]);
    assert_eq!(get(p.addr, "/").unwrap().text(), "blue False");
}

/// Everything the validator checks, on one path per feature; any violation raises in the app.
const VALIDATED: &str = r#"
import sys, warnings
from wsgiref.validate import validator, WSGIWarning
warnings.simplefilter("error", WSGIWarning)

def inner(environ, start_response):
    path = environ["PATH_INFO"]
    inp = environ["wsgi.input"]
    if path == "/input":
        a = inp.read(3)
        b = inp.readline()
        c = inp.readline(2)
        d = inp.readlines()
        e = list(iter(inp))
        body = repr((a, b, c, d, e, inp.read(100))).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    if path == "/write":
        w = start_response("200 OK", [("Content-Type", "text/plain")])
        w(b"w")
        return [b"x"]
    if path == "/exc":
        try:
            raise KeyError("k")
        except KeyError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"e"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 1024)
    if path == "/errors":
        environ["wsgi.errors"].write("via errors\n")
        environ["wsgi.errors"].writelines(["a\n", "b\n"])
        environ["wsgi.errors"].flush()
        start_response("204 No Content", [])
        return []
    start_response("200 OK", [("Content-Type", "text/plain")])
    def gen():
        yield b"gen"
    return gen()

application = validator(inner)
"#;

#[test]
fn wsgi_validator_sees_no_violation() {
    let site = Site::new();
    site.file("v/validated.py", VALIDATED.as_bytes());
    let cfg = format!(
        "[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"validated:application\", chdir = \"{}\" }}\n",
        site.root("v")
    );
    site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("p.toml")]);
    let mut c = Conn::open(p.addr).unwrap();
    c.send(b"POST /input HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\r\nabcdef\nghij\nkl\nmn\nop").unwrap();
    let r = c.read_response("POST").unwrap();
    assert_eq!(r.status, 200, "{}", p.stderr_text());
    assert_eq!(
        r.text(),
        "(b'abc', b'def\\n', b'gh', [b'ij\\n', b'kl\\n', b'mn\\n', b'op'], [], b'')"
    );
    for (path, status, body) in [
        ("/write", 200, "wx"),
        ("/exc", 500, "e"),
        ("/errors", 204, ""),
        ("/", 200, "gen"),
    ] {
        let r = c.request("GET", path, &[]).unwrap();
        assert_eq!(
            (r.status, r.text().as_str()),
            (status, body),
            "{path}: {}",
            p.stderr_text()
        );
    }
    let r = c.request("GET", "/file", &[]).unwrap();
    assert_eq!(r.body, VALIDATED.as_bytes());
    let r = c.request("HEAD", "/", &[]).unwrap();
    assert_eq!(r.status, 200);
    p.wait_stderr(Duration::from_secs(5), "via errors");
    let log = p.stderr_text();
    assert!(
        !log.contains("AssertionError") && !log.contains("WSGIWarning"),
        "{log}"
    );
    assert!(log.contains("via errors"));
}

#[test]
fn wsgi_access_log_counts_streamed_bytes() {
    let site = Site::new();
    let log = site.root("access.log");
    let p = serve(&site, "/", "", &["--access-log", &log]);
    let mut c = Conn::open(p.addr).unwrap();
    assert_eq!(c.request("GET", "/gen", &[]).unwrap().body.len(), 35);
    assert_eq!(c.request("GET", "/hello", &[]).unwrap().status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("\"GET /gen HTTP/1.1\" 200 35 ")
            && text.contains("\"GET /hello HTTP/1.1\" 200 13 ")
        {
            break;
        }
        assert!(Instant::now() < deadline, "access log:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn static_routes_are_never_blocked_by_python_work() {
    let site = Site::new();
    site.file("www/a.txt", b"static bytes");
    site.file("app/app.py", APP.as_bytes());
    let cfg = format!(
        "[server]\nworkers = 1\n[[route]]\nprefix = \"/static/\"\nstatic = {{ root = \"{}\" }}\n[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"app:application\", chdir = \"{}\", threads = 1 }}\n",
        site.root("www"),
        site.root("app")
    );
    site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("p.toml")]);
    let addr = p.addr;
    // The only Python thread of the only cell is busy for ~3 s.
    let slow = std::thread::spawn(move || get(addr, "/slow?3").unwrap().status);
    p.wait_metrics(Duration::from_secs(2), |m| {
        metric_sum(m, "portico_wsgi_threads_busy{") >= 1.0
    });
    for _ in 0..20 {
        let t = Instant::now();
        let r = get(p.addr, "/static/a.txt").unwrap();
        assert_eq!(r.text(), "static bytes");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "static waited on Python: {:?}",
            t.elapsed()
        );
    }
    assert_eq!(slow.join().unwrap(), 200);
}
