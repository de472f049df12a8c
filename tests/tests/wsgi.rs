//! WSGI end to end: PEP 3333 details, uploads, streaming, responses, errors.
mod wsgi_app;
use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use portico_tests::*;
use wsgi_app::{APP, serve};

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
