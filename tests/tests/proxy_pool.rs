//! The proxy's connection pool against a keep-alive upstream (Python's `http.server` with
//! HTTP/1.1): connections are reused, and one the upstream closed while idle is replaced
//! without the client seeing an error.
use std::time::Duration;

use portico_tests::*;

/// The upstream-side `<tag> <client port>` each of `n` requests came on.
fn answers(p: &Portico, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = get(p.addr, "/k/x").unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.text()
        })
        .collect()
}

#[test]
fn proxy_pool_reuses_upstream_connections() {
    let site = Site::new();
    let b = tagged_backend("a", 30.0, site.path().join("a.log"));
    let url = format!("/k/=http://{}/", b.addr());
    let p = Portico::start(&["--proxy", &url, "--workers", "1"]);
    let seen = answers(&p, 5);
    assert!(
        seen.iter().all(|s| *s == seen[0]),
        "every request on one pooled connection: {seen:?}"
    );
}

#[test]
fn proxy_pool_replaces_a_connection_the_upstream_closed() {
    let site = Site::new();
    let b = tagged_backend("a", 0.5, site.path().join("a.log"));
    let url = format!("/k/=http://{}/", b.addr());
    let p = Portico::start(&["--proxy", &url, "--workers", "1"]);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.extend(answers(&p, 1));
        // The upstream closes the pooled connection after its 0.5 s keep-alive timeout; the
        // next request comes once it has.
        wait_until(
            Duration::from_secs(10),
            "the upstream closing its idle connection",
            || established(b.addr().port()) == 0,
        );
    }
    assert_eq!(seen.len(), 3, "no request failed");
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]),
        "each request after the upstream's timeout on a new connection: {seen:?}"
    );
}

/// Accepts connections and never reads from them (a small receive buffer fills at once).
const SINK: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
held = []
while True:
    held.append(s.accept()[0])
"#;

#[test]
fn proxy_pool_send_timeout_ends_a_request_the_upstream_stopped_reading() {
    use std::io::{Read as _, Write as _};
    let site = Site::new();
    let addr = free_port();
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", SINK, &addr.port().to_string()]);
    let _sink = Upstream::start(cmd, Bind::Tcp(addr), site.path().join("sink.log"));
    let cfg = format!(
        "[server]\nworkers = 1\n[limits]\nmax_body_size = \"1G\"\n[[upstream]]\nname = \"sink\"\nservers = [\"{addr}\"]\nsend_timeout = \"1s\"\nread_timeout = \"60s\"\n[[route]]\nprefix = \"/s/\"\nproxy = {{ upstream = \"sink\" }}\n"
    );
    site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("p.toml")]);
    let total: usize = 64 << 20;
    let mut client = std::net::TcpStream::connect(p.addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        client,
        "POST /s/upload HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    // The body goes out from another thread until Portico stops taking it (bounded: it ends
    // when the connection closes, or after 30 s).
    let mut writer = client.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 16];
        let mut sent = 0;
        while sent < total && writer.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
    });
    let started = std::time::Instant::now();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered after {:?}",
        started.elapsed()
    );
    drop(client);
    sender.join().unwrap();
    wait_until(Duration::from_secs(5), "the timeout logged", || {
        p.stderr_text().contains("send_timeout")
    });
}
