//! HTTP/2 connections in a cell (h2c prior knowledge from `accept`, ALPN `h2` from a TLS
//! listener): hyper's HTTP/2 server with the `[limits]` that stop stream, reset and header
//! floods, each stream through the shared request path (`stream`), plus what hyper leaves to
//! us: the preface and first request within header_timeout, the idle close after
//! keepalive_timeout, send_timeout, and GOAWAY when the cell drains.
mod io;
mod state;
mod stream;

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use wsgi_worker::ConnInfo;

use crate::cell::conn::DRAIN_GRACE;
use crate::cell::context::CellCtx;
use crate::config::LimitsConfig;
use crate::metrics::cell_counter;
use state::H2Conn;

/// HTTP/2's connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Runs hyper's stream tasks on the cell's thread: they hold the cell's `Rc`s (not `Send`).
#[derive(Debug, Clone, Copy)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// hyper's HTTP/2 server with the cell's limits. CONTINUATION floods need no key of their own:
/// h2 bounds a header block by the max header list size (a larger list is refused with 431,
/// one four times larger, or too many CONTINUATION frames, ends the connection).
fn builder(l: &LimitsConfig) -> hyper::server::conn::http2::Builder<LocalExec> {
    let mut b = hyper::server::conn::http2::Builder::new(LocalExec);
    let window = l.http2_window_size.0 as u32;
    b.max_concurrent_streams(l.http2_max_concurrent_streams as u32)
        .max_pending_accept_reset_streams(l.http2_max_pending_accept_reset_streams as usize)
        .max_local_error_reset_streams(l.http2_max_local_error_reset_streams as usize)
        .max_header_list_size(l.http2_max_header_list_size())
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .max_send_buf_size(l.http2_max_send_buffer_size.0 as usize);
    b
}

/// Serves one HTTP/2 connection (its first bytes are the preface) until it closes, times out,
/// or the cell drains.
pub async fn serve_h2<S>(
    io: S,
    conn_info: Arc<ConnInfo>,
    ctx: Rc<CellCtx>,
    mut drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let started = Instant::now();
    ctx.stats.add(cell_counter::HTTP2_CONNECTIONS, 1);
    let conn = Rc::new(H2Conn::new(started));
    let io = io::H2Io::new(io, conn.clone(), ctx.stats);
    let service = {
        let (ctx, conn, info) = (ctx.clone(), conn.clone(), conn_info.clone());
        hyper::service::service_fn(move |req| stream::serve(&ctx, &conn, &info, req))
    };
    let c = builder(&ctx.limits).serve_connection(TokioIo::new(io), service);
    tokio::pin!(c);
    let timeouts = Timeouts::of(&ctx.limits);
    let mut closing = None;
    if *drain.borrow() {
        c.as_mut().graceful_shutdown();
        closing = Some(started);
    }
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            res = c.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!("HTTP/2 connection from {}: {e}", conn_info.remote_addr);
                }
                return;
            }
            changed = drain.changed(), if closing.is_none() => {
                if changed.is_err() || *drain.borrow() {
                    // GOAWAY: streams in flight finish, no new ones start.
                    c.as_mut().graceful_shutdown();
                    let now = Instant::now();
                    closing = Some(now);
                    sleep.as_mut().reset((now + DRAIN_GRACE).into());
                }
            }
            () = conn.idle.notified() => {
                // The timer may be set for an open stream's send_timeout: look now.
                sleep.as_mut().reset(tokio::time::Instant::now());
            }
            () = &mut sleep => {
                let now = Instant::now();
                match timeouts.step(&conn, started, closing, now) {
                    Step::Wait(at) => sleep.as_mut().reset(at.into()),
                    Step::GoAway { header_timeout } => {
                        if header_timeout {
                            ctx.stats.add(cell_counter::HTTP2_HEADER_TIMEOUTS, 1);
                        }
                        c.as_mut().graceful_shutdown();
                        closing = Some(now);
                        sleep.as_mut().reset((now + DRAIN_GRACE).into());
                    }
                    Step::Close { header_timeout } => {
                        if header_timeout {
                            ctx.stats.add(cell_counter::HTTP2_HEADER_TIMEOUTS, 1);
                        }
                        return;
                    }
                    Step::SendTimeout => {
                        ctx.stats.add(cell_counter::SEND_TIMEOUTS, 1);
                        tracing::debug!(
                            "HTTP/2 connection from {}: send_timeout, the client read nothing",
                            conn_info.remote_addr
                        );
                        return;
                    }
                }
            }
        }
    }
}

/// The `[limits]` timeouts an HTTP/2 connection keeps.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header: Duration,
    keepalive: Duration,
    send: Duration,
}

/// What the connection's timer does next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Nothing due: look again then.
    Wait(Instant),
    /// Idle (or no request within header_timeout, the preface in): a graceful GOAWAY.
    GoAway { header_timeout: bool },
    /// Closed at once: no preface within header_timeout, or no stream left after a GOAWAY.
    Close { header_timeout: bool },
    /// A write has taken nothing for send_timeout.
    SendTimeout,
}

impl Timeouts {
    fn of(l: &LimitsConfig) -> Self {
        Timeouts {
            header: l.header_timeout.0,
            keepalive: l.keepalive_timeout.0,
            send: l.send_timeout.0,
        }
    }

    /// Decides at `now`; `closing`: when a GOAWAY was asked for.
    fn step(&self, c: &H2Conn, started: Instant, closing: Option<Instant>, now: Instant) -> Step {
        // Never later than send_timeout, so a write that blocks after this look is seen at its
        // own deadline.
        let write_check = match c.write_blocked.get() {
            Some(at) if now >= at + self.send => return Step::SendTimeout,
            Some(at) => at + self.send,
            None => now + self.send,
        };
        if c.open.get() > 0 {
            return Step::Wait(write_check);
        }
        let (deadline, due) = match closing {
            // After a GOAWAY, a grace for requests already on their way, then close.
            Some(at) => {
                let end = at.max(c.since.get()) + DRAIN_GRACE;
                (
                    end,
                    Step::Close {
                        header_timeout: false,
                    },
                )
            }
            None if c.requests.get() == 0 => {
                let end = started + self.header;
                let due = if c.read.get() < PREFACE.len() as u64 {
                    Step::Close {
                        header_timeout: true,
                    }
                } else {
                    Step::GoAway {
                        header_timeout: true,
                    }
                };
                (end, due)
            }
            None => (
                c.since.get() + self.keepalive,
                Step::GoAway {
                    header_timeout: false,
                },
            ),
        };
        if now >= deadline {
            due
        } else {
            Step::Wait(deadline.min(write_check))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(30),
        keepalive: Duration::from_secs(75),
        send: Duration::from_secs(60),
    };
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_fresh_connection_gets_header_timeout_for_its_preface_and_first_request() {
        let t0 = Instant::now();
        let c = H2Conn::new(t0);
        assert_eq!(T.step(&c, t0, None, t0), Step::Wait(t0 + 30 * S));
        // No preface: closed without a word.
        let closed = Step::Close {
            header_timeout: true,
        };
        assert_eq!(T.step(&c, t0, None, t0 + 30 * S), closed);
        // The preface but no request: a GOAWAY.
        c.read.set(24);
        let goaway = Step::GoAway {
            header_timeout: true,
        };
        assert_eq!(T.step(&c, t0, None, t0 + 30 * S), goaway);
    }

    #[test]
    fn open_streams_keep_a_connection_and_idle_ones_go_after_keepalive() {
        let t0 = Instant::now();
        let c = H2Conn::new(t0);
        c.read.set(100);
        c.stream_opened();
        // A long request is not idle, whatever the timeouts.
        assert_eq!(T.step(&c, t0, None, t0 + 100 * S), Step::Wait(t0 + 160 * S));
        c.stream_closed();
        let since = c.since.get();
        assert_eq!(T.step(&c, t0, None, since), Step::Wait(since + 60 * S));
        assert_eq!(
            T.step(&c, t0, None, since + 74 * S),
            Step::Wait(since + 75 * S)
        );
        let goaway = Step::GoAway {
            header_timeout: false,
        };
        assert_eq!(T.step(&c, t0, None, since + 75 * S), goaway);
    }

    #[test]
    fn a_write_blocked_for_send_timeout_ends_the_connection() {
        let t0 = Instant::now();
        let c = H2Conn::new(t0);
        c.stream_opened();
        c.write_blocked.set(Some(t0 + 5 * S));
        assert_eq!(T.step(&c, t0, None, t0 + 10 * S), Step::Wait(t0 + 65 * S));
        assert_eq!(T.step(&c, t0, None, t0 + 65 * S), Step::SendTimeout);
    }

    #[test]
    fn after_a_goaway_the_connection_closes_once_its_streams_are_done() {
        let t0 = Instant::now();
        let c = H2Conn::new(t0);
        c.read.set(100);
        c.stream_opened();
        let at = t0 + 2 * S;
        assert!(matches!(
            T.step(&c, t0, Some(at), at + 5 * S),
            Step::Wait(_)
        ));
        c.stream_closed();
        let since = c.since.get();
        assert_eq!(
            T.step(&c, t0, Some(at), since),
            Step::Wait(since.max(at) + DRAIN_GRACE)
        );
        let closed = Step::Close {
            header_timeout: false,
        };
        assert_eq!(
            T.step(&c, t0, Some(at), since.max(at) + DRAIN_GRACE),
            closed
        );
    }
}
