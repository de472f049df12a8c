//! The recording backend of the proxy suite: every byte per connection, read with the strict
//! RFC 9112 reader, each case's events kept apart from the previous case's late bytes.
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::strict::{Parsed, StrictRequest, parse_request};
use crate::{Portico, metric_sum, poll_until, wait_until};

/// What the recording backend saw: parsed requests, and the errors of its strict reader.
#[derive(Debug, Clone)]
pub enum Event {
    Request(StrictRequest),
    /// Bytes the strict reader refused (the backend answered 400 and closed).
    Error(String),
    /// The connection ended with bytes that are not a whole request.
    Leftover(usize),
    /// A connection still open holds bytes that are not a whole request.
    Unfinished(usize),
}

#[derive(Debug, Default)]
struct Seen {
    events: Vec<Event>,
    /// Unparsed bytes per open connection.
    pending: HashMap<u64, usize>,
    /// Connections whose unparsed bytes an earlier case already reported.
    stale: HashSet<u64>,
    /// Each open connection, to ask the kernel what is still unread on it.
    open: HashMap<u64, TcpStream>,
    /// When the last `clear` was: bytes read before it belong to an earlier case.
    cleared_at: Option<Instant>,
    next_conn: u64,
}

/// A raw-socket backend: records every byte per connection, reads each request strictly and
/// answers it with a fixed small response.
#[derive(Debug, Clone)]
pub struct RecordingBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl RecordingBackend {
    pub fn start() -> RecordingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let seen = shared.clone();
                let id = {
                    let mut s = seen.lock().unwrap();
                    s.next_conn += 1;
                    let id = s.next_conn;
                    if let Ok(c) = conn.try_clone() {
                        s.open.insert(id, c);
                    }
                    id
                };
                std::thread::spawn(move || serve(conn, id, &seen));
            }
        });
        RecordingBackend { addr, seen }
    }

    /// Forgets what was seen (each case starts from nothing; open connections stay).
    pub fn clear(&self) {
        let mut s = self.seen.lock().unwrap();
        s.events.clear();
        let open: Vec<u64> = s.pending.keys().copied().collect();
        s.stale.extend(open);
        s.cleared_at = Some(Instant::now());
    }

    /// `clear` once `proxy` has gone quiet: no client connection open, every connection it
    /// has here idle in its pool, and every byte it sent read here. A slow earlier case's
    /// late bytes are then never blamed on the next one.
    pub fn clear_after(&self, proxy: &Portico) {
        wait_until(Duration::from_secs(10), "the proxy goes quiet", || {
            let m = proxy.metrics();
            let s = self.seen.lock().unwrap();
            metric_sum(&m, "portico_connections_active") == 0.0
                && metric_sum(&m, "portico_upstream_idle_connections") == s.open.len() as f64
                && s.open
                    .values()
                    .all(|c| rustix::io::ioctl_fionread(c).is_ok_and(|n| n == 0))
        });
        self.clear();
    }

    /// Connections that ended holding bytes which are not a whole request, since `clear`.
    pub fn closed_unfinished(&self) -> usize {
        let s = self.seen.lock().unwrap();
        s.events
            .iter()
            .filter(|e| matches!(e, Event::Leftover(_)))
            .count()
    }

    /// Open connections that hold bytes which are not a whole request.
    pub fn unfinished_open(&self) -> usize {
        let s = self.seen.lock().unwrap();
        s.pending.values().filter(|n| **n > 0).count()
    }

    /// Events since the last `clear`, once no connection holds an unfinished request (or
    /// after `within`, with those bytes reported as leftovers).
    pub fn settle(&self, within: Duration) -> Vec<Event> {
        let unfinished = |s: &Seen| -> Vec<usize> {
            s.pending
                .iter()
                .filter(|(id, n)| **n > 0 && !s.stale.contains(id))
                .map(|(_, n)| *n)
                .collect()
        };
        poll_until(within, || unfinished(&self.seen.lock().unwrap()).is_empty());
        let s = self.seen.lock().unwrap();
        let mut events = s.events.clone();
        events.extend(unfinished(&s).into_iter().map(Event::Unfinished));
        events
    }
}

const FIXED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Backend: 1\r\n\r\nok";

fn serve(mut conn: TcpStream, id: u64, seen: &Mutex<Seen>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    loop {
        let n = match conn.read(&mut tmp) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let read_at = Instant::now();
        // Read before the last `clear`: an earlier case's bytes, not this one's.
        let earlier = |s: &Seen| s.cleared_at.is_some_and(|c| read_at < c);
        if n == 0 {
            let mut s = seen.lock().unwrap();
            s.pending.remove(&id);
            s.open.remove(&id);
            if !buf.is_empty() && !s.stale.remove(&id) && !earlier(&s) {
                s.events.push(Event::Leftover(buf.len()));
            }
            return;
        }
        buf.extend_from_slice(&tmp[..n]);
        loop {
            match parse_request(&buf) {
                Ok(Parsed::Complete(r, used)) => {
                    buf.drain(..used);
                    let mut s = seen.lock().unwrap();
                    if !earlier(&s) {
                        s.events.push(Event::Request(r));
                    }
                    drop(s);
                    if conn.write_all(FIXED).is_err() {
                        break;
                    }
                }
                Ok(Parsed::Partial) => break,
                Err(e) => {
                    let mut s = seen.lock().unwrap();
                    if !earlier(&s) {
                        s.events.push(Event::Error(e));
                    }
                    s.pending.remove(&id);
                    s.open.remove(&id);
                    drop(s);
                    let _ = conn.write_all(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    let _ = conn.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
        let mut s = seen.lock().unwrap();
        s.pending.insert(id, buf.len());
        if !earlier(&s) {
            s.stale.remove(&id);
        }
    }
}
