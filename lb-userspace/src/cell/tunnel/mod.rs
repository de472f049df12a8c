//! Upgraded connections (WebSocket) through a proxy route: once the upstream has answered
//! `101 Switching Protocols` and the client has that answer, the cell relays bytes both ways
//! (the route's `relay`: `copy`, `splice` or `sockmap`) until both sides have closed, either
//! fails, or nothing moves for the idle timeout.
pub mod copy;
pub mod flow;
pub mod sock;
pub mod sockmap;
pub mod splice;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::cell::proxy::send_timeout::SendTimeout;
use crate::config::Relay;
use crate::ebpf::TunnelMaps;
use crate::metrics::{CellStats, upstream_counter};
use flow::Flow;
use sock::{IntoSock, Sock};

/// A tunnel the proxy agreed to: the upstream side, ready once its 101 has been read.
pub struct Pending {
    pub upstream: OnUpgrade,
    /// The upstream group's `read_timeout`: the tunnel closes after this long without a byte.
    pub idle: Duration,
    /// The upstream group's `send_timeout`: a write to the upstream stalled this long fails.
    pub send_timeout: Duration,
    /// For log lines: the upstream group and server.
    pub label: String,
    /// The upstream connection's request handle, held until the upgrade resolves.
    pub hold: Box<dyn std::any::Any>,
    /// The route's `relay`.
    pub relay: Relay,
    /// The cell's metrics and the server's index in them.
    pub stats: CellStats<'static>,
    pub server: usize,
    /// The sockmap relay's maps, when the master loaded it.
    pub maps: Option<Rc<RefCell<TunnelMaps>>>,
}

/// The tunnel's gauge while it is open (its bytes are counted as they move: `Flow`).
struct Open<'a> {
    counters: &'a [AtomicU64],
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.counters[upstream_counter::TUNNELS_ACTIVE].fetch_sub(1, Relaxed);
    }
}

/// Why a `sockmap` tunnel went to `copy`: the index of its `TUNNEL_FALLBACK_REASONS` counter.
#[derive(Debug, Clone, Copy)]
pub enum Fallback {
    Unavailable = 0,
    UnixSocket = 1,
    MapUpdate = 2,
}

/// Relays between the client's connection (with the bytes hyper read past the request head)
/// and the upstream until both directions end, either fails, or the tunnel is idle too long.
pub async fn relay<S>(client: S, read_ahead: Bytes, pending: Pending)
where
    S: AsyncRead + AsyncWrite + IntoSock + Unpin,
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
    let counters = pending.stats.upstream(pending.server);
    counters[upstream_counter::TUNNELS_ACTIVE].fetch_add(1, Relaxed);
    let flow = Flow::new(counters);
    let _open = Open { counters };
    let used = |r: Relay| {
        let i = upstream_counter::TUNNEL_RELAYS
            .iter()
            .position(|n| *n == r.as_str())
            .expect("every relay has a label");
        counters[upstream_counter::TUNNELS + i].fetch_add(1, Relaxed);
    };
    // The kernel relays move raw bytes: a client under TLS is copied through rustls.
    let relay = if S::RAW { pending.relay } else { Relay::Copy };
    let result = match (relay, &pending.maps) {
        (Relay::Copy, _) | (Relay::Sockmap, None) => {
            if pending.relay == Relay::Sockmap {
                fallback(counters, Fallback::Unavailable, &pending.label);
            }
            used(Relay::Copy);
            run_copy(
                client,
                read_ahead,
                TokioIo::new(upstream),
                &flow,
                pending.idle,
            )
            .await
        }
        (relay, maps) => match raw_upstream(upstream) {
            Err(upstream) => {
                // Not a socket type the pool makes: cannot happen, but copy works on any.
                tracing::warn!(
                    "tunnel to {}: upstream is not a socket; copy",
                    pending.label
                );
                used(Relay::Copy);
                run_copy(
                    client,
                    read_ahead,
                    TokioIo::new(upstream),
                    &flow,
                    pending.idle,
                )
                .await
            }
            Ok((up, up_ahead)) => {
                let client = client.into_sock();
                match (relay, maps) {
                    (Relay::Sockmap, Some(maps)) if client.is_tcp() && up.is_tcp() => {
                        let run = sockmap::run(
                            &client,
                            &up,
                            &read_ahead,
                            &up_ahead,
                            maps,
                            &flow,
                            pending.idle,
                        );
                        match run.await {
                            Ok(r) => {
                                used(Relay::Sockmap);
                                r
                            }
                            Err(sockmap::NotJoined(why)) => {
                                tracing::warn!(
                                    "tunnel to {}: sockmap relay refused the sockets ({why}); copy",
                                    pending.label
                                );
                                fallback(counters, Fallback::MapUpdate, &pending.label);
                                used(Relay::Copy);
                                // The bytes read ahead went out before the maps refused.
                                run_copy(client, Bytes::new(), up, &flow, pending.idle).await
                            }
                        }
                    }
                    (Relay::Sockmap, _) => {
                        fallback(counters, Fallback::UnixSocket, &pending.label);
                        used(Relay::Copy);
                        if let Err(e) = client.write_all(&up_ahead).await {
                            tracing::debug!("tunnel to {}: {e}", pending.label);
                            return;
                        }
                        flow.sent_down(up_ahead.len());
                        run_copy(client, read_ahead, up, &flow, pending.idle).await
                    }
                    _ => {
                        used(Relay::Splice);
                        let run = splice::run(
                            &client,
                            &up,
                            &read_ahead,
                            &up_ahead,
                            pending.send_timeout,
                            &flow,
                        );
                        with_idle(run, &flow, pending.idle).await
                    }
                }
            }
        },
    };
    match result {
        Some(Ok(())) => tracing::debug!(
            "tunnel to {}: closed ({} bytes up, {} bytes down)",
            pending.label,
            flow.up.get(),
            flow.down.get()
        ),
        Some(Err(e)) => tracing::debug!("tunnel to {}: {e}", pending.label),
        None => tracing::debug!(
            "tunnel to {}: idle for {:?}; closed",
            pending.label,
            pending.idle
        ),
    }
}

/// The `copy` relay, closed when idle.
async fn run_copy<S, U>(
    client: S,
    read_ahead: Bytes,
    upstream: U,
    flow: &Flow,
    idle: Duration,
) -> Option<std::io::Result<()>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    with_idle(copy::run(client, read_ahead, upstream, flow), flow, idle).await
}

/// Counts a `sockmap` tunnel relayed by `copy` instead.
fn fallback(counters: &[AtomicU64], why: Fallback, label: &str) {
    tracing::debug!("tunnel to {label}: sockmap relay not used ({why:?}); copy");
    counters[upstream_counter::TUNNEL_FALLBACKS + why as usize].fetch_add(1, Relaxed);
}

/// The upstream's socket out of hyper's upgrade, with the bytes hyper read past the 101.
fn raw_upstream(up: Upgraded) -> Result<(Sock, Bytes), Upgraded> {
    type Tcp = TokioIo<SendTimeout<tokio::net::TcpStream>>;
    type Unix = TokioIo<SendTimeout<tokio::net::UnixStream>>;
    let up = match up.downcast::<Tcp>() {
        Ok(p) => return Ok((Sock::Tcp(p.io.into_inner().into_inner()), p.read_buf)),
        Err(up) => up,
    };
    let p = up.downcast::<Unix>()?;
    Ok((Sock::Unix(p.io.into_inner().into_inner()), p.read_buf))
}

/// Runs `relay` until it ends (Some) or `flow` is idle for `idle` (None).
async fn with_idle<F>(relay: F, flow: &Flow, idle: Duration) -> Option<std::io::Result<()>>
where
    F: Future<Output = std::io::Result<()>>,
{
    tokio::select! {
        r = relay => Some(r),
        () = idle_expired(&flow.last, idle) => None,
    }
}

/// Resolves once `last` is `idle` in the past.
pub async fn idle_expired(last: &Cell<Instant>, idle: Duration) {
    loop {
        let deadline = last.get() + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
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
