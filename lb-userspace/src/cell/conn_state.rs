//! What one connection's parts share: the IO wrapper (reads, flushes), the service (request
//! boundaries) and the response body (end of a request, flush notifications).
use std::cell::{Cell, RefCell};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::cell::body::{ConnHooks, FileRegion};
use crate::cell::framing::{FramingTracker, HeadFraming};
use crate::cell::tunnel::Pending;
use crate::metrics::CellStats;

/// What the request-duration histogram needs of a request, kept until its body is done.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pub route: u16,
    pub method: u8,
    /// The request's HTTP version (requests are counted by version when answered).
    pub version: http::Version,
    pub start: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between requests: nothing of the next head received yet.
    Idle,
    /// Part of a request head received.
    Head,
    /// A request is being answered.
    Busy,
}

/// Connection state shared by the IO wrapper, the service and the response body.
pub struct ConnState {
    pub phase: Cell<Phase>,
    pub since: Cell<Instant>,
    /// Bytes arrived while Busy (a pipelined next request, or the request's own body).
    pub pending: Cell<bool>,
    /// Request boundaries on the raw bytes (hyper merges CL+TE silently; we refuse it).
    pub framing: RefCell<FramingTracker>,
    pub requests: Cell<u64>,
    /// Response chunks that are mapped file regions still to be written (sent with sendfile).
    pub regions: RefCell<Vec<FileRegion>>,
    /// The request being answered (route, method, start), its status and known body bytes:
    /// observed when its body is done.
    pub mark: Cell<Option<(Mark, u16, u64)>>,
    pub stats: CellStats<'static>,
    /// hyper's buffer was empty at the last socket flush: set by every successful flush,
    /// cleared by `ConnHooks::want_flush`.
    pub flushed: Cell<bool>,
    pub flush_waiter: RefCell<Option<Waker>>,
    /// hyper is writing: bytes of a response it already took (the body may be done) have not
    /// all reached the socket. Such a connection is not idle yet.
    pub unflushed: Cell<bool>,
    /// Since when the socket has taken no byte of a write (the client reads nothing): past
    /// `send_timeout` the connection is closed. None while writes go through.
    pub write_blocked: Cell<Option<Instant>>,
    /// Set when the last answer was a proxied `101 Switching Protocols`: the connection
    /// becomes a tunnel once hyper has written it. Boxed here and below: every connection,
    /// parked ones too, carries these rarely used slots.
    pub tunnel: RefCell<Option<Box<Pending>>>,
    /// Set when the last answer was an ASGI app's `101`: the connection becomes its WebSocket
    /// once hyper has written it.
    pub websocket: RefCell<Option<Box<crate::cell::asgi::websocket::Session>>>,
    /// The connection idled long enough to be parked: the socket's next would-block read
    /// reaches hyper as an end of file.
    pub park: Cell<bool>,
}

impl ConnState {
    pub fn new(stats: CellStats<'static>) -> Self {
        ConnState {
            phase: Cell::new(Phase::Idle),
            since: Cell::new(Instant::now()),
            pending: Cell::new(false),
            framing: RefCell::new(FramingTracker::default()),
            requests: Cell::new(0),
            regions: RefCell::new(Vec::new()),
            mark: Cell::new(None),
            stats,
            flushed: Cell::new(false),
            flush_waiter: RefCell::new(None),
            unflushed: Cell::new(false),
            write_blocked: Cell::new(None),
            tunnel: RefCell::new(None),
            websocket: RefCell::new(None),
            park: Cell::new(false),
        }
    }

    pub fn on_read(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self.phase.get() {
            Phase::Idle => {
                self.phase.set(Phase::Head);
                self.since.set(Instant::now());
            }
            Phase::Head => {}
            Phase::Busy => self.pending.set(true),
        }
        self.framing.borrow_mut().feed(data);
    }

    /// A write to the socket returned: progress ends a blocked spell, a full socket may
    /// start one.
    pub fn wrote<T>(&self, r: &Poll<std::io::Result<T>>) {
        match r {
            Poll::Pending => {
                if self.write_blocked.get().is_none() {
                    self.write_blocked.set(Some(Instant::now()));
                }
            }
            Poll::Ready(_) => self.write_blocked.set(None),
        }
    }

    /// The service got a request head; returns how that head framed its body.
    pub fn begin_request(&self) -> HeadFraming {
        // Regions of earlier responses that were not sent by sendfile (HEAD, or still queued in
        // hyper): from now on their bytes are written as ordinary memory.
        self.regions.borrow_mut().clear();
        self.phase.set(Phase::Busy);
        self.pending.set(false);
        self.requests.set(self.requests.get() + 1);
        self.framing.borrow_mut().next_head()
    }
}

impl ConnHooks for ConnState {
    fn done(&self, streamed: u64) {
        if let Some((m, status, body)) = self.mark.take() {
            self.stats.observe_request(
                m.route as usize,
                m.method as usize,
                status,
                m.start.elapsed().as_nanos() as u64,
                body + streamed,
            );
        }
        self.since.set(Instant::now());
        // Bytes read while busy may be the request's own body: only a next head counts.
        let next = self.pending.get() && self.framing.borrow().next_head_started();
        self.phase.set(if next { Phase::Head } else { Phase::Idle });
    }

    fn poll_flushed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.flushed.get() {
            return Poll::Ready(());
        }
        *self.flush_waiter.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn want_flush(&self) {
        self.flushed.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_and_framing_follow_the_reads() {
        let region: &'static crate::metrics::MetricsRegion =
            Box::leak(Box::new(crate::metrics::MetricsRegion::create().unwrap()));
        let s = ConnState::new(region.cell(0));
        s.on_read(b"POST / HTTP/1.1\r\nHost: x\r\nConTent-Len");
        s.on_read(b"gth: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(s.phase.get(), Phase::Head);
        assert!(s.begin_request().ambiguous());
        assert_eq!(s.phase.get(), Phase::Busy);
        s.on_read(b"0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(s.pending.get());
        s.done(0);
        assert_eq!(s.phase.get(), Phase::Head);
        assert!(!s.begin_request().ambiguous());
        s.done(0);
        assert_eq!(s.phase.get(), Phase::Idle);
    }

    #[test]
    fn a_body_read_after_its_head_leaves_the_connection_idle() {
        let region: &'static crate::metrics::MetricsRegion =
            Box::leak(Box::new(crate::metrics::MetricsRegion::create().unwrap()));
        let s = ConnState::new(region.cell(0));
        s.on_read(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n");
        s.begin_request();
        s.on_read(b"hel");
        s.on_read(b"lo");
        s.done(0);
        // Idle (keep-alive, parking), not Head (the header timeout's 408).
        assert_eq!(s.phase.get(), Phase::Idle);
        s.begin_request();
        s.on_read(b"GET /");
        s.done(0);
        assert_eq!(s.phase.get(), Phase::Head);
    }

    #[test]
    fn flush_waiters_are_woken_by_the_next_flush() {
        let region: &'static crate::metrics::MetricsRegion =
            Box::leak(Box::new(crate::metrics::MetricsRegion::create().unwrap()));
        let s = ConnState::new(region.cell(0));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        s.want_flush();
        assert!(s.poll_flushed(&mut cx).is_pending());
        assert!(s.flush_waiter.borrow().is_some());
        s.flushed.set(true);
        assert!(s.poll_flushed(&mut cx).is_ready());
    }
}
