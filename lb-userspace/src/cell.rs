//! A cell: one process pinned to one core, one current-thread tokio runtime, hyper on the
//! listeners the master handed down. Stops accepting on SIGTERM and drains; exits at once on SIGQUIT.
use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};

use crate::access_log::AccessLog;
use crate::config::{Config, ListenAddr};
use crate::http::{CellCtx, serve_connection};
use crate::metrics::MetricsRegion;
use crate::router::Router;
use crate::static_files::FileCache;

/// Environment variables the master sets for a cell.
pub mod env {
    pub const INDEX: &str = "PORTICO_CELL_INDEX";
    pub const CPU: &str = "PORTICO_CELL_CPU";
    pub const CONFIG: &str = "PORTICO_CELL_CONFIG";
}

/// First inherited descriptor: listeners (one per listen address, in order), then the metrics
/// region, then the readiness pipe.
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
    // The region lives as long as the process.
    let metrics: &'static MetricsRegion = Box::leak(Box::new(metrics));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(index, cfg, fds, metrics, ready))
}

async fn serve(
    index: usize,
    cfg: Config,
    fds: Vec<OwnedFd>,
    metrics: &'static MetricsRegion,
    ready: OwnedFd,
) -> anyhow::Result<()> {
    let log =
        AccessLog::open(&cfg.log.access_log, cfg.log.format).context("opening the access log")?;
    let ctx = Rc::new(CellCtx {
        router: Router::new(&cfg.routes),
        cache: FileCache::default(),
        limits: cfg.limits.clone(),
        stats: metrics.cell(index),
        log,
        draining: Cell::new(false),
    });
    let (drain_tx, drain_rx) = watch::channel(false);
    let active = Rc::new(Cell::new(0usize));
    let idle = Rc::new(Notify::new());

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    // Reloads are the master's business.
    let _hup = signal(SignalKind::hangup())?;

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
    // Tell the master we are accepting.
    let _ = rustix::io::write(&ready, b"R");
    drop(ready);
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
                Ok((stream, peer)) => self.spawn(stream, peer.ip().to_string()),
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
                Ok((stream, _)) => self.spawn(stream, "unix:".to_string()),
                Err(e) => self.accept_error(e).await,
            }
        }
    }

    fn spawn<S>(&self, stream: S, remote: String)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    {
        let ctx = self.ctx.clone();
        let drain = self.drain.clone();
        let active = self.active.clone();
        let idle = self.idle.clone();
        active.set(active.get() + 1);
        ctx.stats.connection_opened();
        tokio::task::spawn_local(async move {
            serve_connection(stream, remote, ctx.clone(), drain).await;
            ctx.stats.connection_closed();
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
