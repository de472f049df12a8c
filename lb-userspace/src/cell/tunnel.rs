//! Upgraded connections (WebSocket) through a proxy route: once the upstream has answered
//! `101 Switching Protocols` and the client has that answer, the cell copies bytes both ways
//! until either side closes or nothing moves for the idle timeout.
use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// A tunnel the proxy agreed to: the upstream side, ready once its 101 has been read.
pub struct Pending {
    pub upstream: OnUpgrade,
    /// The upstream group's `read_timeout`: the tunnel closes after this long without a byte.
    pub idle: Duration,
    /// For log lines: the upstream group and server.
    pub label: String,
    /// The upstream connection's request handle, held until the upgrade resolves.
    pub hold: Box<dyn std::any::Any>,
}

/// Relays between the client's connection (with the bytes hyper read past the request head)
/// and the upstream until both directions end, either fails, or the tunnel is idle too long.
pub async fn relay<S>(client: S, read_ahead: Bytes, pending: Pending)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let upstream = pending.upstream.await;
    drop(pending.hold);
    let upstream = match upstream {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!("tunnel to {}: upstream upgrade failed: {e}", pending.label);
            return;
        }
    };
    let mut upstream = TokioIo::new(upstream);
    let last = Rc::new(Cell::new(Instant::now()));
    let mut client = Activity {
        inner: client,
        last: last.clone(),
    };
    let copy = async {
        if !read_ahead.is_empty() {
            upstream.write_all(&read_ahead).await?;
        }
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    };
    tokio::select! {
        r = copy => match r {
            Ok((up, down)) => tracing::debug!(
                "tunnel to {}: closed ({up} bytes up, {down} bytes down)", pending.label
            ),
            Err(e) => tracing::debug!("tunnel to {}: {e}", pending.label),
        },
        () = idle_expired(&last, pending.idle) => {
            tracing::debug!("tunnel to {}: idle for {:?}; closed", pending.label, pending.idle);
        }
    }
}

/// Resolves once `last` is `idle` in the past.
async fn idle_expired(last: &Cell<Instant>, idle: Duration) {
    loop {
        let deadline = last.get() + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// The client side of a tunnel, noting when bytes last moved either way.
struct Activity<S> {
    inner: S,
    last: Rc<Cell<Instant>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last.set(Instant::now());
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last.set(Instant::now());
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_timer_moves_with_activity() {
        let last = Cell::new(Instant::now());
        let start = Instant::now();
        let idle = Duration::from_millis(200);
        let bump = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            last.set(Instant::now());
        };
        tokio::join!(bump, idle_expired(&last, idle));
        assert!(start.elapsed() >= Duration::from_millis(350));
    }
}
