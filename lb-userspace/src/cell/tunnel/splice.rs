//! `relay = "splice"`: each direction moves socket -> pipe -> socket with splice(2), so the
//! bytes never enter userspace; tokio's readiness drives it on the cell's event loop.
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use tokio::io::Interest;

use super::flow::Flow;
use super::sock::Sock;
use crate::sys;

/// Most bytes one splice takes from a socket: a default pipe's capacity.
const CHUNK: usize = 64 << 10;

/// Relays both ways until both directions end or either fails. First the bytes hyper read
/// ahead: the client's (`up_ahead`) to the upstream, the upstream's (`down_ahead`) to the
/// client. Writes to the upstream that stall past `send_timeout` fail.
pub async fn run(
    client: &Sock,
    upstream: &Sock,
    up_ahead: &[u8],
    down_ahead: &[u8],
    send_timeout: Duration,
    flow: &Flow,
) -> io::Result<()> {
    if !down_ahead.is_empty() {
        client.write_all(down_ahead).await?;
        flow.sent_down(down_ahead.len());
    }
    if !up_ahead.is_empty() {
        stalled_after(send_timeout, upstream.write_all(up_ahead)).await?;
        flow.sent_up(up_ahead.len());
    }
    let up = pump(client, upstream, Some(send_timeout), |n| flow.sent_up(n));
    let down = pump(upstream, client, None, |n| flow.sent_down(n));
    tokio::try_join!(up, down)?;
    Ok(())
}

/// One direction: until `from` ends (then `to` is half-closed) or an error.
async fn pump(
    from: &Sock,
    to: &Sock,
    send_timeout: Option<Duration>,
    moved: impl Fn(usize),
) -> io::Result<()> {
    let (pipe_r, pipe_w): (OwnedFd, OwnedFd) = sys::splice_pipe()?;
    loop {
        from.ready(Interest::READABLE).await?;
        let n = match from.try_io(Interest::READABLE, || {
            Ok(sys::splice(from.as_fd(), pipe_w.as_fd(), CHUNK)?)
        }) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            let writable = to.ready(Interest::WRITABLE);
            match send_timeout {
                Some(t) => stalled_after(t, writable).await?,
                None => writable.await?,
            }
            match to.try_io(Interest::WRITABLE, || {
                Ok(sys::splice(pipe_r.as_fd(), to.as_fd(), left)?)
            }) {
                Ok(k) => {
                    left -= k;
                    moved(k);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    to.shutdown_write()
}

/// `f`, failing with `TimedOut` when it does not finish within `limit` (send_timeout).
async fn stalled_after<T>(
    limit: Duration,
    f: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, f).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the upstream took nothing for send_timeout ({limit:?})"),
        )
    })?
}
