//! Client connections the load tools share: many connections spread over source addresses,
//! one response read, idle keep-alive connections.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How many of `held` are still open: a read would block, the server closed nothing.
pub fn still_open(held: &[TcpStream]) -> usize {
    held.iter()
        .filter(|s| {
            let mut b = [0u8; 1];
            matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

/// Connects from 127.0.0.(2 + i % 200), so that many connections do not run out of one
/// source address's ephemeral ports; `rcvbuf` shrinks the receive buffer first.
pub async fn connect(
    addr: SocketAddr,
    i: usize,
    rcvbuf: Option<u32>,
) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    if let Some(b) = rcvbuf {
        s.set_recv_buffer_size(b)?;
    }
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i % 200) as u8);
    s.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    s.connect(addr).await
}

/// Reads one response (head and Content-Length body); returns its status.
pub async fn read_response<R: AsyncRead + Unpin>(
    s: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<u16> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                fill(s, buf).await?;
            }
            buf.drain(..end + 4 + len);
            return Ok(status);
        }
        fill(s, buf).await?;
    }
}

async fn fill<R: AsyncRead + Unpin>(s: &mut R, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut tmp = [0u8; 16384];
    let n = s.read(&mut tmp).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&tmp[..n]);
    Ok(())
}

/// An idle keep-alive connection: served once (so accepted whatever TCP_DEFER_ACCEPT holds
/// back), then held.
pub async fn idle(addr: SocketAddr, i: usize, path: &str) -> std::io::Result<TcpStream> {
    let mut s = connect(addr, i, None).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: s\r\n\r\n").as_bytes())
        .await?;
    let status = read_response(&mut s, &mut Vec::new()).await?;
    if status != 200 {
        return Err(std::io::Error::other(format!("status {status}")));
    }
    Ok(s)
}
