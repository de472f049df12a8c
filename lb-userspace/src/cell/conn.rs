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
    state: Rc<ConnState>,
    stats: CellStats<'static>,
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.state.on_read(&buf.filled()[before..]);
        }
        r
    }
}

/// A socket that can send a file region with sendfile(2) when it is writable.
pub trait SendFile {
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
        impl SendFile for $t {
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

impl<S: SendFile> TrackedIo<S> {
    /// If `buf` lies in a registered file region, sends (part of) it with sendfile.
    fn try_sendfile(&self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
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

impl<S: AsyncWrite + SendFile + Unpin> AsyncWrite for TrackedIo<S> {
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

impl<S: AsyncWrite + SendFile + Unpin> TrackedIo<S> {
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

/// Serves one accepted connection until it closes, times out, or the cell drains.
pub async fn serve_connection<S>(
    stream: S,
    conn_info: Arc<ConnInfo>,
    ctx: Rc<CellCtx>,
    mut drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + SendFile + IntoSock + Unpin + 'static,
{
    let state = Rc::new(ConnState::new(ctx.stats));
    let io = TrackedIo {
        inner: stream,
        state: state.clone(),
        stats: ctx.stats,
    };
    let svc_state = state.clone();
    let svc_ctx = ctx.clone();
    let peer = conn_info.remote_addr.clone();
    let service =
        hyper::service::service_fn(move |req| handle(&svc_ctx, &svc_state, &conn_info, req));
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
    // While draining, every answer says `Connection: close`. An idle keep-alive connection is
    // closed only after a grace period: its client may already be sending the next request,
    // which is then answered (and closed) instead of meeting a reset.
    const DRAIN_GRACE: Duration = Duration::from_secs(1);
    let mut drain_at = drain.borrow().then(Instant::now);
    let sleep = tokio::time::sleep(if drain_at.is_some() {
        DRAIN_GRACE
    } else {
        header_timeout.min(send_timeout)
    });
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            // Without hyper's shutdown: a connection that ends in a proxied 101 goes on as a
            // tunnel over the same socket (hyper's own upgrades need a `Send` IO).
            res = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                if let Err(e) = res {
                    if !e.is_incomplete_message() {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                    return;
                }
                let parts = conn.into_parts();
                let io = parts.io.into_inner().inner;
                let tunnel = state.tunnel.borrow_mut().take();
                let websocket = state.websocket.borrow_mut().take();
                match (tunnel, websocket) {
                    (Some(t), _) => crate::cell::tunnel::relay(io, parts.read_buf, t).await,
                    (None, Some(s)) => {
                        crate::cell::asgi::websocket::run(io, parts.read_buf, s).await;
                    }
                    (None, None) => {
                        let mut io = io;
                        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                    }
                }
                return;
            }
            changed = drain.changed(), if drain_at.is_none() => {
                if changed.is_err() || *drain.borrow() {
                    drain_at = Some(Instant::now());
                    sleep.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                }
            }
            () = &mut sleep => {
                let since = state.since.get();
                // A response still being written is not idle, whatever its body's state.
                let current = match state.phase.get() {
                    Phase::Idle if state.unflushed.get() => Phase::Busy,
                    p => p,
                };
                let (deadline, phase) = match (current, drain_at) {
                    (Phase::Idle, Some(at)) => (since.max(at) + DRAIN_GRACE, Phase::Idle),
                    // A fresh connection gets the header timeout to send its first request.
                    (Phase::Idle, None) if state.requests.get() == 0 => {
                        (since + header_timeout, Phase::Idle)
                    }
                    (Phase::Idle, None) => (since + keepalive_timeout, Phase::Idle),
                    (Phase::Head, _) => (since + header_timeout, Phase::Head),
                    (Phase::Busy, _) => {
                        if let Some(blocked) = state.write_blocked.get()
                            && blocked.elapsed() >= send_timeout
                        {
                            send_timed_out(conn.into_parts().io.into_inner().inner, &ctx, &peer);
                            return;
                        }
                        // Look again soon while draining: an answer that went out without
                        // `Connection: close` leaves an idle connection to close after the grace.
                        // Never later than send_timeout, so a write that blocks after this look
                        // is seen at its own deadline.
                        let again = if drain_at.is_some() { DRAIN_GRACE } else { header_timeout };
                        let next = match state.write_blocked.get() {
                            Some(blocked) => (blocked + send_timeout).min(Instant::now() + again),
                            None => Instant::now() + again.min(send_timeout),
                        };
                        sleep.as_mut().reset(tokio::time::Instant::from_std(next));
                        continue;
                    }
                };
                if Instant::now() < deadline {
                    // Within send_timeout, so a request that starts meanwhile is looked at in time.
                    let next = deadline.min(Instant::now() + send_timeout);
                    sleep.as_mut().reset(tokio::time::Instant::from_std(next));
                    continue;
                }
                if phase == Phase::Head {
                    // Slow client: tell it why, then close.
                    let mut io = conn.into_parts().io.into_inner().inner;
                    ctx.stats.request(408, 20);
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        io.write_all(REQUEST_TIMEOUT_RESPONSE).await?;
                        io.shutdown().await
                    })
                    .await;
                }
                return;
            }
        }
    }
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
