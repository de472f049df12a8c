//! Request limits and slow clients: the right status, and the connection closed where needed.
use std::io::Write;
use std::time::{Duration, Instant};

use portico_tests::*;

fn server() -> (Site, Portico) {
    let s = Site::new();
    s.file("www/a.txt", b"a");
    let cfg = format!(
        r#"
        [server]
        workers = 1
        [limits]
        max_uri_length = 1024
        max_header_size = "4k"
        max_headers = 20
        max_body_size = "1k"
        header_timeout = "1s"
        keepalive_timeout = "2s"
        [[route]]
        prefix = "/"
        static = {{ root = "{}" }}
        "#,
        s.root("www")
    );
    s.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &s.root("p.toml")]);
    (s, p)
}

#[test]
fn limits_answer_with_the_right_status() {
    let (_s, p) = server();
    let a = p.addr;
    let long = format!("/{}", "x".repeat(2000));
    assert_eq!(get(a, &long).unwrap().status, 414);
    let big_header = "v".repeat(5000);
    assert_eq!(
        request(a, "GET", "/a.txt", &[("X-Big", &big_header)])
            .unwrap()
            .status,
        431
    );
    let many: Vec<(String, String)> = (0..30)
        .map(|i| (format!("X-H{i}"), "1".to_string()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(request(a, "GET", "/a.txt", &many).unwrap().status, 431);
    let r = request(a, "POST", "/a.txt", &[("Content-Length", "5000")]).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    // HTTP/1.1 without Host.
    assert_eq!(raw(a, b"GET /a.txt HTTP/1.1\r\n\r\n").unwrap().status, 400);
    // HTTP/1.0 needs no Host.
    assert_eq!(raw(a, b"GET /a.txt HTTP/1.0\r\n\r\n").unwrap().status, 200);
    // Conflicting framing, both orders: 400 and the connection closes.
    for req in [
        "POST /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    ] {
        let mut c = Conn::open(a).unwrap();
        c.send(req.as_bytes()).unwrap();
        let r = c.read_response("POST").unwrap();
        assert_eq!(r.status, 400, "{req:?}");
        assert!(
            c.closed_within(Duration::from_secs(3)),
            "connection left open after CL+TE"
        );
    }
    // Two different Content-Lengths.
    assert_eq!(
        raw(
            a,
            b"POST /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        )
        .unwrap()
        .status,
        400
    );
    // Garbage request line.
    assert_eq!(raw(a, b"BLAH\r\n\r\n").unwrap().status, 400);
    // Still serving normally.
    assert_eq!(get(a, "/a.txt").unwrap().status, 200);
}

#[test]
fn slow_header_gets_408_then_close() {
    let (_s, p) = server();
    let mut c = Conn::open(p.addr).unwrap();
    c.send(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n").unwrap();
    let started = Instant::now();
    let r = c.read_response("GET").unwrap();
    assert_eq!(r.status, 408);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "408 came too early"
    );
    assert!(c.closed_within(Duration::from_secs(3)));
}

#[test]
fn idle_keepalive_is_closed() {
    let (_s, p) = server();
    let mut c = Conn::open(p.addr).unwrap();
    assert_eq!(c.request("GET", "/a.txt", &[]).unwrap().status, 200);
    // Within the idle timeout the connection is reused: idling for a while (bounded, well
    // under keepalive_timeout = 2s) is the scenario itself.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.request("GET", "/a.txt", &[]).unwrap().status, 200);
    let t = Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "idle keep-alive never closed"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "closed before keepalive_timeout"
    );
}

#[test]
fn trickled_complete_request_is_served() {
    let (_s, p) = server();
    let mut c = Conn::open(p.addr).unwrap();
    for b in b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n".chunks(8) {
        c.stream.write_all(b).unwrap();
        // The trickle itself: 5 chunks 50 ms apart, inside header_timeout = 1s.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.read_response("GET").unwrap().status, 200);
}
