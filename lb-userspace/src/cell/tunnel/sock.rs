//! A tunnel's side as a raw socket (TCP or Unix), for the relays that hand bytes to the
//! kernel (`splice`, `sockmap`): readiness from tokio, the moves done by the caller.
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// One side of a tunnel.
#[derive(Debug)]
pub enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The client connections a cell accepts become a `Sock` for the kernel relays.
pub trait IntoSock {
    /// Whether the socket carries the client's bytes as they are (not under TLS), so the
    /// kernel relays (`splice`, `sockmap`) can move them.
    const RAW: bool = true;
    fn into_sock(self) -> Sock;
}

impl IntoSock for TcpStream {
    fn into_sock(self) -> Sock {
        Sock::Tcp(self)
    }
}

impl IntoSock for UnixStream {
    fn into_sock(self) -> Sock {
        Sock::Unix(self)
    }
}

impl AsFd for Sock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Sock::Tcp(s) => s.as_fd(),
            Sock::Unix(s) => s.as_fd(),
        }
    }
}

impl Sock {
    pub async fn ready(&self, interest: Interest) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.ready(interest).await.map(drop),
            Sock::Unix(s) => s.ready(interest).await.map(drop),
        }
    }

    /// Runs `f` if tokio saw the socket ready for `interest`; a `WouldBlock` from it clears
    /// that readiness.
    pub fn try_io<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        match self {
            Sock::Tcp(s) => s.try_io(interest, f),
            Sock::Unix(s) => s.try_io(interest, f),
        }
    }

    /// Writes all of `buf` (bytes hyper read ahead, before the kernel relay takes over).
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            self.ready(Interest::WRITABLE).await?;
            let r = match self {
                Sock::Tcp(s) => s.try_write(buf),
                Sock::Unix(s) => s.try_write(buf),
            };
            match r {
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Passes an end of stream on; a peer that is already gone is not an error.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match crate::sys::shutdown_write(self.as_fd()) {
            Err(e) if e.source.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r.map_err(io::Error::from),
        }
    }

    /// Reads what is there now; `WouldBlock` clears tokio's readiness.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.try_read(buf),
            Sock::Unix(s) => s.try_read(buf),
        }
    }

    pub fn is_tcp(&self) -> bool {
        matches!(self, Sock::Tcp(_))
    }
}

/// For the `copy` relay when a kernel relay cannot take the sockets after all.
impl AsyncRead for Sock {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Sock::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Sock {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Sock::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Sock::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Tcp(s) => Pin::new(s).poll_flush(cx),
            Sock::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Sock::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
