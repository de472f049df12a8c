//! `buffering = true`: the proxy reads an upstream response ahead of a slow client, so the
//! upstream connection is back in the pool before the client has read the body; bytes still
//! pass as they arrive; the upstream's `X-Accel-Buffering` turns it on or off per response.
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portico_tests::*;

/// The body byte at `i` (so a test can check every byte it gets).
fn byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// A keep-alive HTTP/1.1 backend on a thread. `GET /big?n=N[&accel=V]` answers N bytes with
/// Content-Length (and `X-Accel-Buffering: V`); `GET /events` sends one chunk, then the next
/// each time the test sends on that request's gate (the last in `gates`).
struct Backend {
    addr: SocketAddr,
    gates: Gates,
}

type Gates = Arc<Mutex<Vec<mpsc::Sender<Vec<u8>>>>>;

fn backend() -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let gates = Gates::default();
    let b = Backend {
        addr: l.local_addr().unwrap(),
        gates: gates.clone(),
    };
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let gates = gates.clone();
            std::thread::spawn(move || serve(s, &gates));
        }
    });
    b
}

fn serve(s: TcpStream, gates: &Gates) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split(' ').nth(1).unwrap_or("/").to_string();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
        }
        if target.starts_with("/events") {
            let (tx, gate) = mpsc::channel::<Vec<u8>>();
            gates.lock().unwrap().push(tx);
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            out.extend(chunk(b"data: first\n\n"));
            if w.write_all(&out).is_err() {
                return;
            }
            while let Ok(msg) = gate.recv() {
                if w.write_all(&chunk(&msg)).is_err() {
                    return;
                }
            }
            let _ = w.write_all(b"0\r\n\r\n");
            continue;
        }
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let mut n = 0u64;
        let mut accel = None;
        for kv in query.split('&') {
            match kv.split_once('=') {
                Some(("n", v)) => n = v.parse().unwrap(),
                Some(("accel", v)) => accel = Some(v.to_string()),
                _ => {}
            }
        }
        let mut head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n");
        if let Some(a) = accel {
            head.push_str(&format!("X-Accel-Buffering: {a}\r\n"));
        }
        head.push_str("\r\n");
        if w.write_all(head.as_bytes()).is_err() {
            return;
        }
        let mut sent = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        while sent < n {
            let k = (n - sent).min(buf.len() as u64) as usize;
            for (j, b) in buf[..k].iter_mut().enumerate() {
                *b = byte(sent + j as u64);
            }
            if w.write_all(&buf[..k]).is_err() {
                return;
            }
            sent += k as u64;
        }
    }
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut c = format!("{:x}\r\n", data.len()).into_bytes();
    c.extend_from_slice(data);
    c.extend_from_slice(b"\r\n");
    c
}

fn start(b: &Backend) -> (Site, Portico) {
    let site = Site::new();
    let up = b.addr;
    let cfg = format!(
        r#"
[server]
workers = 1
[[upstream]]
name = "b"
servers = ["{up}"]
[[route]]
prefix = "/on/"
proxy = {{ upstream = "b", path = "/", buffering = true, buffer_limit = "64M" }}
[[route]]
prefix = "/off/"
proxy = {{ upstream = "b", path = "/", buffer_limit = "64M" }}
"#
    );
    let path = site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["--config", path.to_str().unwrap()]);
    (site, p)
}

/// A client whose receive buffer is small, so it holds back a body it does not read.
fn slow_client(addr: SocketAddr) -> Conn {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(16 << 10).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    Conn::from_stream(s)
}

fn idle(p: &Portico) -> f64 {
    metric_sum(&p.metrics(), "portico_upstream_idle_connections")
}

/// Sends `GET path` on a slow client and reads only the response head; returns the client,
/// the head and the body bytes that came with it.
fn head_only(p: &Portico, path: &str) -> (Conn, String, Vec<u8>) {
    let mut c = slow_client(p.addr);
    c.send(raw_request("GET", path, &[]).as_bytes()).unwrap();
    let got = c.read_some(1).unwrap();
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    (c, head, got[end + 4..].to_vec())
}

/// Reads the rest of an `n`-byte body (after `first`) and checks every byte.
fn read_body(c: &mut Conn, first: &[u8], n: u64) {
    let mut at = 0u64;
    let check = |bytes: &[u8], at: &mut u64| {
        for b in bytes {
            assert_eq!(*b, byte(*at), "body byte {at}");
            *at += 1;
        }
    };
    check(first, &mut at);
    let mut buf = vec![0u8; 256 << 10];
    while at < n {
        let k = c.stream.read(&mut buf).unwrap();
        assert!(k > 0, "body ended at {at} of {n}");
        check(&buf[..k], &mut at);
    }
    assert_eq!(at, n);
}

const BIG: u64 = 16 << 20;

#[test]
fn proxy_buffering_frees_the_upstream_before_a_slow_client_reads() {
    let b = backend();
    let (_site, p) = start(&b);
    assert_eq!(idle(&p), 0.0);
    let (mut c, head, first) = head_only(&p, &format!("/on/big?n={BIG}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The client has read at most its small buffer's worth, and the upstream connection is
    // already back in the pool: the cell read the whole body ahead of it.
    wait_until(
        Duration::from_secs(20),
        "the upstream connection back in the pool while the client has not read",
        || idle(&p) >= 1.0,
    );
    assert!((first.len() as u64) < BIG);
    read_body(&mut c, &first, BIG);
    // The same connection serves the next request.
    let r = get(p.addr, "/on/big?n=10").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 10);
}

#[test]
fn proxy_buffering_follows_x_accel_buffering() {
    let b = backend();
    let (_site, p) = start(&b);
    // On a route without buffering, the upstream asks for it: read ahead too (up to the
    // route's `buffer_limit`, as nginx's proxy_buffers still apply), and the field is not
    // passed on.
    let (mut c, head, first) = head_only(&p, &format!("/off/big?n={BIG}&accel=yes"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("x-accel-buffering"),
        "{head}"
    );
    wait_until(
        Duration::from_secs(20),
        "X-Accel-Buffering: yes reading ahead of the client",
        || idle(&p) >= 1.0,
    );
    read_body(&mut c, &first, BIG);
    // On a buffering route, `no`: the body streams (and is whole); the field is not passed on.
    let r = get(p.addr, "/on/big?n=300000&accel=no").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("x-accel-buffering").is_none(), "{:?}", r.headers);
    assert_eq!(r.body.len(), 300000);
    assert!(r.body.iter().enumerate().all(|(i, b)| *b == byte(i as u64)));
}

#[test]
fn proxy_buffering_still_passes_events_as_they_arrive() {
    let b = backend();
    let (_site, p) = start(&b);
    for prefix in ["/on/", "/off/"] {
        let mut c = Conn::open(p.addr).unwrap();
        c.send(raw_request("GET", &format!("{prefix}events"), &[]).as_bytes())
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // The first event arrives while the upstream holds the second back.
        while !String::from_utf8_lossy(&seen).contains("data: first") {
            let k = c.stream.read(&mut buf).unwrap();
            assert!(k > 0, "closed before the first event");
            seen.extend_from_slice(&buf[..k]);
        }
        let gate = b.gates.lock().unwrap().last().unwrap().clone();
        gate.send(b"data: second\n\n".to_vec()).unwrap();
        while !String::from_utf8_lossy(&seen).contains("data: second") {
            let k = c.stream.read(&mut buf).unwrap();
            assert!(k > 0, "closed before the second event");
            seen.extend_from_slice(&buf[..k]);
        }
        // The client goes away mid-stream; the next prefix makes a new request.
        drop(c);
    }
}
