//! nginx's `proxy_send_timeout`: a write to the upstream that makes no progress for
//! `send_timeout` fails with `TimedOut` (the request then ends in a 504), so an upstream that
//! stops reading cannot hold a cell's request forever.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

#[derive(Debug)]
pub struct SendTimeout<S> {
    inner: S,
    limit: Duration,
    /// Started when a write first finds the upstream not taking bytes; cleared by progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        SendTimeout {
            inner,
            limit,
            stalled: None,
        }
    }

    /// The socket, for a tunnel relay that moves bytes in the kernel.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Progress (or an error): the clock stops. Pending: it runs, and past the limit the
    /// write fails.
    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the upstream took nothing for send_timeout ({limit:?})"),
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The timed-out IO error among an error and its sources, as text.
pub fn timeout_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::TimedOut
        {
            return Some(io.to_string());
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_times_out() {
        // A duplex pipe of 16 bytes that nobody reads: the second write blocks.
        let (a, _b) = tokio::io::duplex(16);
        let mut w = SendTimeout::new(a, Duration::from_secs(5));
        w.write_all(&[0; 16]).await.unwrap();
        let e = w.write_all(&[0; 16]).await.expect_err("times out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(timeout_in(&e).is_some_and(|m| m.contains("send_timeout")));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_clock() {
        let (a, mut b) = tokio::io::duplex(16);
        let mut w = SendTimeout::new(a, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut buf = [0u8; 64];
            let mut got = 0;
            while got < 64 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                got += b.read(&mut buf).await.unwrap();
            }
        });
        // Each write waits 3 s for the reader: under the 5 s limit every time.
        w.write_all(&[1; 64]).await.unwrap();
        reader.await.unwrap();
    }
}
