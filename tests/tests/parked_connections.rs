//! Parked connections: an idle keep-alive connection gives up hyper's buffers and is held as a
//! bare socket (`portico_connections_parked`); whatever the client sends next is served as on a
//! connection that never idled, and the keep-alive timeout and a drain still close it.
use std::io::Write as _;
use std::time::{Duration, Instant};

use portico_tests::*;

const APP: &str = r#"
def application(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"echo:" + body]
"#;

fn serve(site: &Site, keepalive: &str) -> Portico {
    site.file("www/a.txt", b"static a");
    site.file("app/app.py", APP.as_bytes());
    let cfg = format!(
        r#"
        [server]
        workers = 1
        [limits]
        keepalive_timeout = "{keepalive}"
        [[route]]
        prefix = "/app/"
        wsgi = {{ app = "app:application", chdir = "{}" }}
        [[route]]
        prefix = "/"
        static = {{ root = "{}" }}
        "#,
        site.root("app"),
        site.root("www"),
    );
    site.file("p.toml", cfg.as_bytes());
    Portico::start(&["-c", &site.root("p.toml")])
}

fn parked(p: &Portico) -> f64 {
    p.metric("portico_connections_parked{cell=\"0\"}")
        .unwrap_or(-1.0)
}

fn wait_parked(p: &Portico, n: f64) {
    if !poll_until(Duration::from_secs(10), || parked(p) == n) {
        let log = p.stderr_text();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        panic!(
            "{n} parked expected, {} are\n{}",
            parked(p),
            tail.join("\n")
        );
    }
}

#[test]
fn parked_connections_serve_whatever_comes_next() {
    let site = Site::new();
    let p = serve(&site, "60s");
    let mut conns: Vec<Conn> = (0..40)
        .map(|_| {
            let mut c = Conn::open(p.addr).unwrap();
            assert_eq!(c.request("GET", "/a.txt", &[]).unwrap().status, 200);
            c
        })
        .collect();
    wait_parked(&p, 40.0);
    assert_eq!(
        p.metric("portico_connections_active{cell=\"0\"}"),
        Some(40.0)
    );
    for (i, c) in conns.iter_mut().enumerate() {
        match i % 4 {
            // A plain request.
            0 => {
                let r = c.request("GET", "/a.txt", &[]).unwrap();
                assert_eq!((r.status, r.text().as_str()), (200, "static a"));
            }
            // Two pipelined requests in one write.
            1 => {
                let two = format!(
                    "{}{}",
                    raw_request("GET", "/a.txt", &[]),
                    raw_request("POST", "/app/x", &[("Content-Length", "3")]) + "abc"
                );
                c.send(two.as_bytes()).unwrap();
                assert_eq!(c.read_response("GET").unwrap().text(), "static a");
                assert_eq!(c.read_response("POST").unwrap().text(), "echo:abc");
            }
            // A head in pieces: the first wakes the connection, the rest follow.
            2 => {
                let raw = raw_request("POST", "/app/y", &[("Content-Length", "5")]) + "hello";
                for piece in raw.as_bytes().chunks(7) {
                    c.stream.write_all(piece).unwrap();
                    c.stream.flush().unwrap();
                }
                let r = c.read_response("POST").unwrap();
                assert_eq!((r.status, r.text().as_str()), (200, "echo:hello"));
            }
            // A chunked upload.
            _ => {
                let raw = raw_request("POST", "/app/z", &[("Transfer-Encoding", "chunked")])
                    + "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
                c.send(raw.as_bytes()).unwrap();
                assert_eq!(c.read_response("POST").unwrap().text(), "echo:abcde");
            }
        }
    }
    // Served, then parked again.
    wait_parked(&p, 40.0);
    // A client closing its parked connection is noticed: nothing parked, nothing open.
    drop(conns);
    wait_until(Duration::from_secs(10), "closed connections gone", || {
        parked(&p) == 0.0 && p.metric("portico_connections_active{cell=\"0\"}") == Some(0.0)
    });
}

#[test]
fn parked_connections_close_at_keepalive_timeout_and_on_drain() {
    let site = Site::new();
    let p = serve(&site, "2s");
    let mut c = Conn::open(p.addr).unwrap();
    assert_eq!(c.request("GET", "/a.txt", &[]).unwrap().status, 200);
    let served = Instant::now();
    wait_parked(&p, 1.0);
    assert!(
        c.closed_within(Duration::from_secs(10)),
        "parked connection never closed"
    );
    assert!(
        served.elapsed() >= Duration::from_millis(1500),
        "closed before keepalive_timeout"
    );
    wait_parked(&p, 0.0);

    // A drain closes a parked connection after the grace (long before its keep-alive time),
    // and the server exits.
    let site = Site::new();
    let mut p = serve(&site, "300s");
    let mut c = Conn::open(p.addr).unwrap();
    assert_eq!(c.request("GET", "/a.txt", &[]).unwrap().status, 200);
    wait_parked(&p, 1.0);
    p.signal(rustix::process::Signal::TERM);
    assert!(
        c.closed_within(Duration::from_secs(10)),
        "parked connection kept open through the drain"
    );
    let st = p.wait_exit(Duration::from_secs(20)).expect("master exits");
    assert_eq!(st.code(), Some(0));
}
