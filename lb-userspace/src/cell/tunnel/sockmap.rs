//! `relay = "sockmap"`: both sockets go into TUNNEL_SOCKS and the `tunnel_relay` program sends
//! each skb one receives to the other's send queue. The cell only watches: for an end of
//! stream (passed on as a half-close), for bytes the program left to it (they arrived before
//! the sockets were in the map), and for the idle timeout, which reads the program's per-socket
//! byte counts to see whether anything moved.
use std::cell::RefCell;
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use tokio::io::Interest;
use tokio::time::Instant;

use super::flow::Flow;
use super::sock::Sock;
use crate::ebpf::TunnelMaps;

/// Bytes read at once from a socket the program left bytes on.
const CHUNK: usize = 16 << 10;

/// The sockets could not go into the maps: the caller relays them another way.
#[derive(Debug)]
pub struct NotJoined(pub String);

/// Relays until both directions end, either side fails (Some(Err)), or nothing moved for
/// `idle` (None). The bytes hyper read ahead are written first, in userspace.
pub async fn run(
    client: &Sock,
    upstream: &Sock,
    up_ahead: &[u8],
    down_ahead: &[u8],
    maps: &RefCell<TunnelMaps>,
    flow: &Flow,
    idle: Duration,
) -> Result<Option<io::Result<()>>, NotJoined> {
    // Before the program takes over: whatever it redirects must come after these bytes.
    let ahead = async {
        if !down_ahead.is_empty() {
            client.write_all(down_ahead).await?;
            flow.sent_down(down_ahead.len());
        }
        if !up_ahead.is_empty() {
            upstream.write_all(up_ahead).await?;
            flow.sent_up(up_ahead.len());
        }
        io::Result::Ok(())
    };
    if let Err(e) = ahead.await {
        return Ok(Some(Err(e)));
    }
    let ids = |s: &Sock| {
        Ok::<_, crate::sys::SysError>((
            crate::sys::socket_cookie(s.as_fd())?,
            crate::sys::tcp_bytes_queued(s.as_fd())?,
        ))
    };
    let (c, u) = match (ids(client), ids(upstream)) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => return Err(NotJoined(e.to_string())),
    };
    let ((c, c_base), (u, u_base)) = (c, u);
    maps.borrow_mut()
        .join((c, client.as_fd()), (u, upstream.as_fd()))
        .map_err(|e| NotJoined(e.to_string()))?;
    let sides = [
        Side {
            sock: client,
            cookie: c,
            queued_before: c_base,
        },
        Side {
            sock: upstream,
            cookie: u,
            queued_before: u_base,
        },
    ];
    let result = watch(&sides, maps, flow, idle).await;
    let m = maps.borrow();
    flow.counted_up(m.bytes(c));
    flow.counted_down(m.bytes(u));
    drop(m);
    maps.borrow_mut().part(c, u);
    Ok(result)
}

/// One side of a sockmap tunnel.
struct Side<'a> {
    sock: &'a Sock,
    cookie: u64,
    /// `sys::tcp_bytes_queued` when the sockets joined the maps.
    queued_before: u64,
}

/// Waits for both ends of stream, an error, or the idle timeout. `sides`: client, upstream.
async fn watch(
    sides: &[Side<'_>; 2],
    maps: &RefCell<TunnelMaps>,
    flow: &Flow,
    idle: Duration,
) -> Option<io::Result<()>> {
    let [cs, us] = sides;
    let (client, upstream, c, u) = (cs.sock, us.sock, cs.cookie, us.cookie);
    let (mut client_open, mut upstream_open) = (true, true);
    // Bytes the cell itself wrote to each side after the join (the program's leftovers).
    let (mut wrote_up, mut wrote_down) = (0u64, 0u64);
    let moved = || {
        let m = maps.borrow();
        m.bytes(c) + m.bytes(u)
    };
    let mut seen = moved();
    let mut buf = vec![0u8; CHUNK];
    while client_open || upstream_open {
        let deadline = flow.last.get() + idle;
        let r = tokio::select! {
            r = client.ready(Interest::READABLE), if client_open => {
                r.map(|()| true)
            }
            r = upstream.ready(Interest::READABLE), if upstream_open => {
                r.map(|()| false)
            }
            () = tokio::time::sleep_until(deadline) => {
                let now = moved();
                if now == seen {
                    return None;
                }
                seen = now;
                flow.last.set(Instant::now());
                continue;
            }
        };
        let from_client = match r {
            Ok(f) => f,
            Err(e) => return Some(Err(e)),
        };
        let (from, to) = if from_client {
            (client, upstream)
        } else {
            (upstream, client)
        };
        match from.try_read(&mut buf) {
            Ok(0) => {
                // End of stream: the program sees no more from this side. Its last bytes may
                // still wait in the peer's sockmap backlog: pass the end on once they are out.
                let (from_side, to_side, wrote) = if from_client {
                    (cs, us, wrote_up)
                } else {
                    (us, cs, wrote_down)
                };
                let target = to_side.queued_before + wrote + maps.borrow().bytes(from_side.cookie);
                sent_out(to, target, idle).await;
                if let Err(e) = to.shutdown_write() {
                    return Some(Err(e));
                }
                if from_client {
                    client_open = false;
                } else {
                    upstream_open = false;
                }
            }
            Ok(n) => {
                // Bytes the program left to the cell (queued before the sockets joined).
                if let Err(e) = to.write_all(&buf[..n]).await {
                    return Some(Err(e));
                }
                if from_client {
                    flow.sent_up(n);
                    wrote_up += n as u64;
                } else {
                    flow.sent_down(n);
                    wrote_down += n as u64;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(()))
}

/// Waits until `to` has had `target` bytes put in its send queue (the program's redirects
/// reach it from a kernel work queue), at most `limit`; an error ends the wait (the shutdown
/// that follows reports the socket's state).
async fn sent_out(to: &Sock, target: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_micros(50);
    while Instant::now() < deadline {
        match crate::sys::tcp_bytes_queued(to.as_fd()) {
            Ok(n) if n < target => {}
            _ => return,
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}
