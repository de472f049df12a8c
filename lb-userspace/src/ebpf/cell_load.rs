//! `cell_load`: a cell's own entry of the steering program's CELL_LOAD map, mapped into the
//! cell, so publishing its load costs an atomic add and never a syscall.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lb_common::steering::LOAD_PER_WSGI_REQUEST;

/// Words of one `lb_common::CellLoad` entry, in field order.
const WORDS: usize = size_of::<lb_common::CellLoad>() / 8;
const OPEN: usize = 0;
const PENDING: usize = 1;
const OLDEST_NS: usize = 2;
const ROOM: usize = 3;

/// This cell's `CellLoad` words plus the start times of its Python requests in flight (the
/// cell is single-threaded: plain `Cell`s).
pub struct CellLoadEntry {
    words: &'static [AtomicU64],
    /// (token, CLOCK_MONOTONIC start) in start order, so the front is the oldest; the buffer
    /// is reused, so a request costs no allocation.
    in_flight: RefCell<VecDeque<(u64, u64)>>,
    next_token: Cell<u64>,
}

impl CellLoadEntry {
    /// Maps the CELL_LOAD map passed by the master and takes cell `index`'s entry, starting
    /// from zero: nothing of a previous cell in this place is open any more.
    pub fn map(fd: &OwnedFd, index: usize) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let all = crate::sys::map_bpf_u64_array(fd, lb_common::MAX_CELLS as usize * WORDS)?;
        let words = all
            .get(index * WORDS..(index + 1) * WORDS)
            .context("cell index beyond CELL_LOAD")?;
        for w in words {
            w.store(0, Relaxed);
        }
        Ok(Self::over(words))
    }

    fn over(words: &'static [AtomicU64]) -> Self {
        CellLoadEntry {
            words,
            in_flight: RefCell::new(VecDeque::new()),
            next_token: Cell::new(0),
        }
    }

    /// A connection was accepted; `steered` when it came through the steering program,
    /// which counted it as pending.
    pub fn accepted(&self, steered: bool) {
        self.words[OPEN].fetch_add(1, Relaxed);
        if steered {
            self.words[PENDING].fetch_sub(1, Relaxed);
        }
    }

    pub fn closed(&self) {
        self.words[OPEN].fetch_sub(1, Relaxed);
    }

    /// How many more connections the cell will accept before `max_connections`.
    pub fn set_room(&self, room: usize) {
        self.words[ROOM].store(room as u64, Relaxed);
    }

    /// Sets the pending count to what the listeners really hold, undoing the drift of SYNs
    /// that never completed (or connections that reached the cell without the program).
    pub fn reconcile_pending(&self, queued: u64) {
        self.words[PENDING].store(queued, Relaxed);
    }

    /// A Python request starts waiting for (or running in) the app; returns its token.
    pub fn wsgi_started(&self) -> u64 {
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        self.words[OPEN].fetch_add(LOAD_PER_WSGI_REQUEST, Relaxed);
        let mut in_flight = self.in_flight.borrow_mut();
        let now = crate::sys::monotonic_ns();
        if in_flight.is_empty() {
            self.words[OLDEST_NS].store(now, Relaxed);
        }
        in_flight.push_back((token, now));
        token
    }

    /// The request of `token` has its response head (or failed).
    pub fn wsgi_finished(&self, token: u64) {
        self.words[OPEN].fetch_sub(LOAD_PER_WSGI_REQUEST, Relaxed);
        let mut in_flight = self.in_flight.borrow_mut();
        // Tokens are pushed in increasing order; requests mostly end oldest first.
        if let Ok(i) = in_flight.binary_search_by_key(&token, |(t, _)| *t) {
            in_flight.remove(i);
            if i == 0 {
                let oldest = in_flight.front().map_or(0, |(_, ns)| *ns);
                self.words[OLDEST_NS].store(oldest, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> CellLoadEntry {
        let words: &'static [AtomicU64] = Box::leak(
            (0..WORDS)
                .map(|_| AtomicU64::new(0))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        CellLoadEntry::over(words)
    }

    #[test]
    fn oldest_request_start_follows_the_requests_in_flight() {
        let s = entry();
        let a = s.wsgi_started();
        let a_ns = s.words[OLDEST_NS].load(Relaxed);
        assert_ne!(a_ns, 0);
        let b = s.wsgi_started();
        let c = s.wsgi_started();
        assert_eq!(s.words[OPEN].load(Relaxed), 3 * LOAD_PER_WSGI_REQUEST);
        // A younger request ending leaves the oldest in place.
        s.wsgi_finished(b);
        assert_eq!(s.words[OLDEST_NS].load(Relaxed), a_ns);
        // The oldest ending hands over to the next one in flight.
        s.wsgi_finished(a);
        let c_ns = s.words[OLDEST_NS].load(Relaxed);
        assert!(c_ns >= a_ns);
        let c_start = s
            .in_flight
            .borrow()
            .iter()
            .find(|(t, _)| *t == c)
            .unwrap()
            .1;
        assert_eq!(c_ns, c_start);
        s.wsgi_finished(c);
        assert_eq!(s.words[OLDEST_NS].load(Relaxed), 0);
        assert_eq!(s.words[OPEN].load(Relaxed), 0);
    }

    #[test]
    fn pending_counts_down_on_accept_and_is_reset_to_the_queue() {
        let s = entry();
        // The program queued two connections.
        s.words[PENDING].fetch_add(2, Relaxed);
        s.accepted(true);
        s.accepted(false);
        assert_eq!(s.words[PENDING].load(Relaxed), 1);
        assert_eq!(s.words[OPEN].load(Relaxed), 2);
        // One more accepted than the program counted: negative, as the program reads it.
        s.accepted(true);
        s.accepted(true);
        assert_eq!(s.words[PENDING].load(Relaxed) as i64, -1);
        s.reconcile_pending(3);
        assert_eq!(s.words[PENDING].load(Relaxed), 3);
        s.closed();
        assert_eq!(s.words[OPEN].load(Relaxed), 3);
    }
}
