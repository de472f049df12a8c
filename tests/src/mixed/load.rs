//! The mixed load: one thread per stream, each request checked (status and exact body), every
//! client-visible failure counted by kind and kept with the connection it happened on (local
//! port, when it was opened), so a test can tell which failures a fault may explain. Bounded
//! in time whatever happens; optionally paced to a request rate.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::ws;
use crate::{Conn, Response, raw_request};

/// What a stream asks for and what a good answer is.
#[derive(Debug, Clone)]
pub enum Check {
    /// GET `path`: 200 with exactly `body`.
    Fixed { path: String, body: Arc<Vec<u8>> },
    /// GET `path?n=<client>-<seq>`: 200 with `<label> n=<client>-<seq>`.
    Echo { path: String, label: &'static str },
    /// GET `path`: 200 with one of `bodies` (a file replaced while served); 404 is counted as
    /// `absent` (the moment it was removed), not as a failure.
    OneOf {
        path: String,
        bodies: Vec<Arc<Vec<u8>>>,
    },
    /// GET each of `files` in turn: 200 with its exact bytes, or a complete 5xx response
    /// (counted as `5xx`: the disk failed and the server said so).
    Faulty { files: Vec<(String, Arc<Vec<u8>>)> },
    /// A WebSocket on `path`: text messages echoed (each one counts as a request), closed
    /// with a close handshake after `messages`.
    WebSocket { path: String, messages: usize },
}

/// One client thread's job.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Its row in the tallies: several streams may share one.
    pub name: &'static str,
    /// Reuse the connection (up to 100 requests); otherwise `Connection: close` each time.
    pub keepalive: bool,
    pub check: Check,
}

impl Stream {
    pub fn new(name: &'static str, keepalive: bool, check: Check) -> Stream {
        Stream {
            name,
            keepalive,
            check,
        }
    }
}

/// A failed request, with the connection it was on.
#[derive(Debug, Clone)]
pub struct Failure {
    pub stream: &'static str,
    /// `connect`, `reset`, `eof`, `timeout`, `io`, `status`, `body`, `handshake`, `close`.
    pub kind: &'static str,
    /// The client's port of the connection (None: it never connected).
    pub local_port: Option<u16>,
    pub conn_opened: Option<Instant>,
    /// When the request (or WebSocket message) was sent, and when it failed.
    pub started: Instant,
    pub at: Instant,
    pub detail: String,
}

/// Counts of one stream name.
#[derive(Debug, Clone, Default)]
pub struct StreamTally {
    pub ok: u64,
    /// Answers a check accepts without calling them good (`absent`, `5xx`).
    pub allowed: BTreeMap<&'static str, u64>,
    pub failed: BTreeMap<&'static str, u64>,
}

impl StreamTally {
    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }
    pub fn allowed_total(&self) -> u64 {
        self.allowed.values().sum()
    }
    pub fn requests(&self) -> u64 {
        self.ok + self.failures() + self.allowed_total()
    }
}

/// Counts by stream name.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub streams: BTreeMap<&'static str, StreamTally>,
}

impl Tally {
    pub fn ok(&self) -> u64 {
        self.streams.values().map(|s| s.ok).sum()
    }
    pub fn failures(&self) -> u64 {
        self.streams.values().map(StreamTally::failures).sum()
    }
    pub fn requests(&self) -> u64 {
        self.streams.values().map(StreamTally::requests).sum()
    }
    pub fn ok_of(&self, name: &str) -> u64 {
        self.streams.get(name).map_or(0, |s| s.ok)
    }
    /// Failures by kind over every stream, e.g. `eof=3 reset=1` (`none`).
    pub fn failure_kinds(&self) -> String {
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        for s in self.streams.values() {
            for (k, n) in &s.failed {
                *kinds.entry(k).or_default() += n;
            }
        }
        if kinds.is_empty() {
            return "none".into();
        }
        let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
        parts.join(" ")
    }
}

#[derive(Debug, Default)]
struct Shared {
    tally: Tally,
    failures: Vec<Failure>,
}

/// Most failures kept with their details (all are counted).
const KEEP_FAILURES: usize = 100_000;

/// The load's stop signal: the clients' waits (pacing, back-off) end the moment it is set.
#[derive(Debug, Default)]
struct Stop {
    set: Mutex<bool>,
    changed: Condvar,
}

impl Stop {
    fn set(&self) {
        *self.set.lock().unwrap() = true;
        self.changed.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.set.lock().unwrap()
    }

    /// Waits until `until` or the stop, whichever comes first.
    fn wait_until(&self, until: Instant) {
        let mut set = self.set.lock().unwrap();
        while !*set {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return;
            };
            set = self.changed.wait_timeout(set, left).unwrap().0;
        }
    }
}

/// The running load.
#[derive(Debug)]
pub struct MixedLoad {
    stop: Arc<Stop>,
    shared: Arc<Mutex<Shared>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl MixedLoad {
    /// One thread per stream against `addr`, for at most `max` (then the threads stop by
    /// themselves). `rate`: requests per second per thread (None: as fast as answers come).
    pub fn start(addr: SocketAddr, streams: &[Stream], max: Duration, rate: Option<f64>) -> Self {
        let stop = Arc::new(Stop::default());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let deadline = Instant::now() + max;
        let threads = streams
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let client = Client {
                    id: i,
                    addr,
                    stream: s.clone(),
                    stop: stop.clone(),
                    shared: shared.clone(),
                    deadline,
                    pace: rate.map(|r| Duration::from_secs_f64(1.0 / r)),
                };
                std::thread::Builder::new()
                    .name(format!("load-{}-{i}", s.name))
                    .spawn(move || client.run())
                    .expect("spawn a load thread")
            })
            .collect();
        MixedLoad {
            stop,
            shared,
            threads,
        }
    }

    /// The counts so far.
    pub fn tally(&self) -> Tally {
        self.shared.lock().unwrap().tally.clone()
    }

    /// Stops the clients and waits for them: the final counts and the failures kept.
    pub fn finish(self) -> (Tally, Vec<Failure>) {
        self.stop.set();
        for t in self.threads {
            let _ = t.join();
        }
        let mut shared = self.shared.lock().unwrap();
        (shared.tally.clone(), std::mem::take(&mut shared.failures))
    }
}

/// Which connection a request went on.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnInfo {
    pub port: Option<u16>,
    pub opened: Instant,
}

impl ConnInfo {
    pub(super) fn of(conn: &Conn, opened: Instant) -> ConnInfo {
        ConnInfo {
            port: conn.stream.local_addr().ok().map(|a| a.port()),
            opened,
        }
    }
}

/// An open client connection and where it came from.
struct Open {
    conn: Conn,
    info: ConnInfo,
    used: u32,
}

impl Open {
    fn connect(addr: SocketAddr) -> std::io::Result<Open> {
        let opened = Instant::now();
        let conn = Conn::open(addr)?;
        Ok(Open {
            info: ConnInfo::of(&conn, opened),
            conn,
            used: 0,
        })
    }
}

/// What happened to one request.
pub(super) enum Outcome {
    Ok,
    Allowed(&'static str),
    Failed(&'static str, String),
}

struct Client {
    id: usize,
    addr: SocketAddr,
    stream: Stream,
    stop: Arc<Stop>,
    shared: Arc<Mutex<Shared>>,
    deadline: Instant,
    pace: Option<Duration>,
}

impl Client {
    fn running(&self) -> bool {
        !self.stop.is_set() && Instant::now() < self.deadline
    }

    fn run(self) {
        let start = Instant::now();
        let mut seq: u64 = 0;
        let mut conn: Option<Open> = None;
        while self.running() {
            if let Check::WebSocket { path, messages } = &self.stream.check {
                let (id, addr) = (self.id, self.addr);
                let connected = ws::session(addr, path, *messages, id, &mut |n, o, c, started| {
                    seq += 1;
                    self.record(o, c, started);
                    self.wait_turn(start, seq);
                    n < *messages && self.running()
                });
                if !connected {
                    self.back_off();
                }
                continue;
            }
            seq += 1;
            let started = Instant::now();
            let opened = match conn.take() {
                Some(c) => Ok(c),
                None => Open::connect(self.addr),
            };
            let mut open = match opened {
                Ok(o) => o,
                Err(e) => {
                    self.record(Outcome::Failed("connect", e.to_string()), None, started);
                    self.back_off();
                    continue;
                }
            };
            let (outcome, keep) = self.one(&mut open, seq);
            self.record(outcome, Some(open.info), started);
            open.used += 1;
            if keep && self.stream.keepalive && open.used < 100 {
                conn = Some(open);
            }
            self.wait_turn(start, seq);
        }
    }

    /// Paced: waits until request `seq + 1` is due, the deadline, or the stop.
    fn wait_turn(&self, start: Instant, seq: u64) {
        if let Some(p) = self.pace {
            self.stop
                .wait_until((start + p.mul_f64(seq as f64)).min(self.deadline));
        }
    }

    /// A refused connect returns at once: wait 5 ms (or until the stop) rather than spin.
    fn back_off(&self) {
        self.stop
            .wait_until((Instant::now() + Duration::from_millis(5)).min(self.deadline));
    }

    /// One request on `open`: its outcome, and whether the connection may be used again.
    fn one(&self, open: &mut Open, seq: u64) -> (Outcome, bool) {
        let close: &[(&str, &str)] = if self.stream.keepalive {
            &[]
        } else {
            &[("Connection", "close")]
        };
        let (path, want): (String, Want<'_>) = match &self.stream.check {
            Check::Fixed { path, body } => (path.clone(), Want::Exact(body)),
            Check::Echo { path, label } => {
                let n = format!("{}-{seq}", self.id);
                (
                    format!("{path}?n={n}"),
                    Want::Owned(format!("{label} n={n}").into_bytes()),
                )
            }
            Check::OneOf { path, bodies } => (path.clone(), Want::OneOf(bodies)),
            Check::Faulty { files } => {
                let (p, b) = &files[seq as usize % files.len()];
                (p.clone(), Want::OrServerError(b))
            }
            Check::WebSocket { .. } => unreachable!("WebSocket streams run sessions"),
        };
        let sent = open
            .conn
            .send(raw_request("GET", &path, close).as_bytes())
            .and_then(|()| open.conn.read_response("GET"));
        match sent {
            Err(e) => (
                Outcome::Failed(io_kind(&e), format!("GET {path}: {e}")),
                false,
            ),
            Ok(r) => {
                let keep = r.header("connection") != Some("close");
                (want.judge(&path, &r), keep)
            }
        }
    }

    fn record(&self, outcome: Outcome, conn: Option<ConnInfo>, started: Instant) {
        let mut s = self.shared.lock().unwrap();
        let t = s.tally.streams.entry(self.stream.name).or_default();
        match outcome {
            Outcome::Ok => t.ok += 1,
            Outcome::Allowed(what) => *t.allowed.entry(what).or_default() += 1,
            Outcome::Failed(kind, detail) => {
                *t.failed.entry(kind).or_default() += 1;
                if s.failures.len() < KEEP_FAILURES {
                    s.failures.push(Failure {
                        stream: self.stream.name,
                        kind,
                        local_port: conn.and_then(|c| c.port),
                        conn_opened: conn.map(|c| c.opened),
                        started,
                        at: Instant::now(),
                        detail,
                    });
                }
            }
        }
    }
}

/// A good answer.
enum Want<'a> {
    Exact(&'a [u8]),
    Owned(Vec<u8>),
    OneOf(&'a [Arc<Vec<u8>>]),
    OrServerError(&'a [u8]),
}

impl Want<'_> {
    fn judge(&self, path: &str, r: &Response) -> Outcome {
        let body_ok = match self {
            Want::Exact(b) | Want::OrServerError(b) => r.body == *b,
            Want::Owned(b) => r.body == *b,
            Want::OneOf(bodies) => bodies.iter().any(|b| r.body == **b),
        };
        match (r.status, self) {
            (200, _) if body_ok => Outcome::Ok,
            (200, _) => Outcome::Failed(
                "body",
                format!(
                    "GET {path}: 200 with {} wrong bytes: {:?}",
                    r.body.len(),
                    String::from_utf8_lossy(&r.body[..r.body.len().min(80)])
                ),
            ),
            (404, Want::OneOf(_)) => Outcome::Allowed("absent"),
            (500..=599, Want::OrServerError(_)) => Outcome::Allowed("5xx"),
            (s, _) => Outcome::Failed("status", format!("GET {path}: status {s}: {}", r.text())),
        }
    }
}

/// The failure kind of a client-side I/O error.
pub(super) fn io_kind(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => "reset",
        K::UnexpectedEof => "eof",
        K::WouldBlock | K::TimedOut => "timeout",
        _ => "io",
    }
}
