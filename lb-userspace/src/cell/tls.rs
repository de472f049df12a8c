//! TLS listeners in a cell: the handshake (its configuration chosen from the ClientHello,
//! bounded by `header_timeout`, counted by version, cipher and resumption, or by why it failed),
//! plain HTTP sent to the TLS port answered with a 400 like nginx, and the TLS stream as a
//! connection's socket (no sendfile, no parking: the bytes must pass through rustls).
use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::cell::conn::ConnSocket;
use crate::cell::tunnel::sock::{IntoSock, Sock};
use crate::config::TlsConfig;
use crate::metrics::{CellStats, TLS_FAILURES, TLS_SUITES, cell_counter};
use crate::tls::{ServerConfigs, SharedTicketer};

thread_local! {
    /// Set by the certificate resolver when `unknown_name = "reject"` refused the client's
    /// name; the handshake that fails next counts it under `unknown_name`.
    static REFUSED_NAME: Cell<bool> = const { Cell::new(false) };
}

/// One TLS listener of the cell.
pub struct TlsListener {
    configs: ServerConfigs,
    stats: CellStats<'static>,
}

/// A handshake that failed, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Plaintext,
    Timeout,
    Eof,
    UnknownName,
    Protocol,
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::Plaintext => "plaintext",
            Failure::Timeout => "timeout",
            Failure::Eof => "eof",
            Failure::UnknownName => "unknown_name",
            Failure::Protocol => "protocol",
        }
    }
}

/// nginx's answer to plain HTTP on a TLS port.
const PLAINTEXT_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 50\r\n\r\nThe plain HTTP request was sent to an HTTPS port.\n";

impl TlsListener {
    pub fn new(
        cfg: &TlsConfig,
        tickets: Option<Arc<SharedTicketer>>,
        stats: CellStats<'static>,
    ) -> anyhow::Result<Self> {
        let tickets = tickets.map(|t| t as Arc<dyn rustls::server::ProducesTickets>);
        let on_unknown = Box::new(|| REFUSED_NAME.with(|f| f.set(true)));
        let configs = crate::tls::server_config(cfg, tickets, on_unknown)
            .map_err(|e| anyhow::anyhow!("tls {}: {e}", cfg.listen))?;
        Ok(TlsListener { configs, stats })
    }

    /// The server side of the handshake within `timeout`; None (counted, logged at debug)
    /// when it fails.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        timeout: Duration,
        peer: &str,
    ) -> Option<TlsStream<TcpStream>> {
        REFUSED_NAME.with(|f| f.set(false));
        // One deadline for both halves: the ClientHello, then the rest of the handshake.
        let deadline = Instant::now() + timeout;
        let mut hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let (e, plain) = match timeout_at(deadline, &mut hello).await {
            Err(_) => (None, None),
            Ok(Err(e)) => (Some(e), hello.take_io()),
            Ok(Ok(start)) => {
                let config = self.configs.for_hello(&start.client_hello()).clone();
                match timeout_at(deadline, start.into_stream(config).into_fallible()).await {
                    Ok(Ok(tls)) => {
                        self.count_done(&tls);
                        return Some(tls);
                    }
                    Err(_) => (None, None),
                    Ok(Err((e, _))) => (Some(e), None),
                }
            }
        };
        let failure = match e {
            None => Failure::Timeout,
            Some(e) => {
                let why = classify(&e);
                if let (Failure::Plaintext, Some(mut stream)) = (why, plain) {
                    // The rest of the request is read and dropped after the answer: closing
                    // with unread bytes would reset the connection before the client reads it.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        stream.write_all(PLAINTEXT_RESPONSE).await?;
                        stream.shutdown().await?;
                        let mut sink = [0u8; 1024];
                        while stream.read(&mut sink).await? > 0 {}
                        Ok::<_, io::Error>(())
                    })
                    .await;
                }
                tracing::debug!("TLS handshake with {peer} failed: {e}");
                why
            }
        };
        let i = TLS_FAILURES
            .iter()
            .position(|r| *r == failure.label())
            .expect("every failure has a label");
        self.stats.add(cell_counter::TLS_FAILED + i, 1);
        None
    }

    fn count_done(&self, tls: &TlsStream<TcpStream>) {
        let (_, conn) = tls.get_ref();
        let suite = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str());
        let k = TLS_SUITES
            .iter()
            .position(|s| Some(*s) == suite)
            .unwrap_or(TLS_SUITES.len() - 1);
        self.stats.add(cell_counter::TLS_HANDSHAKES + k, 1);
        if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            let v = usize::from(conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3));
            self.stats.add(cell_counter::TLS_RESUMED + v, 1);
        }
    }
}

/// Why a handshake failed, from its error.
fn classify(e: &io::Error) -> Failure {
    if REFUSED_NAME.with(Cell::get) {
        return Failure::UnknownName;
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return Failure::Eof;
    }
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        // The first record's type byte is not a TLS one: a letter of an HTTP method.
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            Failure::Plaintext
        }
        _ => Failure::Protocol,
    }
}

/// The TLS stream as a connection's socket.
pub struct TlsConn(pub TlsStream<TcpStream>);

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl ConnSocket for TlsConn {
    const SENDFILE: bool = false;
    const PARKS: bool = false;

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.get_ref().0.poll_read_ready(cx)
    }
    fn poll_sendfile(
        &self,
        _cx: &mut Context<'_>,
        _file: &std::fs::File,
        _offset: u64,
        _len: usize,
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "sendfile through a TLS session",
        )))
    }
}

impl IntoSock for TlsConn {
    const RAW: bool = false;

    /// The TCP socket under the session, for a reset; relays that move raw bytes check `RAW`.
    fn into_sock(self) -> Sock {
        Sock::Tcp(self.0.into_inner().0)
    }
}
