//! A cell: one process pinned to one core, one current-thread tokio runtime, hyper on the
//! listeners the master handed down. Stops accepting on SIGTERM and drains; exits at once on SIGQUIT.
mod accept;
pub mod access_log;
pub mod asgi;
pub mod body;
pub mod conn;
mod conn_limit;
pub mod conn_state;
pub mod context;
pub mod dispatch;
pub mod framing;
pub mod head;
pub mod http2;
pub mod proxy;
mod recycling;
pub mod router;
pub mod static_files;
pub mod tls;
pub mod tunnel;
pub mod wsgi;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::cell::access_log::AccessLog;
use crate::cell::context::CellCtx;
use crate::cell::router::Router;
use crate::config::{Config, ListenAddr};
use crate::metrics::MetricsRegion;
use crate::proto::{EXIT_APP, FdLayout, env};

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
    let cells: usize = std::env::var(env::CELLS)
        .context("PORTICO_CELLS")?
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

    let layout = FdLayout {
        listeners: cfg.server.listen.len(),
    };
    let mut fds = Vec::with_capacity(layout.listeners);
    for i in 0..layout.listeners {
        fds.push(crate::sys::inherited_fd(layout.listener(i))?);
    }
    let metrics = MetricsRegion::open(crate::sys::inherited_fd(layout.metrics())?)?;
    let control = crate::sys::inherited_fd(layout.control())?;
    let load = if std::env::var_os(env::LOAD_MAP).is_some() {
        let fd = crate::sys::inherited_fd(layout.load_map())?;
        Some(crate::ebpf::cell_load::CellLoadEntry::map(&fd, index)?)
    } else {
        None
    };
    let tunnel_maps = if std::env::var_os(env::TUNNEL_MAPS).is_some() {
        let socks = crate::sys::inherited_fd(layout.tunnel_socks())?;
        let peers = crate::sys::inherited_fd(layout.tunnel_peers())?;
        match crate::ebpf::TunnelMaps::open(socks, peers) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(
                    cell = index,
                    "sockmap relay maps: {e}; those tunnels are copied"
                );
                None
            }
        }
    } else {
        None
    };
    // The region lives as long as the process.
    let metrics: &'static MetricsRegion = Box::leak(Box::new(metrics));
    // Opened while the cell may still write where the master can: after the drop below, the
    // file stays writable through this descriptor.
    let log =
        AccessLog::open(&cfg.log.access_log, cfg.log.format).context("opening the access log")?;
    // Private keys are often readable by root only: loaded before the drop, like the log.
    let tls = tls_listeners(&cfg, layout, metrics.cell(index))?;
    // Everything inherited or opened: give up the master's privileges before any app code.
    // A cell that cannot drop them never serves (EXIT_APP: the master stops at startup).
    let dropped = match crate::privilege::identity(&cfg)
        .and_then(|id| crate::privilege::drop_privileges(id.as_ref()))
    {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(cell = index, "dropping privileges: {e}");
            std::process::exit(EXIT_APP);
        }
    };
    tracing::debug!(cell = index, ?dropped, "privileges dropped");
    // A change of user clears the parent-death signal: set it again, and look again.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("prctl(PR_SET_PDEATHSIG)")?;
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        bail!("master is gone");
    }

    if cfg.has_python()
        && let Err(e) = crate::sys::set_batch_scheduling()
    {
        tracing::debug!(cell = index, "{e}");
    }
    // The apps are imported before the cell reports ready: a cell that cannot import never
    // takes a connection, and the master backs off before trying again.
    let observe = cfg.metrics.enabled.then(|| metrics.cell(index));
    let pools = match wsgi::start_pools(&cfg, cells, observe) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(cell = index, "{e}");
            std::process::exit(EXIT_APP);
        }
    };
    let asgi_apps = match asgi::start_apps(&cfg, observe) {
        Ok(a) => a,
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
    local.block_on(
        &rt,
        serve(
            index,
            cfg,
            fds,
            metrics,
            (control, log),
            (pools, asgi_apps),
            (load, tls),
            tunnel_maps,
        ),
    )
}

/// The TLS side of each listener (None for a plain one), in listener order, with the master's
/// shared ticket keys when it passed them.
fn tls_listeners(
    cfg: &Config,
    layout: FdLayout,
    stats: crate::metrics::CellStats<'static>,
) -> anyhow::Result<Vec<Option<Rc<tls::TlsListener>>>> {
    let tickets = if std::env::var_os(env::TICKETS).is_some() {
        let fd = crate::sys::inherited_fd(layout.tickets())?;
        Some(std::sync::Arc::new(crate::tls::SharedTicketer::open(fd)?))
    } else {
        None
    };
    cfg.server
        .listen
        .iter()
        .map(|addr| {
            cfg.tls
                .iter()
                .find(|t| &t.listen == addr)
                .map(|t| tls::TlsListener::new(t, tickets.clone(), stats).map(Rc::new))
                .transpose()
        })
        .collect()
}

/// `portico app-check`: imports every WSGI and ASGI app once, in this throw-away process, so a
/// broken app stops `portico serve` with its traceback before anything is bound. The ASGI
/// lifespan runs in the cells only. `detect`: print `asgi` or `wsgi` for the
/// WSGI route at `/` instead (`--interface auto`).
pub fn app_check(detect: bool) -> i32 {
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
    // The import runs app code: as the cells' account, without capabilities, like a cell.
    // (`portico check` by a user who cannot switch accounts imports as that user.)
    if let Err(e) = crate::privilege::identity(&cfg).and_then(|id| {
        crate::privilege::drop_privileges(id.filter(crate::privilege::can_become).as_ref())
    }) {
        eprintln!("portico app-check: dropping privileges: {e}");
        return 1;
    }
    if detect {
        return match detect_interface(&cfg) {
            Ok(asgi) => {
                println!("{}", if asgi { "asgi" } else { "wsgi" });
                0
            }
            Err(e) => {
                eprintln!("{e}");
                EXIT_APP
            }
        };
    }
    let checked = wsgi::start_pools(&cfg, 1, None).and_then(|_| asgi::import_apps(&cfg));
    match checked {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            EXIT_APP
        }
    }
}

/// Imports the app of the WSGI route at `/` (the command line's APP) and tells whether it is
/// an ASGI app.
fn detect_interface(cfg: &Config) -> Result<bool, wsgi_worker::AppError> {
    let Some(w) = cfg
        .routes
        .iter()
        .find(|r| r.prefix == "/")
        .and_then(|r| r.wsgi.as_ref())
    else {
        return Ok(false);
    };
    let Some(spec) = w.spec() else {
        return Ok(false);
    };
    wsgi_worker::asgi::detect(
        &spec,
        &wsgi_worker::LoadPaths {
            base_dir: w.chdir.as_deref().unwrap_or(std::path::Path::new(".")),
            python_path: &w.python_path,
            venv: w.venv.as_deref(),
        },
    )
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site, in the cell's startup; each argument is an inherited part"
)]
async fn serve(
    index: usize,
    cfg: Config,
    fds: Vec<OwnedFd>,
    metrics: &'static MetricsRegion,
    (control, log): (OwnedFd, AccessLog),
    (pools, asgi_apps): (Vec<Option<wsgi::WsgiRoute>>, Vec<Option<asgi::AsgiRoute>>),
    (load, tls): (
        Option<crate::ebpf::cell_load::CellLoadEntry>,
        Vec<Option<Rc<tls::TlsListener>>>,
    ),
    tunnel_maps: Option<crate::ebpf::TunnelMaps>,
) -> anyhow::Result<()> {
    let upstreams = proxy::pool::Upstreams::new(&cfg.upstreams, metrics.cell(index));
    proxy::health::start(&upstreams, &cfg.upstreams);
    let mut ctx = CellCtx::new(
        Router::new(&cfg.routes, pools, asgi_apps, &upstreams),
        cfg.limits.clone(),
        metrics.cell(index),
        log,
        control,
        recycling::max_requests(&cfg),
        cfg.metrics.enabled,
        load,
        tunnel_maps,
    );
    ctx.redirect_https = cfg.server.redirect_https.clone();
    let ctx = Rc::new(ctx);
    let (drain_tx, drain_rx) = watch::channel(false);
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let max_conns = cfg
        .limits
        .max_connections
        .resolve(nofile.unwrap_or(u64::MAX));
    let conns = Rc::new(conn_limit::ConnCount::new(
        max_conns,
        ctx.stats,
        ctx.load.as_ref(),
    ));

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
    for ((addr, fd), tls) in cfg.server.listen.iter().zip(fds).zip(tls) {
        let accept = accept::Acceptor {
            ctx: ctx.clone(),
            drain: drain_rx.clone(),
            conns: conns.clone(),
            h2c: cfg.server.h2c,
            tls,
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
        let _ = rustix::io::write(fd, &[crate::proto::READY]);
    }
    tokio::task::spawn_local(recycling::watch(ctx.clone(), cfg.clone()));
    tokio::task::spawn_local(recycling::publish_wsgi_gauges(ctx.clone()));
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
        if conns.open() == 0 {
            break;
        }
        tokio::select! {
            _ = conns.idle.notified() => {}
            _ = &mut deadline => {
                tracing::warn!(cell = index, "shutdown_timeout reached with {} connection(s) open", conns.open());
                break;
            }
            _ = quit.recv() => break,
        }
    }
    flusher.abort();
    // The ASGI apps' lifespan shutdown, once their requests are done.
    for a in ctx.router.asgi_routes() {
        a.app.shutdown();
    }
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
