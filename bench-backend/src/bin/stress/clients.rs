//! The abusive clients, one async function each: idle keep-alive connections, slowloris,
//! slow readers, and the header, pipelining and tiny-chunk floods.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use bench_backend::conn::{connect, idle, read_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How one abusive connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum End {
    /// The server answered with this status (and closed, or the client went on).
    Status(u16),
    /// Closed (FIN) without an answer.
    Eof,
    /// Reset, or the connect failed.
    Reset,
    /// Still open when the scenario ended.
    Open,
}

/// Slowloris: a request head started, then one more header byte every `interval`, until
/// the server answers or closes, or `until`. Returns how it ended and after how long.
pub async fn slowloris(
    addr: SocketAddr,
    i: usize,
    interval: Duration,
    until: Instant,
) -> (End, Duration) {
    let start = Instant::now();
    let Ok(mut s) = connect(addr, i, None).await else {
        return (End::Reset, start.elapsed());
    };
    if s.write_all(b"GET /a.txt HTTP/1.1\r\nHost: s\r\nX-Slow: ")
        .await
        .is_err()
    {
        return (End::Reset, start.elapsed());
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => {
                let end = match r {
                    Ok(0) => End::Eof,
                    Ok(n) => {
                        let status = std::str::from_utf8(&buf[..n]).ok()
                            .and_then(|t| t.get(9..12)?.parse().ok()).unwrap_or(0);
                        End::Status(status)
                    }
                    Err(_) => End::Reset,
                };
                return (end, start.elapsed());
            }
            _ = tick.tick() => {
                if s.write_all(b"a").await.is_err() {
                    return (End::Reset, start.elapsed());
                }
            }
            () = tokio::time::sleep_until(until.into()) => return (End::Open, start.elapsed()),
        }
    }
}

/// A slow reader: asks for `path` with a 4 KiB receive buffer and reads nothing until
/// `until`; then reads what is left and reports how the server ended it and the bytes got.
pub async fn slow_reader(addr: SocketAddr, i: usize, path: &str, until: Instant) -> (End, u64) {
    let Ok(mut s) = connect(addr, i, Some(4096)).await else {
        return (End::Reset, 0);
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: s\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (End::Reset, 0);
    }
    tokio::time::sleep_until(until.into()).await;
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // An open connection keeps delivering; one the server reset ends quickly.
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(0)) => return (End::Eof, got),
            Ok(Ok(n)) => got += n as u64,
            Ok(Err(_)) => return (End::Reset, got),
            Err(_) => return (End::Open, got),
        }
    }
}

/// The request heads of the header flood: 5000 small fields, or one 1 MiB field.
pub fn header_flood_request(i: usize) -> Vec<u8> {
    let mut r = String::from("GET /a.txt HTTP/1.1\r\nHost: s\r\n");
    if i.is_multiple_of(2) {
        for k in 0..5000 {
            r.push_str(&format!("X-H{k}: v\r\n"));
        }
    } else {
        r.push_str(&format!("X-Huge: {}\r\n", "v".repeat(1 << 20)));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// `depth` pipelined GETs of the small file.
pub fn pipeline_request(depth: usize) -> Vec<u8> {
    b"GET /a.txt HTTP/1.1\r\nHost: s\r\n\r\n".repeat(depth)
}

/// A chunked POST to the app of `chunks` one-byte chunks.
pub fn tiny_chunk_request(chunks: usize) -> Vec<u8> {
    let mut r =
        b"POST /app/count HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    r.extend_from_slice(&b"1\r\nx\r\n".repeat(chunks));
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

/// One flood connection: writes `req` (from a task, since the server may answer before it
/// has read everything) and reads up to `answers` responses; stops at the first close.
pub async fn flood_once(
    addr: SocketAddr,
    i: usize,
    req: std::sync::Arc<Vec<u8>>,
    answers: usize,
) -> Vec<End> {
    let Ok(s) = connect(addr, i, None).await else {
        return vec![End::Reset];
    };
    let (mut r, mut w) = s.into_split();
    // The write half is kept until the answers are read: dropping it would half-close, which
    // the server takes as the client leaving.
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&req).await;
        w
    });
    let mut ends = Vec::with_capacity(answers);
    let mut buf = Vec::new();
    for _ in 0..answers {
        let read = tokio::time::timeout(Duration::from_secs(10), read_response(&mut r, &mut buf));
        match read.await {
            Ok(Ok(st)) => ends.push(End::Status(st)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                ends.push(End::Eof);
                break;
            }
            Ok(Err(_)) => {
                ends.push(End::Reset);
                break;
            }
            Err(_) => {
                ends.push(End::Open);
                break;
            }
        }
    }
    drop(r);
    writer.abort();
    let _ = writer.await;
    ends
}
