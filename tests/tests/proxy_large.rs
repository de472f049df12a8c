//! 1 GiB through a proxy route each way, every byte checked, while the cell's memory stays
//! flat: bodies stream with backpressure and are never held whole. The backend is an in-test
//! HTTP/1.1 server that generates or checks the bytes.
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portico_tests::*;

const GIB: u64 = 1 << 30;
/// The most the cell's resident memory may grow during a transfer.
const RSS_LIMIT_KIB: u64 = 16 << 10;

/// The body byte at `i`: a period (251) that no buffer size divides, so a lost, doubled or
/// reordered block shows.
fn byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// `n` body bytes from offset `at`.
fn fill(buf: &mut [u8], at: u64) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = byte(at + j as u64);
    }
}

/// Checks `bytes` against the pattern from `at`; the first wrong offset.
fn check(bytes: &[u8], at: u64) -> Result<(), u64> {
    match bytes
        .iter()
        .enumerate()
        .find(|(j, b)| **b != byte(at + *j as u64))
    {
        Some((j, _)) => Err(at + j as u64),
        None => Ok(()),
    }
}

/// A keep-alive backend: `GET /download?n=N` answers N pattern bytes (Content-Length);
/// `POST /upload` reads its Content-Length body, checks every byte and answers
/// `ok <count>` or `bad at <offset>`.
fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve(s));
        }
    });
    addr
}

fn serve(s: TcpStream) {
    let mut r = BufReader::with_capacity(256 << 10, s.try_clone().unwrap());
    let mut w = s;
    loop {
        let mut head = String::new();
        while r.read_line(&mut head).unwrap_or(0) > 0 && !head.ends_with("\r\n\r\n") {}
        if !head.ends_with("\r\n\r\n") {
            return;
        }
        let target = head.split(' ').nth(1).unwrap_or_default().to_string();
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<u64>().ok())?
            })
            .unwrap_or(0);
        let answer = if let Some(n) = target.strip_prefix("/download?n=") {
            let n: u64 = n.parse().unwrap();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
            if w.write_all(head.as_bytes()).is_err() {
                return;
            }
            let mut buf = vec![0u8; 251 << 10];
            fill(&mut buf, 0);
            let mut sent = 0u64;
            while sent < n {
                // The buffer holds whole periods, so every slice of it starts at offset 0.
                let k = (n - sent).min(buf.len() as u64) as usize;
                if w.write_all(&buf[..k]).is_err() {
                    return;
                }
                sent += k as u64;
            }
            continue;
        } else {
            let mut at = 0u64;
            let mut bad = None;
            while at < length {
                let got = match r.fill_buf() {
                    Ok([]) | Err(_) => return,
                    Ok(b) => b,
                };
                let k = got.len().min((length - at) as usize);
                if bad.is_none() {
                    bad = check(&got[..k], at).err();
                }
                r.consume(k);
                at += k as u64;
            }
            match bad {
                Some(off) => format!("bad at {off}"),
                None => format!("ok {at}"),
            }
        };
        let out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if w.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Samples the cell's RSS every few milliseconds while the transfer runs: the highest seen.
struct RssWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssWatch {
    fn start(pid: i32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max = rss_kib(pid);
            // Bounded whatever happens to the transfer.
            let deadline = Instant::now() + Duration::from_secs(300);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                max = max.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            max.max(rss_kib(pid))
        });
        RssWatch { stop, thread }
    }

    fn max_kib(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn start() -> (Site, Portico, i32) {
    let site = Site::new();
    let up = backend();
    let cfg = format!(
        "[server]\nworkers = 1\n[limits]\nmax_body_size = \"2G\"\n[[route]]\nprefix = \"/big/\"\nproxy = \"http://{up}/\"\n"
    );
    let path = site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["--config", path.to_str().unwrap()]);
    let cells = p.cell_pids();
    assert_eq!(cells.len(), 1, "workers = 1: {cells:?}");
    let cell = cells[0];
    // Warm up both directions (the pool, hyper's buffers, the allocator) before the baseline.
    let mut c = client(p.addr);
    assert_eq!(download(&mut c, 4 << 20), 4 << 20);
    assert_eq!(upload(&mut c, 4 << 20), format!("ok {}", 4 << 20));
    (site, p, cell)
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// The head of a response on `s` (the bytes after it returned too), and its Content-Length.
fn read_head(s: &mut TcpStream) -> (String, Vec<u8>, u64) {
    let mut got = Vec::new();
    let mut tmp = [0u8; 8192];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "closed before a response head");
        got.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<u64>().ok())?
        })
        .expect("a Content-Length");
    (head, got[end + 4..].to_vec(), length)
}

/// GETs `n` bytes and checks each; the count.
fn download(s: &mut TcpStream, n: u64) -> u64 {
    write!(s, "GET /big/download?n={n} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let (_, first, length) = read_head(s);
    assert_eq!(length, n);
    check(&first, 0).unwrap_or_else(|off| panic!("byte {off} wrong"));
    let mut at = first.len() as u64;
    let mut buf = vec![0u8; 256 << 10];
    while at < n {
        let k = s
            .read(&mut buf[..(n - at).min(256 << 10) as usize])
            .unwrap();
        assert!(k > 0, "the body ended at {at} of {n}");
        check(&buf[..k], at).unwrap_or_else(|off| panic!("byte {off} wrong"));
        at += k as u64;
    }
    at
}

/// POSTs `n` pattern bytes; the backend's verdict.
fn upload(s: &mut TcpStream, n: u64) -> String {
    write!(
        s,
        "POST /big/upload HTTP/1.1\r\nHost: test\r\nContent-Length: {n}\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 251 << 10];
    fill(&mut buf, 0);
    let mut sent = 0u64;
    while sent < n {
        let k = (n - sent).min(buf.len() as u64) as usize;
        s.write_all(&buf[..k]).unwrap();
        sent += k as u64;
    }
    let (_, mut body, length) = read_head(s);
    while (body.len() as u64) < length {
        let mut tmp = [0u8; 256];
        let k = s.read(&mut tmp).unwrap();
        assert!(k > 0);
        body.extend_from_slice(&tmp[..k]);
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// Runs `transfer` with the cell's RSS watched; asserts the growth bound and reports it.
fn watched(what: &str, cell: i32, transfer: impl FnOnce()) {
    let base = rss_kib(cell);
    let watch = RssWatch::start(cell);
    let started = Instant::now();
    transfer();
    let took = started.elapsed();
    let max = watch.max_kib();
    let growth = max.saturating_sub(base);
    println!(
        "{what}: 1 GiB in {took:.2?} ({:.0} MiB/s), cell RSS {base} KiB -> max {max} KiB (+{growth} KiB)",
        1024.0 / took.as_secs_f64()
    );
    assert!(
        growth < RSS_LIMIT_KIB,
        "{what}: the cell grew by {growth} KiB (from {base} KiB) moving 1 GiB"
    );
}

#[test]
fn proxy_large_1gib_download_streams_in_bounded_memory() {
    let (_site, p, cell) = start();
    let mut c = client(p.addr);
    watched("download", cell, || assert_eq!(download(&mut c, GIB), GIB));
    assert_eq!(p.cell_pids(), vec![cell], "the cell survived");
}

#[test]
fn proxy_large_1gib_upload_streams_in_bounded_memory() {
    let (_site, p, cell) = start();
    let mut c = client(p.addr);
    watched("upload", cell, || {
        assert_eq!(upload(&mut c, GIB), format!("ok {GIB}"));
    });
    assert_eq!(p.cell_pids(), vec![cell], "the cell survived");
}
