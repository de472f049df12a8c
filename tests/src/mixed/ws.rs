//! One WebSocket session of the mixed load: the handshake, text messages echoed one at a time
//! (masked client frames, RFC 6455 section 5.3), then the close handshake.
use std::net::SocketAddr;
use std::time::Instant;

use super::load::{ConnInfo, Outcome, io_kind};
use crate::Conn;

/// Runs a session of up to `messages` echoes. `each(n, outcome, conn)` is called after every
/// message (n counts them from 1, with when it was sent) and for a failed handshake or close;
/// the session goes on while it returns true. False when no connection was made (the caller
/// backs off).
pub(super) fn session(
    addr: SocketAddr,
    path: &str,
    messages: usize,
    client: usize,
    each: &mut dyn FnMut(usize, Outcome, Option<ConnInfo>, Instant) -> bool,
) -> bool {
    let opened = Instant::now();
    let (mut c, head) = match Conn::websocket(addr, path, &[]) {
        Ok(x) => x,
        Err(e) => {
            let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                "connect"
            } else {
                io_kind(&e)
            };
            each(
                messages,
                Outcome::Failed(kind, format!("WebSocket {path}: {e}")),
                None,
                opened,
            );
            return false;
        }
    };
    let info = ConnInfo::of(&c, opened);
    if !head.starts_with("HTTP/1.1 101") {
        let first = head.lines().next().unwrap_or_default().to_string();
        each(
            messages,
            Outcome::Failed("handshake", format!("WebSocket {path}: {first}")),
            Some(info),
            opened,
        );
        return true;
    }
    let mut n = 0;
    loop {
        n += 1;
        let msg = format!("m{client}-{n}");
        let sent = Instant::now();
        let outcome = match send(&mut c, 0x1, msg.as_bytes()).and_then(|()| c.read_frame()) {
            Ok((0x81, p)) if p == msg.as_bytes() => Outcome::Ok,
            Ok((first, p)) => Outcome::Failed(
                "body",
                format!(
                    "WebSocket {path}: frame {first:#x} {:?} for {msg}",
                    String::from_utf8_lossy(&p)
                ),
            ),
            Err(e) => Outcome::Failed(io_kind(&e), format!("WebSocket {path}: {e}")),
        };
        let failed = matches!(outcome, Outcome::Failed(..));
        if failed || !each(n, outcome, Some(info), sent) {
            if failed {
                return true;
            }
            break;
        }
    }
    // The close handshake: our close (1000), then frames until the server's close.
    let sent = Instant::now();
    let closed = send(&mut c, 0x8, &1000u16.to_be_bytes()).and_then(|()| {
        loop {
            let (first, _) = c.read_frame()?;
            if first & 0x0f == 0x8 {
                break Ok(());
            }
        }
    });
    if let Err(e) = closed {
        each(
            messages,
            Outcome::Failed("close", format!("WebSocket {path} close: {e}")),
            Some(info),
            sent,
        );
    }
    true
}

/// Sends one masked frame with FIN set.
fn send(c: &mut Conn, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mask: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    c.send(&f)
}
