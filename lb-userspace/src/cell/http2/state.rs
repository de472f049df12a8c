//! What an HTTP/2 connection's streams, its socket wrapper and its timer share.
use std::cell::Cell;
use std::time::Instant;

/// Per connection, beside hyper's own state: what the timeouts need to know.
#[derive(Debug)]
pub struct H2Conn {
    /// Streams with a request or response still going.
    pub open: Cell<usize>,
    /// Streams the connection has carried.
    pub requests: Cell<u64>,
    /// When the last stream closed (or the connection opened).
    pub since: Cell<Instant>,
    /// Bytes read so far (the preface is in once there are 24).
    pub read: Cell<u64>,
    /// Since when the socket has taken no byte of a write.
    pub write_blocked: Cell<Option<Instant>>,
    /// Told when the last open stream closes: the idle timeouts start then.
    pub idle: tokio::sync::Notify,
}

impl H2Conn {
    pub fn new(now: Instant) -> Self {
        H2Conn {
            open: Cell::new(0),
            requests: Cell::new(0),
            since: Cell::new(now),
            read: Cell::new(0),
            write_blocked: Cell::new(None),
            idle: tokio::sync::Notify::new(),
        }
    }
    pub fn stream_opened(&self) {
        self.open.set(self.open.get() + 1);
        self.requests.set(self.requests.get() + 1);
    }
    pub fn stream_closed(&self) {
        let open = self.open.get() - 1;
        self.open.set(open);
        self.since.set(Instant::now());
        if open == 0 {
            self.idle.notify_one();
        }
    }
}
