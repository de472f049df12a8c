//! A cell's upstream groups and their connection pools: HTTP/1.1 connections over TCP or Unix
//! sockets, kept idle per server up to `keepalive` and closed after `idle_timeout` (before the
//! upstream's own keep-alive timeout closes them under a request). No lock: one cell, one
//! thread.
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::balance::Balancer;
pub use super::request_body::UpBody;
use super::send_timeout::SendTimeout;
use crate::config::{ListenAddr, UpstreamConfig};
use crate::metrics::{CellStats, upstream_counter};

/// A pooled connection's sender.
pub type Sender = SendRequest<UpBody>;

/// One upstream group as a cell uses it.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<Server>,
    /// The cell's metrics, and the index of this group's first server in them.
    pub stats: CellStats<'static>,
    pub base: usize,
    /// Which server is up and takes the next request.
    pub balancer: RefCell<Balancer>,
    /// Retries allowed: a fifth of the requests, and a few to start with.
    retry_tokens: Cell<f64>,
    pub connect_timeout: Duration,
    pub send_timeout: Duration,
    pub read_timeout: Duration,
}

/// Retry tokens a request earns, the most kept, and what a retry costs (Finagle's budget):
/// retries stay under about a fifth of the requests, so a failing group is not hit twice as
/// hard.
const RETRY_EARN: f64 = 0.2;
const RETRY_CAP: f64 = 10.0;

/// One server of a group, with its idle connections (most recently used last).
#[derive(Debug)]
pub struct Server {
    pub addr: ListenAddr,
    /// This server's metrics block.
    stats: CellStats<'static>,
    index: usize,
    idle: RefCell<Vec<(Sender, Instant)>>,
    keepalive: usize,
    idle_timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, base: usize, stats: CellStats<'static>) -> Self {
        Upstream {
            name: cfg.name.clone(),
            stats,
            base,
            servers: cfg
                .servers
                .iter()
                .enumerate()
                .map(|(i, s)| Server {
                    addr: s.addr.clone(),
                    stats,
                    index: base + i,
                    idle: RefCell::new(Vec::new()),
                    keepalive: usize::try_from(cfg.keepalive).unwrap_or(0),
                    idle_timeout: cfg.idle_timeout.0,
                })
                .collect(),
            balancer: RefCell::new(Balancer::new(
                cfg.balance,
                &cfg.servers
                    .iter()
                    .map(|s| (s.weight, s.backup))
                    .collect::<Vec<_>>(),
                cfg.max_fails,
                cfg.fail_timeout.0,
            )),
            retry_tokens: Cell::new(RETRY_CAP),
            connect_timeout: cfg.connect_timeout.0,
            send_timeout: cfg.send_timeout.0,
            read_timeout: cfg.read_timeout.0,
        }
    }

    /// Server `i`'s metrics block.
    pub fn counters(&self, i: usize) -> &[std::sync::atomic::AtomicU64] {
        self.stats.upstream(self.base + i)
    }

    /// Publishes server `i`'s state as this cell sees it (up, requests in flight).
    pub fn publish(&self, i: usize, now: Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        let b = self.balancer.borrow();
        let c = self.counters(i);
        c[upstream_counter::DOWN].store(u64::from(!b.is_up(i, now)), Relaxed);
        c[upstream_counter::IN_FLIGHT].store(u64::from(b.in_flight(i)), Relaxed);
    }

    /// A request arrived: it earns retry tokens.
    pub fn request(&self) {
        self.retry_tokens
            .set((self.retry_tokens.get() + RETRY_EARN).min(RETRY_CAP));
    }

    /// Spends a retry token; false when the budget is used up.
    pub fn may_retry(&self) -> bool {
        let t = self.retry_tokens.get();
        if t < 1.0 {
            return false;
        }
        self.retry_tokens.set(t - 1.0);
        true
    }
}

impl Server {
    /// This server's block in the cell's upstream metrics.
    pub fn index(&self) -> usize {
        self.index
    }

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
                self.publish_idle(idle.len());
                return Some(sender);
            }
        }
        self.publish_idle(0);
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
        self.publish_idle(idle.len());
    }

    fn publish_idle(&self, n: usize) {
        self.stats.upstream(self.index)[upstream_counter::IDLE]
            .store(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// A new connection (its driver runs on the cell's event loop until it closes); writes to
    /// it fail after `send_timeout` without progress.
    pub async fn connect(
        &self,
        timeout: Duration,
        send_timeout: Duration,
    ) -> std::io::Result<Sender> {
        let connect = async {
            match &self.addr {
                ListenAddr::Tcp(a) => {
                    let s = tokio::net::TcpStream::connect(a).await?;
                    s.set_nodelay(true)?;
                    handshake(SendTimeout::new(s, send_timeout)).await
                }
                ListenAddr::Unix(p) => {
                    let s = tokio::net::UnixStream::connect(p).await?;
                    handshake(SendTimeout::new(s, send_timeout)).await
                }
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
    /// Every group of `cfgs`, its servers numbered in configuration order for the metrics.
    pub fn new(cfgs: &[UpstreamConfig], stats: CellStats<'static>) -> Self {
        let mut base = 0;
        Upstreams(
            cfgs.iter()
                .map(|c| {
                    let u = Rc::new(Upstream::new(c, base, stats));
                    base += c.servers.len();
                    u
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<Rc<Upstream>> {
        self.0.iter().find(|u| u.name == name).cloned()
    }
}
