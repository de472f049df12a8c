//! One HTTP/1.1 connection in a cell: hyper for the protocol, plus what hyper leaves to us:
//! header-read (408), keep-alive idle and send timeouts, request framing seen on the raw bytes,
//! sendfile for file regions, and a graceful close when the cell drains.
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use wsgi_worker::ConnInfo;

use crate::cell::conn_state::{ConnState, Phase};
use crate::cell::context::CellCtx;
use crate::cell::dispatch::handle;
use crate::cell::tunnel::sock::IntoSock;
use crate::metrics::CellStats;

/// The socket as hyper sees it, reporting each read to the connection state.
struct TrackedIo<S> {
    inner: S,
    /// Bytes a previous hyper connection read but did not use, given to this one first.
    prefix: bytes::Bytes,
    state: Rc<ConnState>,
    stats: CellStats<'static>,
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() || room {
                    // Data, or the client's own end of file: no parking either way.
                    self.state.park.set(false);
                }
                self.state.on_read(new);
                Poll::Ready(Ok(()))
            }
            // Parking: an end of file at a request boundary makes hyper finish the connection
            // without writing anything, and `into_parts` hands the socket back.
            Poll::Pending if self.state.park.get() => Poll::Ready(Ok(())),
            r => r,
        }
    }
}

/// What a connection needs of its socket beyond reads and writes: sendfile(2) of a file region
/// when writable, and readiness alone (to wake a parked connection without a buffer).
pub trait ConnSocket {
    /// Whether `poll_sendfile` works (a TLS session must see every byte).
    const SENDFILE: bool = true;
    /// Whether an idle connection may be parked: hyper dropped, the bare socket kept.
    const PARKS: bool = true;
    /// Whether closing starts with a shutdown: a TLS session sends its close_notify; a plain
    /// socket's close sends the same FIN as shutdown(2) followed at once by close(2) would.
    const SHUTDOWN: bool = true;
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>>;
}

macro_rules! impl_sendfile {
    ($t:ty) => {
        impl ConnSocket for $t {
            const SHUTDOWN: bool = false;
            fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.poll_read_ready(cx)
            }
            fn poll_sendfile(
                &self,
                cx: &mut Context<'_>,
                file: &std::fs::File,
                offset: u64,
                len: usize,
            ) -> Poll<io::Result<usize>> {
                use std::os::fd::AsFd as _;
                loop {
                    std::task::ready!(self.poll_write_ready(cx))?;
                    let r = self.try_io(tokio::io::Interest::WRITABLE, || {
                        let mut off = offset;
                        rustix::fs::sendfile(self.as_fd(), file, Some(&mut off), len)
                            .map_err(io::Error::from)
                    });
                    match r {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        r => return Poll::Ready(r),
                    }
                }
            }
        }
    };
}
impl_sendfile!(tokio::net::TcpStream);
impl_sendfile!(tokio::net::UnixStream);

impl<S: ConnSocket> TrackedIo<S> {
    /// If `buf` lies in a registered file region, sends (part of) it with sendfile.
    fn try_sendfile(&self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        if !S::SENDFILE {
            return None;
        }
        let p = buf.as_ptr() as usize;
        let mut regions = self.state.regions.borrow_mut();
        let i = regions
            .iter()
            .position(|r| p >= r.ptr && p < r.ptr + r.len)?;
        let r = &regions[i];
        let skip = p - r.ptr;
        let len = buf.len().min(r.len - skip);
        let res = self
            .inner
            .poll_sendfile(cx, &r.file, r.offset + skip as u64, len);
        if let Poll::Ready(Ok(n)) = res {
            self.stats
                .add(crate::metrics::cell_counter::SENDFILE_BYTES, n as u64);
            if n == 0 {
                // The file shrank under us: fail rather than loop (hyper closes the connection).
                return Some(Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file truncated while being sent",
                ))));
            }
            if skip + n == r.len {
                regions.swap_remove(i);
            }
        }
        Some(res)
    }
}

impl<S: AsyncWrite + ConnSocket + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.state.unflushed.set(true);
        let r = match self.try_sendfile(cx, buf) {
            Some(r) => r,
            None => Pin::new(&mut self.inner).poll_write(cx, buf),
        };
        self.state.wrote(&r);
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.state.unflushed.set(true);
        let r = self.send_vectored(cx, bufs);
        self.state.wrote(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            // hyper flushes the socket only once its own buffer is written out.
            self.state.flushed.set(true);
            if self.state.unflushed.replace(false) && self.state.phase.get() == Phase::Idle {
                // The last response's tail just left: idle from now on.
                self.state.since.set(Instant::now());
            }
            if let Some(w) = self.state.flush_waiter.borrow_mut().take() {
                w.wake();
            }
        }
        r
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncWrite + ConnSocket + Unpin> TrackedIo<S> {
    /// `poll_write_vectored` proper: slices before a mapped file region, the region by sendfile.
    fn send_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.state.regions.borrow().is_empty() {
            // Write the slices before the first mapped region normally, the region by sendfile.
            let first = bufs.iter().position(|b| {
                let p = b.as_ptr() as usize;
                self.state
                    .regions
                    .borrow()
                    .iter()
                    .any(|r| p >= r.ptr && p < r.ptr + r.len)
            });
            match first {
                Some(0) => return self.try_sendfile(cx, &bufs[0]).expect("region found"),
                Some(k) => return Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs[..k]),
                None => {}
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

const REQUEST_TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\n\r\n408 Request Timeout\n";

const HTTP2_REFUSED_RESPONSE: &[u8] =
    b"HTTP/1.1 505 HTTP Version Not Supported\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 31\r\n\r\n505 HTTP Version Not Supported\n";

/// How long a keep-alive connection idles before it is parked (hyper's connection and its
/// buffers dropped, only the socket kept, a new one started when bytes arrive): 10 ms per
/// request since it was last parked, up to 100 ms. A client that asked once and went quiet
/// gives its buffers back soon, so a burst of such clients never holds thousands of them; a
/// busy connection is looked at no more often than every 100 ms and keeps one hyper connection.
fn park_after(served: u64) -> Duration {
    const PER_REQUEST: Duration = Duration::from_millis(10);
    const MOST: Duration = Duration::from_millis(100);
    PER_REQUEST
        .saturating_mul(served.clamp(1, 10) as u32)
        .min(MOST)
}

/// While draining, every answer says `Connection: close`. An idle keep-alive connection is
/// closed only after a grace period: its client may already be sending the next request,
/// which is then answered (and closed) instead of meeting a reset.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// What one connection's tasks share, whichever hyper connection is serving it.
struct Shared {
    state: Rc<ConnState>,
    conn_info: Arc<ConnInfo>,
    ctx: Rc<CellCtx>,
    drain: watch::Receiver<bool>,
    drain_at: Option<Instant>,
}

/// Serves one accepted connection until it closes, times out, or the cell drains.
pub async fn serve_connection<S>(
    stream: S,
    conn_info: Arc<ConnInfo>,
    ctx: Rc<CellCtx>,
    drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + ConnSocket + IntoSock + Unpin + 'static,
{
    let drain_at = drain.borrow().then(Instant::now);
    let mut sh = Shared {
        state: Rc::new(ConnState::new(ctx.stats)),
        drain_at,
        conn_info,
        ctx,
        drain,
    };
    let (mut stream, mut prefix) = (stream, bytes::Bytes::new());
    loop {
        // Boxed, so that a parked connection holds only the socket and this loop's state.
        let Some((s, rest)) = Box::pin(serve_http(stream, prefix, &mut sh)).await else {
            return;
        };
        stream = s;
        // An empty `Bytes` from hyper may still own its whole read buffer: let it go.
        prefix = if rest.is_empty() {
            drop(rest);
            bytes::Bytes::new()
        } else {
            rest
        };
        // Boxed too: allocated when the connection parks, after hyper's buffers were freed, so
        // the task itself stays small.
        if prefix.is_empty() && !Box::pin(park(&stream, &mut sh)).await {
            close(stream).await;
            return;
        }
    }
}

/// Closes a connection's socket once it is done: a TLS session first sends its close_notify
/// (for at most a second); a plain socket's close sends the FIN by itself.
async fn close<S: AsyncWrite + ConnSocket + Unpin>(mut io: S) {
    if S::SHUTDOWN {
        // Boxed: room for a timer in every connection's task for this one last step.
        let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), io.shutdown())).await;
    }
}

/// Waits, without any buffer, until a parked connection's client sends something (true), or
/// until its keep-alive time (or the drain grace) is over (false).
async fn park<S: ConnSocket>(stream: &S, sh: &mut Shared) -> bool {
    let state = &sh.state;
    {
        // Between requests these hold nothing: give back what the last requests grew.
        state.regions.borrow_mut().shrink_to_fit();
        state.framing.borrow_mut().shrink();
    }
    let stats = sh.ctx.stats;
    stats.connection_parked(true);
    let woken = park_until(stream, sh).await;
    stats.connection_parked(false);
    woken
}

/// `park`'s wait, between the gauge's two changes.
async fn park_until<S: ConnSocket>(stream: &S, sh: &mut Shared) -> bool {
    let state = &sh.state;
    let limits = &sh.ctx.limits;
    // A connection that has not sent a request yet has the header timeout to send one.
    let idle_limit = if state.requests.get() == 0 {
        limits.header_timeout.0
    } else {
        limits.keepalive_timeout.0
    };
    loop {
        let since = state.since.get();
        let end = match sh.drain_at {
            Some(at) => since.max(at) + DRAIN_GRACE,
            None => since + idle_limit,
        };
        tokio::select! {
            r = std::future::poll_fn(|cx| stream.poll_readable(cx)) => return r.is_ok(),
            changed = sh.drain.changed(), if sh.drain_at.is_none() => {
                if changed.is_err() || *sh.drain.borrow() {
                    sh.drain_at = Some(Instant::now());
                }
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(end)) => return false,
        }
    }
}

/// One hyper connection over the socket. Returns the socket (and any bytes hyper read but did
/// not use) when the connection was parked; `None` when it is finished.
async fn serve_http<S>(
    stream: S,
    prefix: bytes::Bytes,
    sh: &mut Shared,
) -> Option<(S, bytes::Bytes)>
where
    S: AsyncRead + AsyncWrite + ConnSocket + IntoSock + Unpin + 'static,
{
    let Shared {
        state,
        conn_info,
        ctx,
        drain,
        drain_at,
    } = sh;
    state.park.set(false);
    let io = TrackedIo {
        inner: stream,
        prefix,
        state: state.clone(),
        stats: ctx.stats,
    };
    let svc_state = state.clone();
    let svc_ctx = ctx.clone();
    let svc_info = conn_info.clone();
    let service =
        hyper::service::service_fn(move |req| handle(&svc_ctx, &svc_state, &svc_info, req));
    let limits = &ctx.limits;
    let max_head = (limits.max_uri_length.0 + limits.max_header_size.0 + 1024).max(8192) as usize;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .half_close(false)
        .max_buf_size(max_head);
    // hyper parses up to 100 headers on the stack; we count against `max_headers` ourselves
    // (so the client gets its 431) and only widen hyper's table when the limit is higher.
    if limits.max_headers > 100 {
        builder.max_headers(limits.max_headers as usize + 1);
    }
    let mut conn = builder.serve_connection(TokioIo::new(io), service);

    let header_timeout = limits.header_timeout.0;
    let keepalive_timeout = limits.keepalive_timeout.0;
    let send_timeout = limits.send_timeout.0;
    let started = Instant::now();
    let served_before = state.requests.get();
    let park_delay = || park_after(state.requests.get() - served_before);
    let first = if drain_at.is_some() {
        DRAIN_GRACE
    } else {
        park_delay().min(header_timeout).min(send_timeout)
    };
    let sleep = tokio::time::sleep(first);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            // In order: a connection served and closed within its first poll (a request that
            // came with the connection) never arms its timer, so the timer driver is not woken
            // through its eventfd for a deadline sooner than any it had.
            biased;
            // Without hyper's shutdown: a connection that ends in a proxied 101 goes on as a
            // tunnel over the same socket (hyper's own upgrades need a `Send` IO).
            res = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                if let Err(e) = res {
                    if e.is_parse_version_h2() {
                        // The HTTP/2 preface where h2c is off: hyper would close without a word.
                        let io = conn.into_parts().io.into_inner().inner;
                        refuse(io, ctx, (505, 31, HTTP2_REFUSED_RESPONSE)).await;
                    } else if !e.is_incomplete_message() {
                        tracing::debug!("connection from {}: {e}", conn_info.remote_addr);
                    }
                    return None;
                }
                let parts = conn.into_parts();
                let io = parts.io.into_inner().inner;
                let tunnel = state.tunnel.borrow_mut().take();
                let websocket = state.websocket.borrow_mut().take();
                match (tunnel, websocket) {
                    (Some(t), _) => crate::cell::tunnel::relay(io, parts.read_buf, *t).await,
                    (None, Some(s)) => {
                        crate::cell::asgi::websocket::run(io, parts.read_buf, *s).await;
                    }
                    (None, None) if state.park.get() => return Some((io, parts.read_buf)),
                    (None, None) => close(io).await,
                }
                return None;
            }
            changed = drain.changed(), if drain_at.is_none() => {
                if changed.is_err() || *drain.borrow() {
                    *drain_at = Some(Instant::now());
                    sleep.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                }
            }
            () = &mut sleep => {
                let since = state.since.get();
                let now = Instant::now();
                // A response still being written is not idle, whatever its body's state.
                let current = match state.phase.get() {
                    Phase::Idle if state.unflushed.get() => Phase::Busy,
                    p => p,
                };
                let (deadline, phase) = match (current, *drain_at) {
                    (Phase::Head, _) if now >= since + header_timeout => (now, Phase::Head),
                    (Phase::Head | Phase::Busy, _) => {
                        if let Some(blocked) = state.write_blocked.get()
                            && now >= blocked + send_timeout
                        {
                            let io = conn.into_parts().io.into_inner().inner;
                            send_timed_out(io, ctx, &conn_info.remote_addr);
                            return None;
                        }
                        // Look again later, the longer the request has taken (an idle
                        // connection is parked soon after it ends, a long poll wakes rarely);
                        // soon while draining: an answer that went out without `Connection:
                        // close` leaves an idle connection to close after the grace. Never
                        // later than send_timeout, so a write that blocks after this look is
                        // seen at its own deadline.
                        let step = if drain_at.is_some() {
                            DRAIN_GRACE
                        } else {
                            (now - since).max(park_delay()).min(header_timeout)
                        };
                        let mut next = now + step.min(send_timeout);
                        if let Some(blocked) = state.write_blocked.get() {
                            next = next.min(blocked + send_timeout);
                        }
                        if current == Phase::Head {
                            next = next.min(since + header_timeout);
                        }
                        sleep.as_mut().reset(tokio::time::Instant::from_std(next));
                        continue;
                    }
                    (Phase::Idle, Some(at)) => (since.max(at) + DRAIN_GRACE, Phase::Idle),
                    (Phase::Idle, None) => {
                        // A fresh connection gets the header timeout to send its first request.
                        let limit = since + if state.requests.get() == 0 {
                            header_timeout
                        } else {
                            keepalive_timeout
                        };
                        let park_at = since.max(started) + park_delay();
                        if S::PARKS && park_at < limit && now < limit {
                            if now < park_at {
                                sleep.as_mut().reset(tokio::time::Instant::from_std(park_at));
                            } else {
                                // hyper reads again when polled next, sees the end of file and
                                // finishes, handing the socket back.
                                state.park.set(true);
                                sleep.as_mut().reset(tokio::time::Instant::from_std(limit));
                            }
                            continue;
                        }
                        (limit, Phase::Idle)
                    }
                };
                if now < deadline {
                    // Within send_timeout, so a request that starts meanwhile is looked at in time.
                    let next = deadline.min(now + send_timeout);
                    sleep.as_mut().reset(tokio::time::Instant::from_std(next));
                    continue;
                }
                if phase == Phase::Head {
                    // Slow client: tell it why, then close.
                    let io = conn.into_parts().io.into_inner().inner;
                    refuse(io, ctx, (408, 20, REQUEST_TIMEOUT_RESPONSE)).await;
                }
                return None;
            }
        }
    }
}

/// Answers a request hyper could not hand over with a fixed response, counted, then closes.
async fn refuse<S: AsyncWrite + Unpin>(mut io: S, ctx: &CellCtx, answer: (u16, u64, &[u8])) {
    let (status, body_bytes, response) = answer;
    ctx.stats.request(status, body_bytes);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        io.write_all(response).await?;
        io.shutdown().await
    })
    .await;
}

/// A client took nothing of its response for `send_timeout`: the connection is reset (not
/// closed with a FIN), so the kernel drops the unsent bytes now instead of holding them for a
/// client that may never read.
fn send_timed_out<S: IntoSock>(io: S, ctx: &CellCtx, peer: &str) {
    ctx.stats
        .add(crate::metrics::cell_counter::SEND_TIMEOUTS, 1);
    tracing::debug!("connection from {peer}: send_timeout, the client read nothing");
    if let crate::cell::tunnel::sock::Sock::Tcp(s) = io.into_sock() {
        let _ = rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO));
    }
}

#[cfg(test)]
mod tests {
    use super::park_after;
    use std::time::Duration;

    #[test]
    fn quiet_connections_park_sooner_than_busy_ones() {
        let ms = Duration::from_millis;
        assert_eq!(park_after(0), ms(10));
        assert_eq!(park_after(1), ms(10));
        assert_eq!(park_after(3), ms(30));
        assert_eq!(park_after(10), ms(100));
        assert_eq!(park_after(u64::MAX), ms(100));
    }
}
