//! The master: owns the listeners (so queued connections survive any cell), the eBPF programs
//! and the metrics region; runs the supervisor's decisions about cells (spawn, drain, respawn,
//! replace one at a time on SIGHUP), and serves the admin endpoint.
pub mod admin;
mod apps;
mod ebpf_setup;
mod listeners;
mod nofile;
mod spawn;
mod state;
pub mod supervisor;
mod tls;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustix::process::{Pid, Signal, kill_process};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{Config, Overrides, SteeringPolicy};
use crate::metrics::{MetricsRegion, cell_counter};
use crate::proto::{EXIT_APP, READY, Recycle};
use apps::{apply_interface, note_paste_servers};
use listeners::{ListenerSet, bind_all, cell_listener, listener_dups};
pub use spawn::check_apps;
use state::MasterState;
use supervisor::{Action, Event, Restart, Supervisor};

/// `portico serve`: returns the process exit code.
pub fn run(cfg: Config, config_path: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<i32> {
    let nofile = nofile::raise();
    crate::privilege::before_serving(&cfg)?;
    if let Some(dir) = &cfg.server.chdir {
        std::env::set_current_dir(dir).with_context(|| format!("chdir {}", dir.display()))?;
    }
    note_paste_servers(&cfg);
    let mut cfg = cfg;
    if !apply_interface(&mut cfg, &overrides)? {
        return Ok(EXIT_APP);
    }
    if cfg.has_python() {
        tracing::info!("importing the Python application(s) once before starting cells");
        if !check_apps(&cfg)? {
            tracing::error!("the application failed to import (error above); not starting");
            return Ok(EXIT_APP);
        }
    }
    let cpus = usable_cpus();
    let cells = cfg.cell_count(cpus.len());
    nofile.log(cfg.limits.max_connections, cells);
    let cell_cpus: Vec<usize> = (0..cells).map(|i| cpus[i % cpus.len()]).collect();

    let listeners = bind_all(&cfg, cells)?;
    let metrics = MetricsRegion::create()?;

    let (steering, xdp, pins) = ebpf_setup::setup_ebpf(&cfg, &listeners, &cell_cpus)?;
    let policy = if steering.is_some() {
        cfg.ebpf.steering.label()
    } else {
        SteeringPolicy::Kernel.label()
    };
    let sup = Supervisor::new(&cell_cpus, steering.is_some(), Instant::now());
    let state = Rc::new(MasterState {
        metrics,
        cells: std::cell::Cell::new(cells),
        steering: std::cell::RefCell::new(steering),
        policy,
        xdp: std::cell::RefCell::new(xdp),
        pins: std::cell::RefCell::new(pins),
        tunnel_relay: std::cell::RefCell::new(ebpf_setup::setup_tunnel_relay(&cfg)),
        routes: std::cell::RefCell::new(cfg.routes.iter().map(|r| r.prefix.clone()).collect()),
        upstream_servers: std::cell::RefCell::new(upstream_labels(&cfg)),
        listeners: std::cell::RefCell::new(listener_dups(&listeners)),
        admin_token: admin::auth::at_start(&cfg)?.into(),
        certs: tls::cert_expiries(&cfg).into(),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let admin_addr = match cfg.server.admin.as_str() {
            "off" => None,
            a => Some(a.parse::<SocketAddr>().context("admin address")?),
        };
        if let Some(addr) = admin_addr {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind admin {addr}"))?;
            tracing::info!("admin on http://{}", l.local_addr()?);
            tokio::task::spawn_local(admin::serve(l, state.clone()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let cfg_json = serde_json::to_string(&cfg)?;
        let tickets = tls::start_tickets()?;
        let mut master = Master {
            cfg,
            cfg_json,
            config_path,
            overrides,
            exe: std::env::current_exe().context("locating the portico executable")?,
            listeners,
            state,
            sup,
            events: tx,
            app_failed: false,
            tickets,
        };
        // A cell that cannot even be started at startup stops `serve`.
        for action in master.sup.start() {
            if let Action::Spawn { worker } = action {
                let pid = master.spawn(worker)?;
                let more = master.sup.spawned(worker, pid, Instant::now());
                master.apply(more);
            }
        }
        master.supervise(rx).await
    })
}

/// The IO around the supervisor: processes, signals, listeners, steering maps, metrics.
struct Master {
    cfg: Config,
    cfg_json: String,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    exe: PathBuf,
    listeners: Vec<ListenerSet>,
    state: Rc<MasterState>,
    sup: Supervisor,
    events: mpsc::UnboundedSender<Event>,
    /// A cell's app failed to start before serving began (`Action::AppFailed`).
    app_failed: bool,
    /// The TLS session ticket keys every cell shares.
    tickets: Rc<crate::tls::TicketKeys>,
}

impl Master {
    /// Starts a cell for `worker`; its exit and its control-pipe bytes come back as events.
    fn spawn(&mut self, worker: usize) -> anyhow::Result<u32> {
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for l in &self.listeners {
            let fd = match l {
                ListenerSet::Tcp { per_cell, .. } => per_cell[worker].try_clone(),
                ListenerSet::Unix { fd, .. } => fd.try_clone(),
            }
            .context("dup listener")?;
            listeners.push(fd);
        }
        let metrics = OwnedFd::from(
            self.state
                .metrics
                .file()
                .try_clone()
                .context("dup metrics fd")?,
        );
        let (control_r, control_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .context("pipe for the cell's control channel")?;
        let load_map = match self
            .state
            .steering
            .borrow()
            .as_ref()
            .and_then(crate::ebpf::Steering::load_map)
        {
            Some(fd) => Some(fd.try_clone_to_owned().context("dup CELL_LOAD map fd")?),
            None => None,
        };
        let tunnel_maps = match self
            .state
            .tunnel_relay
            .borrow()
            .as_ref()
            .and_then(crate::ebpf::TunnelRelay::map_fds)
        {
            Some((s, p)) => Some((
                s.try_clone_to_owned().context("dup TUNNEL_SOCKS map fd")?,
                p.try_clone_to_owned().context("dup TUNNEL_PEERS map fd")?,
            )),
            None => None,
        };
        let tickets = if self.cfg.tls.is_empty() {
            None
        } else {
            Some(self.tickets.fd().context("dup the ticket keys' fd")?)
        };
        let mut child = spawn::cell(spawn::CellSpec {
            exe: &self.exe,
            cfg: &self.cfg,
            cfg_json: &self.cfg_json,
            index: worker,
            cpu: self.sup.cpu(worker),
            cells: self.state.cells(),
            listeners,
            metrics,
            control: control_w,
            load_map,
            tunnel_maps,
            tickets,
        })?;
        let pid = child.id().context("cell pid")?;
        let tx = self.events.clone();
        tokio::task::spawn_local(async move {
            let (how, app_failed) = match child.wait().await {
                Ok(st) => (describe(st), st.code() == Some(EXIT_APP)),
                Err(e) => (e.to_string(), false),
            };
            let _ = tx.send(Event::Exited {
                pid,
                how,
                app_failed,
            });
        });
        let tx = self.events.clone();
        tokio::task::spawn_local(async move {
            use tokio::io::AsyncReadExt as _;
            let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(control_r) else {
                return;
            };
            let mut b = [0u8; 1];
            if let Ok(1) = r.read(&mut b).await
                && b[0] == READY
            {
                let _ = tx.send(Event::Ready { pid });
            }
            // Then, for as long as the cell lives: recycle requests.
            while let Ok(1) = r.read(&mut b).await {
                if let Some(why) = Recycle::from_byte(b[0]) {
                    let _ = tx.send(Event::RecycleRequested { pid, why });
                }
            }
        });
        Ok(pid)
    }

    async fn supervise(&mut self, mut rx: mpsc::UnboundedReceiver<Event>) -> anyhow::Result<i32> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut quit = signal(SignalKind::quit())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                Some(ev) = rx.recv() => {
                    let actions = self.sup.handle(ev, Instant::now());
                    self.apply(actions);
                    if self.app_failed {
                        tracing::error!("the application failed to start (error above); not serving");
                        self.shutdown(&mut rx, false).await?;
                        return Ok(EXIT_APP);
                    }
                }
                _ = hup.recv() => self.reload(),
                _ = term.recv() => return self.shutdown(&mut rx, false).await,
                _ = int.recv() => return self.shutdown(&mut rx, false).await,
                _ = quit.recv() => return self.shutdown(&mut rx, true).await,
            }
        }
    }

    /// Carries out the supervisor's actions (and those that the results of spawns lead to).
    fn apply(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Spawn { worker } => match self.spawn(worker) {
                    Ok(pid) => queue.extend(self.sup.spawned(worker, pid, Instant::now())),
                    Err(e) => {
                        tracing::error!(cell = worker, "starting a cell failed: {e:#}");
                        queue.extend(self.sup.spawn_failed(worker));
                    }
                },
                Action::Drain { pid } => signal_pid(pid, Signal::TERM),
                Action::Steer { worker, live } => self.steer(worker, live),
                Action::Rebind { worker } => self.rebind(worker),
                Action::RespawnAfter {
                    worker,
                    generation,
                    delay,
                } => {
                    let tx = self.events.clone();
                    tokio::task::spawn_local(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(Event::RespawnDue { worker, generation });
                    });
                }
                Action::Up { worker, up } => self
                    .state
                    .metrics
                    .cell(worker)
                    .set(cell_counter::UP, u64::from(up)),
                Action::Pid { worker, pid } => self
                    .state
                    .metrics
                    .cell(worker)
                    .set(cell_counter::PID, u64::from(pid)),
                Action::Serving => self.log_listening(),
                Action::AppFailed => self.app_failed = true,
                Action::Restarted { worker, why } => {
                    let counter = match why {
                        Restart::Crash => cell_counter::RESTARTS_CRASH,
                        Restart::Reload => cell_counter::RESTARTS_RELOAD,
                        Restart::Recycle(r) => cell_counter::RESTARTS_RECYCLE + r.index(),
                    };
                    self.state.metrics.cell(worker).add(counter, 1);
                }
            }
        }
    }

    /// Says where `serve` listens, once every cell is ready (a cell whose app fails to start
    /// before that stops `serve`, and nothing was served).
    fn log_listening(&self) {
        listeners::log_listening(&self.cfg, &self.listeners, self.state.cells());
    }

    /// A fresh listener in the same reuseport group takes the dead cell's place for its
    /// respawn; closing the old one makes the kernel hand what was queued there to the
    /// steering program, which moves it to a live cell.
    fn rebind(&mut self, worker: usize) {
        let opts = listeners::ListenOpts::of(&self.cfg);
        for l in &mut self.listeners {
            let ListenerSet::Tcp { addr, per_cell } = l else {
                continue;
            };
            match cell_listener(&self.state, *addr, worker, opts) {
                // The old listener closes here (the dead cell's copy died with it).
                Ok(fd) => per_cell[worker] = fd,
                Err(e) => tracing::warn!(
                    cell = worker,
                    "keeping the dead cell's listener on {addr} (a fresh one failed: {e})"
                ),
            }
        }
    }

    /// Puts `worker`'s listeners in the steering maps (`live`) or takes them out.
    fn steer(&self, worker: usize, live: bool) {
        let mut st = self.state.steering.borrow_mut();
        let Some(s) = st.as_mut() else { return };
        let r = if live {
            let fds: Vec<BorrowedFd<'_>> = self
                .listeners
                .iter()
                .filter_map(|l| match l {
                    ListenerSet::Tcp { per_cell, .. } => per_cell.get(worker).map(|f| f.as_fd()),
                    ListenerSet::Unix { .. } => None,
                })
                .collect();
            s.fill(worker, &fds)
        } else {
            s.empty(worker)
        };
        if let Err(e) = r {
            tracing::error!(cell = worker, "steering map update: {e}");
        }
    }

    /// A reload changed `workers`: retire the cells above the new count (their listeners
    /// close, and the kernel moves what is queued there to live cells through the steering
    /// program), or bind listeners for new cells and start them.
    fn resize(&mut self, cells: usize) -> anyhow::Result<()> {
        let old = self.sup.workers();
        let cpus = usable_cpus();
        let mut new_cpus = self.sup.cpus();
        new_cpus.truncate(cells);
        new_cpus.extend((old..cells).map(|i| cpus[i % cpus.len()]));
        let opts = listeners::ListenOpts::of(&self.cfg);
        for l in &mut self.listeners {
            if let ListenerSet::Tcp { addr, per_cell } = l {
                for cell in per_cell.len()..cells {
                    per_cell.push(
                        cell_listener(&self.state, *addr, cell, opts)
                            .with_context(|| format!("bind {addr} for a new cell"))?,
                    );
                }
            }
        }
        let mut grow = self.sup.resize(&new_cpus, Instant::now());
        if cells < old {
            self.apply(std::mem::take(&mut grow));
            for l in &mut self.listeners {
                if let ListenerSet::Tcp { per_cell, .. } = l {
                    per_cell.truncate(cells);
                }
            }
            self.state
                .listeners
                .borrow_mut()
                .retain(|(_, cell, _)| *cell < cells);
            if let Some(s) = self.state.steering.borrow_mut().as_mut() {
                s.truncate(cells)?;
            }
        }
        if let Some(s) = self.state.steering.borrow_mut().as_mut() {
            s.set_cpus(&new_cpus)?;
        }
        self.state.cells.set(cells);
        if cells > old {
            self.apply(grow);
        }
        tracing::info!("workers: {old} -> {cells} cells");
        Ok(())
    }

    /// SIGHUP: read the configuration again and replace the cells one at a time.
    fn reload(&mut self) {
        if self.sup.reloading() {
            tracing::warn!("SIGHUP ignored: a reload is already in progress");
            return;
        }
        let mut cfg = match Config::resolve(self.config_path.as_deref(), &self.overrides) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload refused, keeping the running configuration:\n{e}");
                return;
            }
        };
        note_paste_servers(&cfg);
        match apply_interface(&mut cfg, &self.overrides) {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("reload refused, keeping the running configuration");
                return;
            }
            Err(e) => {
                tracing::error!("reload refused: {e:#}");
                return;
            }
        }
        let mut resize_to = None;
        if cfg.server.listen != self.cfg.server.listen {
            tracing::warn!(
                "reload: changes to server.listen need a restart; keeping the current addresses and workers"
            );
            cfg.server.listen.clone_from(&self.cfg.server.listen);
            cfg.server.workers = self.cfg.server.workers;
        } else if cfg.server.workers != self.cfg.server.workers {
            resize_to = Some(cfg.cell_count(usable_cpus().len()));
        }
        let listen_opts = (cfg.server.backlog, cfg.server.defer_accept);
        if listen_opts != (self.cfg.server.backlog, self.cfg.server.defer_accept) {
            // New listeners (a rebind, more workers) join the existing reuseport groups: one
            // setting for every socket of a group.
            tracing::warn!(
                "reload: changes to server.backlog and server.defer_accept need a restart; keeping the current ones"
            );
            cfg.server.backlog = self.cfg.server.backlog;
            cfg.server.defer_accept = self.cfg.server.defer_accept;
        }
        if cfg.server.admin != self.cfg.server.admin || cfg.ebpf != self.cfg.ebpf {
            tracing::warn!(
                "reload: changes to server.admin and [ebpf] need a restart; keeping the current ones"
            );
            cfg.server.admin.clone_from(&self.cfg.server.admin);
            cfg.ebpf = self.cfg.ebpf.clone();
        }
        match serde_json::to_string(&cfg) {
            Ok(j) => self.cfg_json = j,
            Err(e) => {
                tracing::error!("reload refused: {e}");
                return;
            }
        }
        *self.state.routes.borrow_mut() = cfg.routes.iter().map(|r| r.prefix.clone()).collect();
        *self.state.upstream_servers.borrow_mut() = upstream_labels(&cfg);
        *self.state.certs.borrow_mut() = tls::cert_expiries(&cfg);
        admin::auth::reload(&self.state.admin_token, &cfg);
        self.cfg = cfg;
        if self.state.tunnel_relay.borrow().is_none() {
            // A route that turned to relay = "sockmap": probe it now (cells started from here on
            // get its maps).
            *self.state.tunnel_relay.borrow_mut() = ebpf_setup::setup_tunnel_relay(&self.cfg);
        }
        if let Some(n) = resize_to
            && n != self.sup.workers()
            && let Err(e) = self.resize(n)
        {
            tracing::error!("reload: changing workers: {e:#}");
        }
        let actions = self.sup.handle(Event::Reload, Instant::now());
        self.apply(actions);
    }

    async fn shutdown(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Event>,
        immediate: bool,
    ) -> anyhow::Result<i32> {
        let sig = if immediate {
            Signal::KILL
        } else {
            Signal::TERM
        };
        let children: Vec<u32> = self.sup.children().collect();
        tracing::info!(
            "{} shutdown of {} cell(s)",
            if immediate { "immediate" } else { "graceful" },
            children.len()
        );
        for &pid in &children {
            signal_pid(pid, sig);
        }
        let deadline = tokio::time::Instant::now()
            + self.cfg.server.shutdown_timeout.0
            + Duration::from_secs(5);
        while self.sup.children().next().is_some() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Event::Exited { pid, .. })) => {
                    if let Some(worker) = self.sup.forget(pid)
                        && worker < self.state.cells()
                    {
                        self.state.metrics.cell(worker).set(cell_counter::UP, 0);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    for pid in self.sup.children() {
                        signal_pid(pid, Signal::KILL);
                    }
                    break;
                }
            }
        }
        for l in &self.listeners {
            if let ListenerSet::Unix { path, .. } = l {
                let _ = std::fs::remove_file(path);
            }
        }
        // Detach XDP and steering, then remove the pins.
        drop(self.state.xdp.borrow_mut().take());
        drop(self.state.steering.borrow_mut().take());
        drop(self.state.tunnel_relay.borrow_mut().take());
        drop(self.state.pins.borrow_mut().take());
        tracing::info!("stopped");
        Ok(0)
    }
}

/// (upstream, server) for every upstream server, in the order the cells number them.
fn upstream_labels(cfg: &Config) -> Vec<(String, String)> {
    cfg.upstreams
        .iter()
        .flat_map(|u| {
            u.servers
                .iter()
                .map(|s| (u.name.clone(), s.addr.to_string()))
        })
        .collect()
}

fn describe(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

fn signal_pid(pid: u32, sig: Signal) {
    if let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(p, sig);
    }
}

/// CPUs this process may run on (the affinity mask, as taskset or cgroups set it).
pub fn usable_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => {
            let cpus: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
                .filter(|&c| set.is_set(c))
                .collect();
            if cpus.is_empty() { vec![0] } else { cpus }
        }
        Err(_) => {
            (0..std::thread::available_parallelism().map_or(1, std::num::NonZero::get)).collect()
        }
    }
}
