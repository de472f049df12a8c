//! A cell: one process pinned to one core, one current-thread tokio runtime, hyper on the
//! listeners the master handed down. Stops accepting on SIGTERM and drains; exits at once on SIGQUIT.
use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};

use crate::access_log::AccessLog;
use crate::config::{Config, ListenAddr};
use crate::http::{CellCtx, serve_connection};
use crate::metrics::MetricsRegion;
use crate::router::Router;
use crate::wsgi::Recycle;
use wsgi_worker::ConnInfo;

/// Exit status of a cell (or the import check) whose WSGI app failed to import.
pub const EXIT_APP: i32 = 3;

/// Environment variables the master sets for a cell.
pub mod env {
    pub const INDEX: &str = "PORTICO_CELL_INDEX";
    pub const CPU: &str = "PORTICO_CELL_CPU";
    pub const CONFIG: &str = "PORTICO_CELL_CONFIG";
    /// Set when the steering program's CELL_LOAD map is passed after the readiness pipe.
    pub const LOAD_MAP: &str = "PORTICO_CELL_LOAD_MAP";
}

/// First inherited descriptor: listeners (one per listen address, in order), then the metrics
/// region, then the readiness pipe, then (with eBPF steering) the CELL_LOAD map.
pub const FIRST_FD: i32 = 3;

pub fn run() -> anyhow::Result<()> {
    // If the master dies, so do we: cells never outlive the process that owns the listeners.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("prctl(PR_SET_PDEATHSIG)")?;
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        bail!("master is gone");
    }
    let index: usize = std::env::var(env::INDEX)
        .context("PORTICO_CELL_INDEX")?
        .parse()?;
    let cpu: usize = std::env::var(env::CPU)
        .context("PORTICO_CELL_CPU")?
        .parse()?;
    let cfg: Config =
        serde_json::from_str(&std::env::var(env::CONFIG).context("PORTICO_CELL_CONFIG")?)
            .context("cell configuration from the master")?;
    crate::init_logging(&cfg.log.level);

    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        tracing::warn!(cell = index, "could not pin to CPU {cpu}: {e}");
    }

    let n = cfg.server.listen.len();
    let mut fds = Vec::with_capacity(n);
    for i in 0..n {
        fds.push(crate::sys::inherited_fd(FIRST_FD + i as i32)?);
    }
    let metrics = MetricsRegion::open(crate::sys::inherited_fd(FIRST_FD + n as i32)?)?;
    let ready = crate::sys::inherited_fd(FIRST_FD + n as i32 + 1)?;
    let load = if std::env::var_os(env::LOAD_MAP).is_some() {
        let fd = crate::sys::inherited_fd(FIRST_FD + n as i32 + 2)?;
        Some(crate::cell_load::CellLoadSlot::map(&fd, index)?)
    } else {
        None
    };
    // The region lives as long as the process.
    let metrics: &'static MetricsRegion = Box::leak(Box::new(metrics));

    if cfg.has_wsgi()
        && let Err(e) = crate::sys::set_batch_scheduling()
    {
        tracing::debug!(cell = index, "{e}");
    }
    // The apps are imported before the cell reports ready: a cell that cannot import never
    // takes a connection, and the master backs off before trying again.
    let cells = cfg.cell_count(crate::master::usable_cpus().len());
    let observe = cfg.metrics.enabled.then(|| metrics.cell(index));
    let pools = match crate::wsgi::start_pools(&cfg, cells, observe) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(cell = index, "{e}");
            std::process::exit(EXIT_APP);
        }
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(index, cfg, fds, metrics, ready, pools, load))
}

/// `portico app-check`: imports every WSGI app once, in this throw-away process, so a broken
/// app stops `portico serve` with its traceback before anything is bound.
pub fn app_check() -> i32 {
    let cfg: Config = match std::env::var(env::CONFIG)
        .map_err(anyhow::Error::from)
        .and_then(|j| serde_json::from_str(&j).map_err(anyhow::Error::from))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portico app-check: {e:#}");
            return 1;
        }
    };
    match crate::wsgi::start_pools(&cfg, 1, None) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("{e}");
            EXIT_APP
        }
    }
}

/// This cell's `max_requests`: the configured value plus up to `max_requests_jitter`, chosen
/// per process so cells do not all recycle at once.
fn max_requests(cfg: &Config) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let Some(w) = cfg
        .routes
        .iter()
        .filter_map(|r| r.wsgi.as_ref())
        .filter(|w| w.max_requests > 0)
        .min_by_key(|w| w.max_requests)
    else {
        return 0;
    };
    if w.max_requests_jitter == 0 {
        return w.max_requests;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    w.max_requests + h.finish() % (w.max_requests_jitter + 1)
}

/// Resident memory of this process in bytes.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

fn mtimes(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Five times a second: the WSGI queue depth and busy threads, for `/metrics` and `/status`.
async fn publish_wsgi_gauges(ctx: Rc<CellCtx>) {
    use crate::metrics::slot;
    if ctx.router.wsgi_routes().next().is_none() {
        return;
    }
    let threads: usize = ctx.router.wsgi_routes().map(|w| w.pool.threads()).sum();
    ctx.stats.set(slot::WSGI_THREADS, threads as u64);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let (mut queued, mut busy) = (0, 0);
        for w in ctx.router.wsgi_routes() {
            queued += w.pool.queued();
            busy += w
                .pool
                .stats()
                .busy_threads
                .load(std::sync::atomic::Ordering::Relaxed);
        }
        ctx.stats.set(slot::WSGI_QUEUE_DEPTH, queued as u64);
        ctx.stats.set(slot::WSGI_THREADS_BUSY, busy as u64);
    }
}

/// Once a second: the recycling limits that are not per request.
async fn watch_recycling(ctx: Rc<CellCtx>, cfg: Config) {
    let wsgi: Vec<_> = cfg.routes.iter().filter_map(|r| r.wsgi.as_ref()).collect();
    if wsgi.is_empty() {
        return;
    }
    let min_of = |f: &dyn Fn(&crate::config::WsgiConfig) -> Option<Duration>| {
        wsgi.iter().filter_map(|w| f(w)).min()
    };
    let lifetime = min_of(&|w| w.lifetime.map(|d| d.0));
    let inactivity = min_of(&|w| w.inactivity_timeout.map(|d| d.0));
    let max_rss = wsgi
        .iter()
        .map(|w| w.max_rss)
        .filter(|m| *m > 0)
        .min()
        .map(|m| m << 20);
    let sources: Vec<PathBuf> = if wsgi.iter().any(|w| w.reload) {
        ctx.router
            .wsgi_routes()
            .flat_map(|w| w.pool.sources().iter().cloned())
            .collect()
    } else {
        Vec::new()
    };
    let seen = mtimes(&sources);
    let born = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if ctx.recycling.get() {
            return;
        }
        if lifetime.is_some_and(|l| born.elapsed() >= l) {
            ctx.recycle(Recycle::Lifetime);
        } else if inactivity.is_some_and(|i| ctx.last_wsgi.get().elapsed() >= i) {
            ctx.recycle(Recycle::Inactivity);
        } else if let Some(limit) = max_rss
            && rss_bytes().is_some_and(|r| r > limit)
        {
            tracing::warn!("resident memory above max_rss ({} MiB)", limit >> 20);
            ctx.recycle(Recycle::MaxRss);
        } else if !sources.is_empty() && mtimes(&sources) != seen {
            tracing::info!("a Python source file of the app changed");
            ctx.recycle(Recycle::SourceChange);
        }
    }
}

async fn serve(
    index: usize,
    cfg: Config,
    fds: Vec<OwnedFd>,
    metrics: &'static MetricsRegion,
    ready: OwnedFd,
    pools: Vec<Option<crate::wsgi::WsgiRoute>>,
    load: Option<crate::cell_load::CellLoadSlot>,
) -> anyhow::Result<()> {
    let log =
        AccessLog::open(&cfg.log.access_log, cfg.log.format).context("opening the access log")?;
    let ctx = Rc::new(CellCtx::new(
        Router::new(&cfg.routes, pools),
        cfg.limits.clone(),
        metrics.cell(index),
        log,
        ready,
        max_requests(&cfg),
        cfg.metrics.enabled,
        load,
    ));
    let (drain_tx, drain_rx) = watch::channel(false);
    let active = Rc::new(Cell::new(0usize));
    let idle = Rc::new(Notify::new());

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    // Reloads are the master's business.
    let _hup = signal(SignalKind::hangup())?;

    if ctx.load.is_some() {
        let tcp = cfg
            .server
            .listen
            .iter()
            .zip(&fds)
            .filter(|(a, _)| matches!(a, ListenAddr::Tcp(_)))
            .map(|(_, fd)| fd.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .context("dup a listener for the pending count")?;
        tokio::task::spawn_local(reconcile_pending(ctx.clone(), tcp, drain_rx.clone()));
    }
    for (addr, fd) in cfg.server.listen.iter().zip(fds) {
        let accept = Acceptor {
            ctx: ctx.clone(),
            drain: drain_rx.clone(),
            active: active.clone(),
            idle: idle.clone(),
        };
        match addr {
            ListenAddr::Tcp(_) => {
                let std = std::net::TcpListener::from(fd);
                std.set_nonblocking(true)?;
                let l = TcpListener::from_std(std)?;
                tokio::task::spawn_local(accept.tcp(l));
            }
            ListenAddr::Unix(_) => {
                let std = std::os::unix::net::UnixListener::from(fd);
                std.set_nonblocking(true)?;
                let l = UnixListener::from_std(std)?;
                tokio::task::spawn_local(accept.unix(l));
            }
        }
    }
    // Tell the master we are accepting (the pipe stays open for recycle requests).
    if let Some(fd) = ctx.control.borrow().as_ref() {
        let _ = rustix::io::write(fd, b"R");
    }
    tokio::task::spawn_local(watch_recycling(ctx.clone(), cfg.clone()));
    tokio::task::spawn_local(publish_wsgi_gauges(ctx.clone()));
    tracing::debug!(cell = index, pid = std::process::id(), "cell ready");

    let flusher = {
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                ctx.log.flush();
            }
        })
    };

    let immediate = tokio::select! {
        _ = term.recv() => false,
        _ = int.recv() => false,
        _ = quit.recv() => true,
    };
    if immediate {
        ctx.log.flush();
        std::process::exit(0);
    }
    // Graceful: stop accepting, let in-flight requests finish, close idle keep-alives.
    ctx.draining.set(true);
    let _ = drain_tx.send(true);
    let deadline = tokio::time::sleep(cfg.server.shutdown_timeout.0);
    tokio::pin!(deadline);
    loop {
        if active.get() == 0 {
            break;
        }
        tokio::select! {
            _ = idle.notified() => {}
            _ = &mut deadline => {
                tracing::warn!(cell = index, "shutdown_timeout reached with {} connection(s) open", active.get());
                break;
            }
            _ = quit.recv() => break,
        }
    }
    flusher.abort();
    ctx.log.flush();
    Ok(())
}

/// Every 100 ms, sets the cell's pending load to its TCP listeners' accept queues, so counts
/// of connections that never arrived (a SYN without its ACK) last no longer than that.
/// Stops when the cell drains, closing its copies of the listeners.
async fn reconcile_pending(ctx: Rc<CellCtx>, tcp: Vec<OwnedFd>, mut drain: watch::Receiver<bool>) {
    use std::os::fd::AsFd as _;
    let Some(load) = &ctx.load else { return };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = drain.changed() => return,
        }
        let queued: u64 = tcp
            .iter()
            .filter_map(|fd| crate::sys::listen_queue_len(fd.as_fd()).ok())
            .map(u64::from)
            .sum();
        load.reconcile_pending(queued);
    }
}

#[derive(Clone)]
struct Acceptor {
    ctx: Rc<CellCtx>,
    drain: watch::Receiver<bool>,
    active: Rc<Cell<usize>>,
    idle: Rc<Notify>,
}

impl Acceptor {
    async fn tcp(mut self, l: TcpListener) {
        loop {
            let accepted = tokio::select! {
                r = l.accept() => r,
                _ = self.drain.changed() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let local = stream.local_addr().ok();
                    let info = ConnInfo {
                        remote_ip: Some(peer.ip().to_canonical()),
                        remote_addr: peer.ip().to_canonical().to_string(),
                        remote_port: peer.port(),
                        local_addr: local.map(|l| l.ip().to_string()).unwrap_or_default(),
                        local_port: local.map_or(0, |l| l.port()),
                    };
                    self.spawn(stream, info)
                }
                Err(e) => self.accept_error(e).await,
            }
        }
    }

    async fn unix(mut self, l: UnixListener) {
        loop {
            let accepted = tokio::select! {
                r = l.accept() => r,
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
                    },
                ),
                Err(e) => self.accept_error(e).await,
            }
        }
    }

    fn spawn<S>(&self, stream: S, info: ConnInfo)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + crate::http::SendFile + Unpin + 'static,
    {
        let ctx = self.ctx.clone();
        let drain = self.drain.clone();
        let active = self.active.clone();
        let idle = self.idle.clone();
        active.set(active.get() + 1);
        ctx.stats.connection_opened();
        if let Some(l) = &ctx.load {
            // Only TCP listeners have the steering program.
            l.accepted(info.remote_ip.is_some());
        }
        tokio::task::spawn_local(async move {
            serve_connection(stream, Arc::new(info), ctx.clone(), drain).await;
            ctx.stats.connection_closed();
            if let Some(l) = &ctx.load {
                l.closed();
            }
            active.set(active.get() - 1);
            if active.get() == 0 {
                idle.notify_waiters();
            }
        });
    }

    async fn accept_error(&self, e: std::io::Error) {
        // EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning; the connection stays queued.
        tracing::warn!("accept failed: {e}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
