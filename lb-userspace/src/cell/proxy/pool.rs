//! A cell's upstream groups and their connection pools: HTTP/1.1 connections over TCP or Unix
//! sockets, kept idle per server up to `keepalive` and closed after `idle_timeout` (before the
//! upstream's own keep-alive timeout closes them under a request). No lock: one cell, one
//! thread.
use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::config::{ListenAddr, UpstreamConfig};

/// A pooled connection's sender.
pub type Sender = SendRequest<UpBody>;

/// One upstream group as a cell uses it.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<Server>,
    /// Round-robin position.
    next: Cell<usize>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

/// One server of a group, with its idle connections (most recently used last).
#[derive(Debug)]
pub struct Server {
    pub addr: ListenAddr,
    idle: RefCell<Vec<(Sender, Instant)>>,
    keepalive: usize,
    idle_timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        Upstream {
            name: cfg.name.clone(),
            servers: cfg
                .servers
                .iter()
                .map(|addr| Server {
                    addr: addr.clone(),
                    idle: RefCell::new(Vec::new()),
                    keepalive: usize::try_from(cfg.keepalive).unwrap_or(0),
                    idle_timeout: cfg.idle_timeout.0,
                })
                .collect(),
            next: Cell::new(0),
            connect_timeout: cfg.connect_timeout.0,
            read_timeout: cfg.read_timeout.0,
        }
    }

    /// The servers in the order this request tries them (round-robin start).
    pub fn order(&self) -> impl Iterator<Item = &Server> {
        let n = self.servers.len();
        let start = self.next.get() % n.max(1);
        self.next.set(start + 1);
        (0..n).map(move |i| &self.servers[(start + i) % n])
    }
}

impl Server {
    /// A pooled connection that is still open and idle, newest first; stale ones are closed.
    /// (One still finishing its last response is closed too: rare, and never waited on.)
    pub fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let now = Instant::now();
        while let Some((sender, since)) = idle.pop() {
            if now.saturating_duration_since(since) < self.idle_timeout
                && sender.is_ready()
                && !sender.is_closed()
            {
                return Some(sender);
            }
        }
        None
    }

    /// Puts a connection whose last response was read to the end back in the pool.
    pub fn give_back(&self, sender: Sender) {
        // Not `is_ready`: hyper may mark the connection ready just after the body's end.
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let now = Instant::now();
        idle.retain(|(s, since)| {
            now.saturating_duration_since(*since) < self.idle_timeout && !s.is_closed()
        });
        if idle.len() < self.keepalive {
            idle.push((sender, now));
        }
    }

    /// A new connection (its driver runs on the cell's event loop until it closes).
    pub async fn connect(&self, timeout: Duration) -> std::io::Result<Sender> {
        let connect = async {
            match &self.addr {
                ListenAddr::Tcp(a) => {
                    let s = tokio::net::TcpStream::connect(a).await?;
                    s.set_nodelay(true)?;
                    handshake(s).await
                }
                ListenAddr::Unix(p) => handshake(tokio::net::UnixStream::connect(p).await?).await,
            }
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

async fn handshake<S>(stream: S) -> std::io::Result<Sender>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::task::spawn_local(async move {
        // With upgrades: a 101 hands the connection to a tunnel (`hyper::upgrade::on`).
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream connection: {e}");
        }
    });
    Ok(sender)
}

/// Every upstream of the configuration, for one cell.
#[derive(Debug, Default)]
pub struct Upstreams(Vec<Rc<Upstream>>);

impl Upstreams {
    pub fn new(cfgs: &[UpstreamConfig]) -> Self {
        Upstreams(cfgs.iter().map(|c| Rc::new(Upstream::new(c))).collect())
    }

    pub fn get(&self, name: &str) -> Option<Rc<Upstream>> {
        self.0.iter().find(|u| u.name == name).cloned()
    }
}

/// The body sent upstream: the client's, or none (then a request can be sent again).
#[derive(Debug)]
pub enum UpBody {
    Client(Incoming),
    Empty,
}

impl http_body::Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Client(b) => Pin::new(b).poll_frame(cx),
            UpBody::Empty => Poll::Ready(None),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Client(b) => b.is_end_stream(),
            UpBody::Empty => true,
        }
    }
    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpBody::Client(b) => b.size_hint(),
            UpBody::Empty => http_body::SizeHint::with_exact(0),
        }
    }
}
