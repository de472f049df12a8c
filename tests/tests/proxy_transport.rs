//! The reverse proxy's transport against real upstreams (see `proxy_upstream`): streamed
//! responses and request bodies, Unix sockets, servers that refuse, read timeouts, keep-alive
//! to the client and pooled upstream connections.
mod proxy_upstream;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portico_tests::*;
use proxy_upstream::*;
use serde_json::Value;

/// sha256 of `data`, by the venv's Python (the tests crate has no hash crate).
fn sha256_hex(venv: &Path, data: &[u8]) -> String {
    let mut child = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn proxy_streams_the_response_as_the_upstream_sends_it() {
    let Some(venv) = venv_or_skip("proxy_streams_the_response_as_the_upstream_sends_it") else {
        return;
    };
    let site = Site::new();
    let up = gunicorn(&venv, &site, Bind::Tcp(free_port()), &[]);
    let p = portico(
        &site,
        &format!(
            "[[route]]\nprefix = \"/app/\"\nproxy = \"http://{}/\"\n",
            up.addr()
        ),
    );
    let mut c = Conn::open(p.addr).unwrap();
    let started = Instant::now();
    c.send(raw_request("GET", "/app/stream", &[]).as_bytes())
        .unwrap();
    // The app yields chunk-0 at once and END 1.5 s later: chunk-0 must arrive before END.
    let mut seen = Vec::new();
    let mut tmp = [0u8; 4096];
    while !contains(&seen, b"chunk-0") {
        let n = c.stream.read(&mut tmp).expect("the first chunk");
        assert!(n > 0, "closed before the first chunk: {:?}", text(&seen));
        seen.extend_from_slice(&tmp[..n]);
    }
    let first = started.elapsed();
    assert!(
        !contains(&seen, b"END"),
        "the first chunk came only with the whole body (after {first:?}): {:?}",
        text(&seen)
    );
    assert!(contains(&seen, b"200"), "no status line: {:?}", text(&seen));
    // The rest follows, in order, and the response ends (chunked or close-delimited).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !contains(&seen, b"END\n") && Instant::now() < deadline {
        let n = c.stream.read(&mut tmp).expect("the rest of the stream");
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&tmp[..n]);
    }
    let body = text(&seen);
    let order: Vec<usize> = ["chunk-0", "chunk-1", "chunk-2", "chunk-3", "chunk-4", "END"]
        .iter()
        .map(|m| {
            body.find(m)
                .unwrap_or_else(|| panic!("{m} missing: {body:?}"))
        })
        .collect();
    assert!(order.is_sorted(), "out of order: {body:?}");
    assert!(
        started.elapsed() >= first + Duration::from_millis(900),
        "the body took {:?}, its first chunk {first:?}: the app sleeps 1.5 s in between",
        started.elapsed()
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn proxy_streams_5mib_uploads_chunked_and_with_content_length() {
    let Some(venv) = venv_or_skip("proxy_streams_5mib_uploads_chunked_and_with_content_length")
    else {
        return;
    };
    let site = Site::new();
    let up = gunicorn(&venv, &site, Bind::Tcp(free_port()), &[]);
    let p = portico(
        &site,
        &format!(
            "[[route]]\nprefix = \"/app/\"\nproxy = \"http://{}/\"\n",
            up.addr()
        ),
    );
    let body: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let want = serde_json::json!({"len": body.len(), "sha256": sha256_hex(&venv, &body)});

    // Content-Length.
    let mut c = Conn::open(p.addr).unwrap();
    send_request(&mut c, "POST", "/app/upload", "test", &[], &body);
    let r = c.read_response("POST").unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.stderr_text());
    assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), want);

    // Chunked, 64 KiB at a time, on the same connection.
    c.send(b"POST /app/upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for part in body.chunks(64 * 1024) {
        c.send(format!("{:x}\r\n", part.len()).as_bytes()).unwrap();
        c.send(part).unwrap();
        c.send(b"\r\n").unwrap();
    }
    c.send(b"0\r\n\r\n").unwrap();
    let r = c.read_response("POST").unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.stderr_text());
    assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), want);
}

#[test]
fn proxy_streams_request_bodies_before_they_end() {
    let Some(venv) = venv_or_skip("proxy_streams_request_bodies_before_they_end") else {
        return;
    };
    let site = Site::new();
    let up = gunicorn(&venv, &site, Bind::Tcp(free_port()), &[]);
    let p = portico(
        &site,
        &format!(
            "[[route]]\nprefix = \"/app/\"\nproxy = \"http://{}/\"\n",
            up.addr()
        ),
    );
    // The client sends the first KiB of a 1 MiB body and waits: the app reads that KiB and
    // answers, which it can only do if the proxy passed it on before the body ended.
    let first = [b'a'; 1024];
    let framings: [(&str, Vec<u8>); 2] = [
        ("Content-Length: 1048576", first.to_vec()),
        (
            "Transfer-Encoding: chunked",
            [b"400\r\n".as_slice(), &first, b"\r\n"].concat(),
        ),
    ];
    for (framing, start) in framings {
        let mut c = Conn::open(p.addr).unwrap();
        c.send(
            format!("POST /app/first?n=1024 HTTP/1.1\r\nHost: test\r\n{framing}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        c.send(&start).unwrap();
        let r = c
            .read_response("POST")
            .unwrap_or_else(|e| panic!("{framing}: no answer while the body was under way: {e}"));
        assert_eq!(r.status, 200, "{framing}: {}", r.text());
        assert_eq!(r.body, first, "{framing}");
    }
}

#[test]
fn proxy_to_a_unix_socket_upstream() {
    let Some(venv) = venv_or_skip("proxy_to_a_unix_socket_upstream") else {
        return;
    };
    let site = Site::new();
    let sock = site.path().join("app.sock");
    let _up = gunicorn(&venv, &site, Bind::Unix(sock.clone()), &[]);
    let p = portico(
        &site,
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"unix:{s}\"]\n\
             [[route]]\nprefix = \"/app/\"\nproxy = {{ upstream = \"app\", path = \"/\" }}\n\
             [[route]]\nprefix = \"/sock\"\nproxy = \"unix:{s}\"\n",
            s = sock.display()
        ),
    );
    let v = echo(&p, "/app/x?q=1");
    assert_eq!(v["uri"], "/x?q=1", "{v}");
    // No path part: the request target as sent.
    let v = echo(&p, "/sock/x?q=1");
    assert_eq!(v["uri"], "/sock/x?q=1", "{v}");
    assert_eq!(header(&v, "x-forwarded-for"), Some("127.0.0.1"), "{v}");
    let r = request_to(p.addr, "POST", "/sock/upload", "test", &[], &[7u8; 100_000]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap()["len"],
        100_000
    );
}

#[test]
fn proxy_skips_a_refusing_server_and_answers_502_when_all_refuse() {
    let Some(venv) = venv_or_skip("proxy_skips_a_refusing_server_and_answers_502_when_all_refuse")
    else {
        return;
    };
    let site = Site::new();
    let up = gunicorn(&venv, &site, Bind::Tcp(free_port()), &[]);
    let (down1, down2) = (free_port(), free_port());
    let p = portico(
        &site,
        &format!(
            "[[upstream]]\nname = \"half\"\nservers = [\"{down1}\", \"{}\"]\n\
             [[upstream]]\nname = \"none\"\nservers = [\"{down1}\", \"{down2}\"]\n\
             [[route]]\nprefix = \"/half/\"\nproxy = {{ upstream = \"half\", path = \"/\" }}\n\
             [[route]]\nprefix = \"/none/\"\nproxy = {{ upstream = \"none\", path = \"/\" }}\n",
            up.addr()
        ),
    );
    // The dead server refuses: the request goes to the live one (and the dead one is taken out
    // after max_fails).
    let mut c = Conn::open(p.addr).unwrap();
    for i in 0..10 {
        let r = c.request("GET", &format!("/half/n?i={i}"), &[]).unwrap();
        assert_eq!(
            r.status,
            200,
            "request {i}: {}\n{}",
            r.text(),
            p.stderr_text()
        );
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["uri"], format!("/n?i={i}"));
    }
    for i in 0..3 {
        let started = Instant::now();
        let r = get(p.addr, "/none/x").unwrap();
        assert_eq!(r.status, 502, "request {i}: {r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a refused connection took {:?} to answer",
            started.elapsed()
        );
    }
    // The good upstream is still fine after the failures.
    assert_eq!(get(p.addr, "/half/ok").unwrap().status, 200);
}

#[test]
fn proxy_answers_504_past_read_timeout() {
    let Some(venv) = venv_or_skip("proxy_answers_504_past_read_timeout") else {
        return;
    };
    let site = Site::new();
    let up = gunicorn(
        &venv,
        &site,
        Bind::Tcp(free_port()),
        &["-k", "gthread", "--threads", "4"],
    );
    let p = portico(
        &site,
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\nread_timeout = \"1s\"\n\
             [[route]]\nprefix = \"/app/\"\nproxy = {{ upstream = \"app\", path = \"/\" }}\n",
            up.addr()
        ),
    );
    let started = Instant::now();
    let r = get(p.addr, "/app/slow?s=3").unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2800),
        "504 after {took:?}, read_timeout is 1s and the app takes 3s"
    );
    // Under the timeout the answer passes.
    let r = get(p.addr, "/app/slow?s=0.2").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slow done"));
}

#[test]
fn proxy_keeps_client_connections_alive_and_pools_upstream_ones() {
    let Some(venv) = venv_or_skip("proxy_keeps_client_connections_alive_and_pools_upstream_ones")
    else {
        return;
    };
    let site = Site::new();
    // gthread keeps connections alive (the sync worker closes each one).
    let bind = Bind::Tcp(free_port());
    let gthread = ["-k", "gthread", "--threads", "4", "--keep-alive", "30"];
    let up = gunicorn(&venv, &site, bind.clone(), &gthread);
    let p = portico(
        &site,
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\
             [[route]]\nprefix = \"/app/\"\nproxy = {{ upstream = \"app\", path = \"/\" }}\n",
            up.addr()
        ),
    );
    let mut c = Conn::open(p.addr).unwrap();
    let mut ports = Vec::new();
    for i in 0..6 {
        let r = if i % 2 == 0 {
            c.request("GET", &format!("/app/k?i={i}"), &[]).unwrap()
        } else {
            send_request(
                &mut c,
                "POST",
                &format!("/app/k?i={i}"),
                "test",
                &[],
                b"body",
            );
            c.read_response("POST").unwrap()
        };
        assert_eq!(r.status, 200, "request {i} on one connection: {}", r.text());
        assert_ne!(r.header("connection"), Some("close"), "{r:?}");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["uri"], format!("/k?i={i}"));
        ports.push(v["remote_port"].as_str().unwrap_or_default().to_string());
    }
    // One cell, sequential requests: one pooled upstream connection served them all.
    ports.dedup();
    assert_eq!(ports.len(), 1, "upstream connections not reused: {ports:?}");

    // The upstream restarts: the pooled connection is dead, and the next request must not
    // fail because of it.
    drop(up);
    let _up = gunicorn(&venv, &site, bind, &gthread);
    for i in 0..3 {
        let r = c.request("GET", &format!("/app/after?i={i}"), &[]).unwrap();
        assert_eq!(
            r.status,
            200,
            "request {i} after the upstream restarted: {}\n{}",
            r.text(),
            p.stderr_text()
        );
    }
}
