//! Accepting on one listener until the cell drains; each connection gets its own task and
//! is counted (metrics, the steering load entry, `max_connections` and the drain wait). With
//! `h2c`, a plain TCP connection that opens with the HTTP/2 preface is served as HTTP/2.
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::watch;
use wsgi_worker::ConnInfo;

use crate::cell::conn::{ConnSocket, DRAIN_GRACE, serve_connection};
use crate::cell::conn_limit::ConnCount;
use crate::cell::context::CellCtx;
use crate::cell::http2::{PREFACE, serve_h2};
use crate::cell::tls::{TlsConn, TlsListener};

#[derive(Clone)]
pub struct Acceptor {
    pub ctx: Rc<CellCtx>,
    pub drain: watch::Receiver<bool>,
    /// Open connections against `max_connections` (shared by the cell's listeners).
    pub conns: Rc<ConnCount>,
    /// Set on a `[[tls]]` listener: each connection's handshake comes first.
    pub tls: Option<Rc<TlsListener>>,
    /// `[server] h2c`: HTTP/2 with prior knowledge on plain TCP listeners.
    pub h2c: bool,
}

impl Acceptor {
    pub async fn tcp(mut self, l: TcpListener) {
        // A listener bound to one address gives every connection that local address: no
        // getsockname per connection then (only a wildcard one needs it).
        let bound = l.local_addr().ok().filter(|a| !a.ip().is_unspecified());
        let bound_ip = bound.map(|a| a.ip().to_string());
        loop {
            let accepted = tokio::select! {
                r = async { self.conns.room().await; l.accept().await } => r,
                _ = self.drain.changed() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let local = bound.or_else(|| stream.local_addr().ok());
                    let local_addr = match (&bound_ip, local) {
                        (Some(ip), _) => ip.clone(),
                        (None, l) => l.map(|l| l.ip().to_string()).unwrap_or_default(),
                    };
                    let info = ConnInfo {
                        remote_ip: Some(peer.ip().to_canonical()),
                        remote_addr: peer.ip().to_canonical().to_string(),
                        remote_port: peer.port(),
                        local_addr,
                        local_port: local.map_or(0, |l| l.port()),
                        tls: self.tls.is_some(),
                    };
                    match &self.tls {
                        None if self.h2c => self.spawn_h2c(stream, info),
                        None => self.spawn(stream, info),
                        Some(tls) => self.spawn_tls(tls.clone(), stream, info),
                    }
                }
                Err(e) => self.accept_error(e).await,
            }
        }
    }

    pub async fn unix(mut self, l: UnixListener) {
        loop {
            let accepted = tokio::select! {
                r = async { self.conns.room().await; l.accept().await } => r,
                _ = self.drain.changed() => return,
            };
            match accepted {
                Ok((stream, _)) => self.spawn(
                    stream,
                    ConnInfo {
                        remote_ip: None,
                        remote_addr: "unix:".into(),
                        remote_port: 0,
                        local_addr: "localhost".into(),
                        local_port: 0,
                        tls: false,
                    },
                ),
                Err(e) => self.accept_error(e).await,
            }
        }
    }

    fn spawn<S>(&self, stream: S, info: ConnInfo)
    where
        S: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + ConnSocket
            + crate::cell::tunnel::sock::IntoSock
            + Unpin
            + 'static,
    {
        let (ctx, drain) = (self.ctx.clone(), self.drain.clone());
        let tcp = info.remote_ip.is_some();
        self.track(tcp, serve_connection(stream, Arc::new(info), ctx, drain));
    }

    /// A plain TCP connection under `h2c`: HTTP/2 if it opens with the preface, else HTTP/1.
    fn spawn_h2c(&self, stream: TcpStream, info: ConnInfo) {
        let (ctx, mut drain) = (self.ctx.clone(), self.drain.clone());
        self.track(true, async move {
            let info = Arc::new(info);
            let header_timeout = ctx.limits.header_timeout.0;
            match opens_with_preface(&stream, header_timeout, &mut drain).await {
                Some(true) => serve_h2(stream, info, ctx, drain).await,
                Some(false) => serve_connection(stream, info, ctx, drain).await,
                // Nothing came in time (an HTTP/1 connection would close silently too).
                None => {}
            }
        });
    }

    /// A TLS connection: the handshake (within `header_timeout`) in the connection's own task.
    /// ALPN `h2` makes it an HTTP/2 connection, anything else HTTP/1.1.
    fn spawn_tls(&self, tls: Rc<TlsListener>, stream: TcpStream, info: ConnInfo) {
        let (ctx, drain) = (self.ctx.clone(), self.drain.clone());
        self.track(true, async move {
            let timeout = ctx.limits.header_timeout.0;
            if let Some(s) = tls.handshake(stream, timeout, &info.remote_addr).await {
                let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                if h2 {
                    serve_h2(TlsConn(s), Arc::new(info), ctx, drain).await;
                } else {
                    serve_connection(TlsConn(s), Arc::new(info), ctx, drain).await;
                }
            }
        });
    }

    /// Runs one connection's task, counted while it lives. `tcp`: from a TCP listener.
    fn track(&self, tcp: bool, serve: impl Future<Output = ()> + 'static) {
        let ctx = self.ctx.clone();
        let conns = self.conns.clone();
        conns.opened(ctx.load.as_ref());
        ctx.stats.connection_opened();
        if let Some(l) = &ctx.load {
            // Only TCP listeners have the steering program.
            l.accepted(tcp);
        }
        // `map` rather than an async block awaiting `serve`: the block made every connection's
        // task, parked ones too, 248 bytes larger.
        tokio::task::spawn_local(serve.map(move |()| {
            ctx.stats.connection_closed();
            if let Some(l) = &ctx.load {
                l.closed();
            }
            conns.closed(ctx.load.as_ref());
        }));
    }

    async fn accept_error(&self, e: std::io::Error) {
        // EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning; the connection stays queued.
        tracing::warn!("accept failed: {e}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a connection's first bytes are the HTTP/2 preface, looked at without taking them
/// (whichever protocol serves the connection reads them). Fewer bytes than the preface are
/// HTTP/1: a client that sends part of it and waits is not waited for. None: nothing arrived
/// within `header_timeout` (or the drain grace), or the peer closed or failed.
async fn opens_with_preface(
    stream: &TcpStream,
    header_timeout: Duration,
    drain: &mut watch::Receiver<bool>,
) -> Option<bool> {
    let mut buf = [0u8; PREFACE.len()];
    let drained = async {
        while !*drain.borrow_and_update() {
            if drain.changed().await.is_err() {
                break;
            }
        }
        tokio::time::sleep(DRAIN_GRACE).await;
    };
    let peeked = tokio::time::timeout(header_timeout, async {
        tokio::select! {
            r = stream.peek(&mut buf) => r.ok(),
            () = drained => None,
        }
    })
    .await;
    match peeked {
        Ok(Some(n)) if n > 0 => Some(buf[..n] == PREFACE[..]),
        _ => None,
    }
}
