//! Abusive clients: slowloris (closed by `header_timeout`), slow readers (reset by
//! `send_timeout`), header, pipelining and tiny-chunk floods (a 4xx or a close, bounded
//! memory), while a normal client is still served and the cell never dies. No timing
//! thresholds: `cargo xtask stress` measures latencies under the same abuse.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portico_tests::*;
use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// Bytes of resident memory of `pid`.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb * 1024
}

/// Growth of a cell's resident memory a flood may cause at most (buffers, not per request).
const RSS_BOUND: u64 = 64 << 20;

/// One cell serving `www/` (a small file and an 8 MiB one) and a WSGI app that counts the
/// body it reads, with `limits` added under `[limits]`.
fn server(limits: &str) -> (Site, Portico) {
    let s = Site::new();
    s.file("www/a.txt", b"hello");
    s.file("www/big.bin", &vec![b'x'; 8 << 20]);
    for i in 0..10 {
        s.file(&format!("www/f{i}.txt"), format!("file-{i}").as_bytes());
    }
    s.file(
        "app/app.py",
        b"def application(environ, start_response):\n    \
          n = 0\n    \
          while True:\n        \
              b = environ['wsgi.input'].read(65536)\n        \
              if not b:\n            break\n        \
              n += len(b)\n    \
          start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
          return [str(n).encode()]\n",
    );
    let cfg = format!(
        "[server]\nworkers = 1\n[limits]\n{limits}\n\
         [[route]]\nprefix = \"/app/\"\nwsgi = {{ app = \"app:application\", chdir = \"{}\" }}\n\
         [[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\" }}\n",
        s.root("app"),
        s.root("www")
    );
    s.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &s.root("p.toml")]);
    (s, p)
}

/// The one cell's pid.
fn cell(p: &Portico) -> i32 {
    let cells = p.cell_pids();
    assert_eq!(cells.len(), 1, "{cells:?}");
    cells[0]
}

/// Fetches `/a.txt` on fresh connections from another thread until stopped; counts the
/// answers and panics on anything but a 200.
struct NormalClient {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<usize>,
}

impl NormalClient {
    fn start(addr: SocketAddr) -> NormalClient {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut served = 0;
            // About 50 requests a second, until told to stop.
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_millis(20))
            {
                let r = get(addr, "/a.txt").expect("normal client");
                assert_eq!((r.status, r.text().as_str()), (200, "hello"));
                served += 1;
            }
            served
        });
        NormalClient { stop, thread }
    }

    /// Stops it; returns how many it was answered (it panicked on any failure).
    fn finish(self) -> usize {
        let _ = self.stop.send(());
        self.thread.join().expect("the normal client failed")
    }
}

/// How often each slowloris client sends one more header byte.
const DRIP: Duration = Duration::from_millis(100);

/// Waits until one of the open clients is readable (an answer or a close), or `within`.
fn readable_within(clients: &[Option<(TcpStream, Vec<u8>)>], within: Duration) {
    let mut fds: Vec<PollFd<'_>> = clients
        .iter()
        .flatten()
        .map(|(c, _)| PollFd::new(c, PollFlags::IN))
        .collect();
    let timeout = Timespec::try_from(within).expect("a short timeout");
    match poll(&mut fds, Some(&timeout)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => panic!("poll: {e}"),
    }
}

#[test]
fn slowloris_clients_are_closed_by_header_timeout() {
    let (_s, p) = server("header_timeout = \"1s\"");
    let pid = cell(&p);
    let normal = NormalClient::start(p.addr);
    // Each sends the start of a request head, then one more header byte every 100 ms.
    let head = b"GET /a.txt HTTP/1.1\r\nHost: t\r\nX-Slow: ";
    let mut clients: Vec<Option<(TcpStream, Vec<u8>)>> = (0..40)
        .map(|_| {
            let mut c = TcpStream::connect(p.addr).unwrap();
            c.write_all(head).unwrap();
            c.set_nonblocking(true).unwrap();
            Some((c, Vec::new()))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut drip = Instant::now() + DRIP;
    while clients.iter().any(Option::is_some) && Instant::now() < deadline {
        // Wakes when a server answers or closes, or when the next byte is due.
        readable_within(&clients, drip.saturating_duration_since(Instant::now()));
        let due = Instant::now() >= drip;
        if due {
            drip += DRIP;
        }
        for slot in &mut clients {
            let Some((c, got)) = slot else { continue };
            let mut buf = [0u8; 512];
            let closed = match c.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    false
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    due && c.write(b"a").is_err()
                }
                Err(_) => true,
            };
            if closed {
                let text = String::from_utf8_lossy(got);
                assert!(
                    got.is_empty() || text.starts_with("HTTP/1.1 408"),
                    "a slow client got {text:?}"
                );
                *slot = None;
            }
        }
    }
    let left = clients.iter().filter(|c| c.is_some()).count();
    assert_eq!(left, 0, "slowloris clients still open after 15 s");
    assert!(normal.finish() > 0);
    assert_eq!(cell(&p), pid, "the cell was replaced");
    let m = p.metrics();
    assert!(
        metric_value(
            &m,
            "portico_cell_requests_total{cell=\"0\",status_class=\"4xx\"}"
        )
        .is_some_and(|v| v >= 40.0),
        "{m}"
    );
}

#[test]
fn slow_readers_are_reset_by_send_timeout() {
    let (_s, p) = server("send_timeout = \"1s\"");
    let pid = cell(&p);
    let before = rss(pid);
    let normal = NormalClient::start(p.addr);
    const READERS: usize = 20;
    // Small receive buffers: the response fills them and the server's send buffer at once.
    let mut readers: Vec<TcpStream> = (0..READERS)
        .map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_recv_buffer_size(4096).unwrap();
            s.connect(&p.addr.into()).unwrap();
            let mut c: TcpStream = s.into();
            c.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    p.wait_metrics(Duration::from_secs(20), |m| {
        metric_value(m, "portico_send_timeouts_total{cell=\"0\"}") == Some(READERS as f64)
    });
    // Each was cut off: what it can still read ends (reset or EOF) well short of the body.
    for c in &mut readers {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut n = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        assert!(n < 8 << 20, "a slow reader got the whole body ({n} bytes)");
    }
    assert!(normal.finish() > 0);
    p.wait_metrics(Duration::from_secs(5), |m| {
        metric_value(m, "portico_connections_active{cell=\"0\"}") == Some(0.0)
    });
    assert_eq!(cell(&p), pid);
    assert!(rss(pid) < before + RSS_BOUND, "{} -> {}", before, rss(pid));
}

/// Sends `req` (as much as the server takes) and returns the status it answered, if any,
/// after checking the connection was closed.
fn refused(addr: SocketAddr, req: &[u8]) -> Option<u16> {
    let mut c = Conn::open(addr).unwrap();
    // The server may answer and close before it has read everything: a failed write is fine.
    let _ = c.send(req);
    let status = c.read_response("GET").ok().map(|r| r.status);
    assert!(c.closed_within(Duration::from_secs(5)), "left open");
    status
}

#[test]
fn header_floods_get_431_or_400_and_close() {
    let (_s, p) = server("");
    let pid = cell(&p);
    let before = rss(pid);
    let normal = NormalClient::start(p.addr);
    let mut many = String::from("GET /a.txt HTTP/1.1\r\nHost: t\r\n");
    for i in 0..5000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let huge = format!(
        "GET /a.txt HTTP/1.1\r\nHost: t\r\nX-Huge: {}\r\n\r\n",
        "v".repeat(1 << 20)
    );
    // A head that never ends: header lines without the blank line, 16 MiB of them.
    let mut endless = String::from("GET /a.txt HTTP/1.1\r\nHost: t\r\n");
    while endless.len() < 16 << 20 {
        endless.push_str("X-More: vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\r\n");
    }
    for (what, req) in [("many", &many), ("huge", &huge), ("endless", &endless)] {
        // The endless head may be cut off before its answer could be read (a reset).
        let status = refused(p.addr, req.as_bytes());
        match what {
            "endless" => assert!(
                matches!(status, Some(400 | 431) | None),
                "{what}: {status:?}"
            ),
            _ => assert_eq!(status, Some(431), "{what}"),
        }
    }
    // Many at once.
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let (addr, req) = (
                p.addr,
                if i % 2 == 0 {
                    many.clone()
                } else {
                    huge.clone()
                },
            );
            std::thread::spawn(move || refused(addr, req.as_bytes()))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), Some(431));
    }
    assert!(normal.finish() > 0);
    assert_eq!(cell(&p), pid, "the cell was replaced");
    assert!(rss(pid) < before + RSS_BOUND, "{} -> {}", before, rss(pid));
}

#[test]
fn pipelining_flood_is_answered_in_order_with_bounded_memory() {
    let (_s, p) = server("");
    let pid = cell(&p);
    let before = rss(pid);
    const REQUESTS: usize = 20_000;
    let mut c = Conn::open(p.addr).unwrap();
    let mut writer = c.stream.try_clone().unwrap();
    // Written from another thread: the server stops reading while its answers are unread.
    let w = std::thread::spawn(move || {
        let all: String = (0..REQUESTS)
            .map(|i| format!("GET /f{}.txt HTTP/1.1\r\nHost: t\r\n\r\n", i % 10))
            .collect();
        writer.write_all(all.as_bytes()).unwrap();
    });
    for i in 0..REQUESTS {
        let r = c.read_response("GET").unwrap();
        assert_eq!(
            (r.status, r.text()),
            (200, format!("file-{}", i % 10)),
            "response {i}"
        );
    }
    w.join().unwrap();
    assert_eq!(c.request("GET", "/a.txt", &[]).unwrap().status, 200);
    assert_eq!(cell(&p), pid);
    assert!(rss(pid) < before + RSS_BOUND, "{} -> {}", before, rss(pid));
}

/// A chunked POST of `chunks` one-byte chunks to the WSGI app.
fn tiny_chunks(chunks: usize) -> Vec<u8> {
    let mut req =
        b"POST /app/count HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..chunks {
        req.extend_from_slice(b"1\r\nx\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

#[test]
fn tiny_chunk_flood_completes_or_is_cut_off_cleanly() {
    let (_s, p) = server("max_body_size = \"256k\"");
    let pid = cell(&p);
    let before = rss(pid);
    // Within max_body_size: read to the end, every byte counted.
    let mut c = Conn::open(p.addr).unwrap();
    let body = tiny_chunks(200_000);
    let mut writer = c.stream.try_clone().unwrap();
    let w = std::thread::spawn(move || writer.write_all(&body).unwrap());
    let r = c.read_response("POST").unwrap();
    w.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "200000"));
    // Past it: 413 and the connection closed, not read to the end.
    let mut c = Conn::open(p.addr).unwrap();
    let body = tiny_chunks(2_000_000);
    let mut writer = c.stream.try_clone().unwrap();
    let w = std::thread::spawn(move || writer.write_all(&body).is_ok());
    let r = c.read_response("POST").unwrap();
    assert_eq!(r.status, 413);
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "left open after 413"
    );
    drop(c);
    let _ = w.join().unwrap();
    assert_eq!(get(p.addr, "/a.txt").unwrap().status, 200);
    assert_eq!(cell(&p), pid, "the cell was replaced");
    assert!(rss(pid) < before + RSS_BOUND, "{} -> {}", before, rss(pid));
}
