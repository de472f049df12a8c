//! What a tunnel's relay and the tunnel share while it runs: when a byte last moved (the idle
//! timeout) and the bytes moved each way (the metrics, counted as they move).
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::time::Instant;

use crate::metrics::upstream_counter;

/// What a relay shares with its caller while it runs: when a byte last moved, and the bytes
/// moved each way (also added to the server's tunnel byte counters at once, so a long-lived
/// WebSocket shows its traffic in /metrics before it closes).
#[derive(Debug)]
pub struct Flow {
    pub last: Cell<Instant>,
    pub up: Cell<u64>,
    pub down: Cell<u64>,
    counters: &'static [AtomicU64],
}

impl Flow {
    /// `counters`: the upstream server's block of the cell's metrics.
    pub fn new(counters: &'static [AtomicU64]) -> Self {
        Flow {
            last: Cell::new(Instant::now()),
            up: Cell::new(0),
            down: Cell::new(0),
            counters,
        }
    }
    /// `n` bytes went from the client to the upstream.
    pub fn sent_up(&self, n: usize) {
        self.counted_up(n as u64);
        self.last.set(Instant::now());
    }
    /// `n` bytes went from the upstream to the client.
    pub fn sent_down(&self, n: usize) {
        self.counted_down(n as u64);
        self.last.set(Instant::now());
    }
    /// Bytes the kernel moved up (the sockmap relay learns them at the end): counted, with no
    /// bearing on the idle timer.
    pub fn counted_up(&self, n: u64) {
        self.up.set(self.up.get() + n);
        self.counters[upstream_counter::TUNNEL_BYTES_UP].fetch_add(n, Relaxed);
    }
    /// The same, downwards.
    pub fn counted_down(&self, n: u64) {
        self.down.set(self.down.get() + n);
        self.counters[upstream_counter::TUNNEL_BYTES_DOWN].fetch_add(n, Relaxed);
    }
}
