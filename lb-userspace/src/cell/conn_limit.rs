//! The cell's open connections against `max_connections`: at the limit the accept loops wait
//! (connections stay queued in the kernel) until one closes; the room left is published in
//! the cell's CELL_LOAD entry, so the steering program sends new connections to cells with room.
use std::cell::Cell;
use std::time::Instant;

use tokio::sync::Notify;

use crate::ebpf::cell_load::CellLoadEntry;
use crate::metrics::{CellStats, cell_counter};

/// Open connections of one cell (single-threaded: plain `Cell`s).
pub struct ConnCount {
    open: Cell<usize>,
    max: usize,
    /// Notified when the count reaches zero (for draining).
    pub idle: Notify,
    /// Notified when a connection closes at the limit.
    room: Notify,
    /// When the current stop at the limit began.
    full_since: Cell<Option<Instant>>,
    stats: CellStats<'static>,
}

impl ConnCount {
    pub fn new(max: usize, stats: CellStats<'static>, load: Option<&CellLoadEntry>) -> Self {
        stats.set(cell_counter::CONNECTIONS_MAX, max as u64);
        if let Some(l) = load {
            l.set_room(max);
        }
        stats.set(cell_counter::CONNECTION_LIMIT_SINCE_NS, 0);
        ConnCount {
            open: Cell::new(0),
            max,
            idle: Notify::new(),
            room: Notify::new(),
            full_since: Cell::new(None),
            stats,
        }
    }

    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// Waits until the cell may accept another connection (returns at once below the limit).
    pub async fn room(&self) {
        while self.open.get() >= self.max {
            self.room.notified().await;
        }
    }

    /// A connection was accepted; at the limit the cell stops accepting.
    pub fn opened(&self, load: Option<&CellLoadEntry>) {
        let n = self.open.get() + 1;
        self.open.set(n);
        if let Some(l) = load {
            l.set_room(self.max.saturating_sub(n));
        }
        if n == self.max {
            self.full_since.set(Some(Instant::now()));
            self.stats.add(cell_counter::CONNECTION_LIMIT_REACHED, 1);
            self.stats.set(
                cell_counter::CONNECTION_LIMIT_SINCE_NS,
                crate::sys::monotonic_ns(),
            );
            tracing::debug!("max_connections ({n}) reached: not accepting until one closes");
        }
    }

    /// A connection closed: below the limit again, the accept loops go on.
    pub fn closed(&self, load: Option<&CellLoadEntry>) {
        let n = self.open.get() - 1;
        self.open.set(n);
        if let Some(l) = load {
            l.set_room(self.max.saturating_sub(n));
        }
        if let Some(since) = self.full_since.take() {
            // Published before the start mark is cleared: a scrape in between counts a stop
            // twice for an instant rather than losing it.
            let ns = since.elapsed().as_nanos() as u64;
            self.stats.add(cell_counter::CONNECTION_LIMIT_NS, ns);
            self.stats.set(cell_counter::CONNECTION_LIMIT_SINCE_NS, 0);
            self.room.notify_waiters();
        }
        if n == 0 {
            self.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_stops_and_resumes_accepting() {
        let region: &'static crate::metrics::MetricsRegion =
            Box::leak(Box::new(crate::metrics::MetricsRegion::create().unwrap()));
        let stats = region.cell(0);
        let c = ConnCount::new(2, stats, None);
        assert_eq!(stats.get(cell_counter::CONNECTIONS_MAX), 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let has_room = |c: &ConnCount| {
            rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_millis(10), c.room())
                    .await
                    .is_ok()
            })
        };
        c.opened(None);
        assert!(has_room(&c));
        c.opened(None);
        assert!(!has_room(&c), "at the limit nothing is accepted");
        assert_eq!(stats.get(cell_counter::CONNECTION_LIMIT_REACHED), 1);
        assert_ne!(stats.get(cell_counter::CONNECTION_LIMIT_SINCE_NS), 0);
        c.closed(None);
        assert!(has_room(&c));
        assert_eq!(stats.get(cell_counter::CONNECTION_LIMIT_SINCE_NS), 0);
        c.opened(None);
        c.closed(None);
        c.closed(None);
        assert_eq!(c.open(), 0);
        assert_eq!(stats.get(cell_counter::CONNECTION_LIMIT_REACHED), 2);
    }
}
