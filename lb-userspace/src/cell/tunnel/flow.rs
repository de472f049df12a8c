//! What a tunnel's relay and the tunnel share while it runs: when a byte last moved (the idle
//! timeout) and the bytes moved each way (the metrics).
use std::cell::Cell;

use tokio::time::Instant;

/// What a relay shares with its caller while it runs: when a byte last moved, and the bytes
/// moved each way.
#[derive(Debug)]
pub struct Flow {
    pub last: Cell<Instant>,
    pub up: Cell<u64>,
    pub down: Cell<u64>,
}

impl Flow {
    pub fn new() -> Self {
        Flow {
            last: Cell::new(Instant::now()),
            up: Cell::new(0),
            down: Cell::new(0),
        }
    }
    /// `n` bytes went from the client to the upstream.
    pub fn sent_up(&self, n: usize) {
        self.up.set(self.up.get() + n as u64);
        self.last.set(Instant::now());
    }
    /// `n` bytes went from the upstream to the client.
    pub fn sent_down(&self, n: usize) {
        self.down.set(self.down.get() + n as u64);
        self.last.set(Instant::now());
    }
}
