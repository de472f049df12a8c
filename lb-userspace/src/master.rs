//! The master: owns the listeners (so queued connections survive any cell), the eBPF programs
//! and the metrics region; spawns one cell per core, respawns the ones that die, replaces them
//! one at a time on SIGHUP, and serves the admin endpoint.
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use command_fds::{CommandFdExt, FdMapping};
use rustix::process::{Pid, Signal, kill_process};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::admin;
use crate::cell;
use crate::config::{Config, EbpfMode, ListenAddr, Overrides, SteeringPolicy};
use crate::ebpf::{EbpfError, PinDir, Steering, XdpGuard};
use crate::metrics::{EbpfSnapshot, MetricsRegion, slot};
use crate::wsgi::Recycle;

/// Imports the WSGI apps once in a throw-away child (`portico app-check`), its stderr (the
/// traceback) passed through. Ok(false): the import failed.
pub fn check_apps(cfg: &Config) -> anyhow::Result<bool> {
    let exe = std::env::current_exe().context("locating the portico executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("app-check")
        .env(cell::env::CONFIG, serde_json::to_string(cfg)?)
        .stdin(std::process::Stdio::null());
    python_env(&mut cmd, cfg);
    let status = cmd.status().context("running the app import check")?;
    Ok(status.success())
}

/// Interpreter settings that must be in the environment before Python starts.
fn python_env(cmd: &mut std::process::Command, cfg: &Config) {
    let o = cfg.python_optimize();
    if o > 0 {
        cmd.env("PYTHONOPTIMIZE", o.to_string());
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A cell that lived this long before dying starts its back-off over.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Listening sockets for one listen address.
enum ListenerSet {
    /// One SO_REUSEPORT socket per cell.
    Tcp {
        addr: SocketAddr,
        per_cell: Vec<OwnedFd>,
    },
    /// One socket shared by every cell.
    Unix { path: PathBuf, fd: OwnedFd },
}

#[derive(Debug)]
enum Event {
    Ready {
        pid: u32,
    },
    Exited {
        pid: u32,
        status: std::io::Result<ExitStatus>,
    },
    Respawn {
        slot: usize,
        generation: u64,
    },
    /// A cell asks to be replaced (recycling limits, stuck thread, changed sources).
    Recycle {
        pid: u32,
        why: Recycle,
    },
}

/// A replacement in progress for one slot: the old cell serves until the new one is ready.
struct Replacing {
    old_pid: u32,
    old_gen: u64,
    /// None for a SIGHUP reload.
    why: Option<Recycle>,
}

struct Slot {
    cpu: usize,
    generation: u64,
    pid: Option<u32>,
    ready: bool,
    started: Instant,
    backoff: Duration,
    replacing: Option<Replacing>,
}

impl Slot {
    /// A slot for a cell on `cpu`, not started yet.
    fn new(cpu: usize) -> Self {
        Slot {
            cpu,
            generation: 0,
            pid: None,
            ready: false,
            started: Instant::now(),
            backoff: BACKOFF_MIN,
            replacing: None,
        }
    }
}

/// A reload in progress: cells still to replace, and the slot being replaced now.
struct Reload {
    queue: VecDeque<usize>,
    current: Option<usize>,
}

/// What the admin endpoint reads (and, for the blocklist, changes).
pub struct Shared {
    pub metrics: MetricsRegion,
    /// Cells now (changes when a reload changes `workers`).
    pub cells: std::cell::Cell<usize>,
    pub steering: RefCell<Option<Steering>>,
    /// The steering policy in effect (`kernel` when no program is attached).
    pub policy: &'static str,
    pub xdp: RefCell<Option<XdpGuard>>,
    /// The pin directory; dropping it removes the pins (clean shutdown).
    pub pins: RefCell<Option<PinDir>>,
    /// Route prefixes in configuration order: the `route` label (updated on reload).
    pub routes: RefCell<Vec<String>>,
    /// (listen address, cell, a duplicate of the listener) for accept-queue lengths.
    pub listeners: RefCell<Vec<(String, usize, OwnedFd)>>,
}

impl Shared {
    pub fn cells(&self) -> usize {
        self.cells.get()
    }

    /// Steering decisions, XDP counters and map sizes, read from the kernel now.
    pub fn ebpf_snapshot(&self) -> EbpfSnapshot {
        let cells = self.cells();
        let st = self.steering.borrow();
        let xdp = self.xdp.borrow();
        let mut map_entries = Vec::new();
        if let Some(s) = st.as_ref() {
            map_entries.extend(s.map_entries());
        }
        if let Some(x) = xdp.as_ref() {
            map_entries.extend(x.map_entries());
        }
        EbpfSnapshot {
            steering: st.as_ref().map(|s| s.snapshot(cells)).unwrap_or_default(),
            xdp: xdp.as_ref().map(|x| x.snapshot()).unwrap_or_default(),
            map_entries,
        }
    }
}

struct Master {
    cfg: Config,
    cfg_json: String,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    exe: PathBuf,
    listeners: Vec<ListenerSet>,
    shared: Rc<Shared>,
    slots: Vec<Slot>,
    /// pid -> (slot, generation) for every live child, current or draining.
    children: HashMap<u32, (usize, u64)>,
    events: mpsc::UnboundedSender<Event>,
    reload: Option<Reload>,
    /// Generations are unique across slots, so a retired cell's exit is never mistaken for
    /// the exit of a later cell in the same slot.
    next_gen: u64,
}

/// `portico serve`: returns the process exit code.
pub fn run(cfg: Config, config_path: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<i32> {
    raise_nofile_limit();
    if let Some(dir) = &cfg.server.chdir {
        std::env::set_current_dir(dir).with_context(|| format!("chdir {}", dir.display()))?;
    }
    if cfg.has_wsgi() {
        tracing::info!("importing the WSGI application(s) once before starting cells");
        if !check_apps(&cfg)? {
            tracing::error!(
                "the WSGI application failed to import (traceback above); not starting"
            );
            return Ok(cell::EXIT_APP);
        }
    }
    let cpus = usable_cpus();
    let cells = cfg.cell_count(cpus.len());
    let cell_cpus: Vec<usize> = (0..cells).map(|i| cpus[i % cpus.len()]).collect();

    let listeners = bind_all(&cfg, cells)?;
    let metrics = MetricsRegion::create()?;

    let (steering, xdp, pins) = setup_ebpf(&cfg, &listeners, &cell_cpus)?;
    let policy = if steering.is_some() {
        cfg.ebpf.steering.label()
    } else {
        SteeringPolicy::Kernel.label()
    };
    let shared = Rc::new(Shared {
        metrics,
        cells: std::cell::Cell::new(cells),
        steering: RefCell::new(steering),
        policy,
        xdp: RefCell::new(xdp),
        pins: RefCell::new(pins),
        routes: RefCell::new(cfg.routes.iter().map(|r| r.prefix.clone()).collect()),
        listeners: RefCell::new(listener_dups(&listeners)),
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
            tokio::task::spawn_local(admin::serve(l, shared.clone()));
        }
        for l in &listeners {
            match l {
                ListenerSet::Tcp { addr, .. } => {
                    tracing::info!("listening on http://{addr} ({cells} cells)")
                }
                ListenerSet::Unix { path, .. } => {
                    tracing::info!("listening on unix:{} ({cells} cells)", path.display())
                }
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let cfg_json = serde_json::to_string(&cfg)?;
        let mut master = Master {
            cfg,
            cfg_json,
            config_path,
            overrides,
            exe: std::env::current_exe().context("locating the portico executable")?,
            listeners,
            shared,
            slots: cell_cpus.iter().map(|&cpu| Slot::new(cpu)).collect(),
            children: HashMap::new(),
            events: tx,
            reload: None,
            next_gen: 0,
        };
        for i in 0..cells {
            master.spawn(i)?;
        }
        master.supervise(rx).await
    })
}

impl Master {
    fn spawn(&mut self, slot: usize) -> anyhow::Result<()> {
        let n = self.listeners.len() as i32;
        let mut mappings = Vec::with_capacity(self.listeners.len() + 2);
        for (j, l) in self.listeners.iter().enumerate() {
            let fd = match l {
                ListenerSet::Tcp { per_cell, .. } => per_cell[slot].try_clone(),
                ListenerSet::Unix { fd, .. } => fd.try_clone(),
            }
            .context("dup listener")?;
            mappings.push(FdMapping {
                parent_fd: fd,
                child_fd: cell::FIRST_FD + j as i32,
            });
        }
        let metrics_fd = OwnedFd::from(
            self.shared
                .metrics
                .file()
                .try_clone()
                .context("dup metrics fd")?,
        );
        mappings.push(FdMapping {
            parent_fd: metrics_fd,
            child_fd: cell::FIRST_FD + n,
        });
        let (ready_r, ready_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .context("pipe for cell readiness")?;
        mappings.push(FdMapping {
            parent_fd: ready_w,
            child_fd: cell::FIRST_FD + n + 1,
        });
        let load_map = match self
            .shared
            .steering
            .borrow()
            .as_ref()
            .and_then(|s| s.load_map())
        {
            Some(fd) => Some(fd.try_clone_to_owned().context("dup CELL_LOAD map fd")?),
            None => None,
        };
        let has_load = load_map.is_some();
        if let Some(fd) = load_map {
            mappings.push(FdMapping {
                parent_fd: fd,
                child_fd: cell::FIRST_FD + n + 2,
            });
        }

        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("cell")
            .env(cell::env::INDEX, slot.to_string())
            .env(cell::env::CPU, self.slots[slot].cpu.to_string())
            .env(cell::env::CONFIG, &self.cfg_json)
            .stdin(std::process::Stdio::null());
        if has_load {
            cmd.env(cell::env::LOAD_MAP, "1");
        }
        python_env(&mut cmd, &self.cfg);
        cmd.fd_mappings(mappings)
            .map_err(|e| anyhow::anyhow!("fd mapping: {e}"))?;
        let mut child = tokio::process::Command::from(cmd)
            .spawn()
            .context("spawning a cell")?;
        let pid = child.id().context("cell pid")?;
        self.next_gen += 1;
        let s = &mut self.slots[slot];
        s.generation = self.next_gen;
        s.pid = Some(pid);
        s.ready = false;
        s.started = Instant::now();
        self.shared.metrics.cell(slot).set(slot::PID, pid as u64);
        self.children.insert(pid, (slot, s.generation));

        let tx = self.events.clone();
        tokio::task::spawn_local(async move {
            let status = child.wait().await;
            let _ = tx.send(Event::Exited { pid, status });
        });
        let tx = self.events.clone();
        tokio::task::spawn_local(async move {
            use tokio::io::AsyncReadExt as _;
            let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r) else {
                return;
            };
            let mut b = [0u8; 1];
            if let Ok(1) = r.read(&mut b).await {
                let _ = tx.send(Event::Ready { pid });
            }
            // Then, for as long as the cell lives: recycle requests.
            while let Ok(1) = r.read(&mut b).await {
                if let Some(why) = Recycle::from_byte(b[0]) {
                    let _ = tx.send(Event::Recycle { pid, why });
                }
            }
        });
        Ok(())
    }

    async fn supervise(&mut self, mut rx: mpsc::UnboundedReceiver<Event>) -> anyhow::Result<i32> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut quit = signal(SignalKind::quit())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                Some(ev) = rx.recv() => self.on_event(ev)?,
                _ = hup.recv() => self.start_reload(true),
                _ = term.recv() => return self.shutdown(&mut rx, false).await,
                _ = int.recv() => return self.shutdown(&mut rx, false).await,
                _ = quit.recv() => return self.shutdown(&mut rx, true).await,
            }
        }
    }

    fn on_event(&mut self, ev: Event) -> anyhow::Result<()> {
        match ev {
            Event::Ready { pid } => {
                let Some(&(slot, generation)) = self.children.get(&pid) else {
                    return Ok(());
                };
                if self
                    .slots
                    .get(slot)
                    .is_none_or(|s| s.generation != generation)
                {
                    return Ok(());
                }
                self.slots[slot].ready = true;
                self.shared.metrics.cell(slot).set(slot::UP, 1);
                self.steer(slot, true);
                tracing::debug!(cell = slot, pid, "cell up");
                if let Some(rep) = self.slots[slot].replacing.take() {
                    // The replacement accepts on the same listener; now the old one may drain.
                    signal_pid(rep.old_pid, Signal::TERM);
                    let c = self.shared.metrics.cell(slot);
                    match rep.why {
                        None => c.add(slot::RESTARTS_RELOAD, 1),
                        Some(why) => {
                            let k = Recycle::ALL.iter().position(|r| *r == why).unwrap_or(0);
                            c.add(slot::RESTARTS_RECYCLE + k, 1);
                            tracing::info!(cell = slot, "cell recycled ({})", why.label());
                        }
                    }
                    if let Some(r) = &mut self.reload
                        && r.current == Some(slot)
                    {
                        r.current = None;
                        self.reload_step()?;
                    }
                }
            }
            Event::Recycle { pid, why } => {
                let Some(&(slot, generation)) = self.children.get(&pid) else {
                    return Ok(());
                };
                let Some(s) = self.slots.get(slot) else {
                    return Ok(());
                };
                if s.generation != generation || !s.ready || s.replacing.is_some() {
                    return Ok(());
                }
                if why == Recycle::SourceChange {
                    tracing::info!("reload: a Python source file changed");
                    self.start_reload(false);
                    return Ok(());
                }
                tracing::info!(cell = slot, pid, "recycling: {}", why.label());
                self.replace(slot, Some(why))?;
            }
            Event::Exited { pid, status } => {
                let Some((slot, generation)) = self.children.remove(&pid) else {
                    return Ok(());
                };
                let Some(s) = self.slots.get_mut(slot) else {
                    tracing::info!(cell = slot, pid, "retired cell finished draining");
                    return Ok(());
                };
                if s.generation != generation {
                    tracing::debug!(cell = slot, pid, "replaced cell finished draining");
                    return Ok(());
                }
                let how = match &status {
                    Ok(st) => describe(st),
                    Err(e) => e.to_string(),
                };
                s.pid = None;
                s.ready = false;
                self.shared.metrics.cell(slot).set(slot::UP, 0);
                self.shared.metrics.cell(slot).add(slot::RESTARTS_CRASH, 1);
                // A replacement that died: keep the old cell serving (and stop a reload).
                if let Some(rep) = s.replacing.take() {
                    tracing::error!(
                        cell = slot,
                        "replacement cell exited ({how}); the old cell keeps serving"
                    );
                    s.pid = Some(rep.old_pid);
                    s.generation = rep.old_gen;
                    s.ready = true;
                    self.shared.metrics.cell(slot).set(slot::UP, 1);
                    self.shared
                        .metrics
                        .cell(slot)
                        .set(slot::PID, rep.old_pid as u64);
                    if rep.why.is_none() {
                        tracing::error!("reload aborted");
                        self.reload = None;
                    }
                    self.steer(slot, true);
                    return Ok(());
                }
                // No new connection waits on a dead cell, and what is queued there moves to
                // the live cells.
                self.steer(slot, false);
                self.rebind(slot);
                let s = &mut self.slots[slot];
                let lived = s.started.elapsed();
                s.backoff = if lived >= STABLE_AFTER {
                    BACKOFF_MIN
                } else {
                    (s.backoff * 2).min(BACKOFF_MAX)
                };
                let delay = if lived >= STABLE_AFTER {
                    Duration::ZERO
                } else {
                    s.backoff
                };
                tracing::error!(
                    cell = slot,
                    pid,
                    "cell exited ({how}) after {:.1}s; respawning in {:?}",
                    lived.as_secs_f64(),
                    delay
                );
                let tx = self.events.clone();
                let generation = s.generation;
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(Event::Respawn { slot, generation });
                });
            }
            Event::Respawn { slot, generation } => {
                if self
                    .slots
                    .get(slot)
                    .is_some_and(|s| s.generation == generation)
                    && self.slots[slot].pid.is_none()
                    && let Err(e) = self.spawn(slot)
                {
                    tracing::error!(cell = slot, "respawn failed: {e:#}");
                    let tx = self.events.clone();
                    tokio::task::spawn_local(async move {
                        tokio::time::sleep(BACKOFF_MAX).await;
                        let _ = tx.send(Event::Respawn { slot, generation });
                    });
                }
            }
        }
        Ok(())
    }

    /// Starts a replacement cell for `slot`; the old one is told to drain once it is ready.
    fn replace(&mut self, slot: usize, why: Option<Recycle>) -> anyhow::Result<()> {
        let s = &mut self.slots[slot];
        let Some(old_pid) = s.pid else {
            return Ok(());
        };
        s.replacing = Some(Replacing {
            old_pid,
            old_gen: s.generation,
            why,
        });
        self.steer(slot, false);
        if let Err(e) = self.spawn(slot) {
            self.slots[slot].replacing = None;
            self.steer(slot, true);
            return Err(e);
        }
        Ok(())
    }

    /// After a crash, with steering on and another cell live: a fresh listener in the same
    /// reuseport group takes the dead cell's place for its respawn, and closing the old one
    /// makes the kernel hand what was queued there to the steering program, which moves it to
    /// a live cell (instead of it waiting out the respawn back-off). Without steering the old
    /// listener stays: it keeps the queue for the respawn.
    fn rebind(&mut self, slot: usize) {
        if self.shared.steering.borrow().is_none()
            || !self
                .slots
                .iter()
                .enumerate()
                .any(|(i, s)| i != slot && s.ready && s.pid.is_some())
        {
            return;
        }
        let backlog = self.cfg.server.backlog as i32;
        for l in &mut self.listeners {
            let ListenerSet::Tcp { addr, per_cell } = l else {
                continue;
            };
            match cell_listener(&self.shared, *addr, slot, backlog) {
                // The old listener closes here (the dead cell's copy died with it).
                Ok(fd) => per_cell[slot] = fd,
                Err(e) => tracing::warn!(
                    cell = slot,
                    "keeping the dead cell's listener on {addr} (a fresh one failed: {e})"
                ),
            }
        }
    }

    /// Puts `slot`'s listeners in the steering maps (`live`) or takes them out.
    fn steer(&self, slot: usize, live: bool) {
        let mut st = self.shared.steering.borrow_mut();
        let Some(s) = st.as_mut() else { return };
        let r = if live {
            let fds: Vec<BorrowedFd<'_>> = self
                .listeners
                .iter()
                .filter_map(|l| match l {
                    ListenerSet::Tcp { per_cell, .. } => per_cell.get(slot).map(|f| f.as_fd()),
                    ListenerSet::Unix { .. } => None,
                })
                .collect();
            s.fill(slot, &fds)
        } else {
            s.empty(slot)
        };
        if let Err(e) = r {
            tracing::error!(cell = slot, "steering map update: {e}");
        }
    }

    /// A reload changed `workers`: retire the cells above the new count (their listeners
    /// close, and the kernel moves what is queued there to live cells through the steering
    /// program), or bind listeners for new cells and start them.
    fn resize(&mut self, cells: usize) -> anyhow::Result<()> {
        let old = self.slots.len();
        if cells < old {
            for slot in cells..old {
                self.steer(slot, false);
                let s = &mut self.slots[slot];
                if let Some(pid) = s.pid {
                    signal_pid(pid, Signal::TERM);
                }
                if let Some(rep) = s.replacing.take() {
                    signal_pid(rep.old_pid, Signal::TERM);
                }
                self.shared.metrics.cell(slot).set(slot::UP, 0);
            }
            self.slots.truncate(cells);
            for l in &mut self.listeners {
                if let ListenerSet::Tcp { per_cell, .. } = l {
                    per_cell.truncate(cells);
                }
            }
            self.shared
                .listeners
                .borrow_mut()
                .retain(|(_, cell, _)| *cell < cells);
            if let Some(s) = self.shared.steering.borrow_mut().as_mut() {
                s.truncate(cells)?;
            }
        } else {
            let backlog = self.cfg.server.backlog as i32;
            for l in &mut self.listeners {
                if let ListenerSet::Tcp { addr, per_cell } = l {
                    for cell in per_cell.len()..cells {
                        per_cell.push(
                            cell_listener(&self.shared, *addr, cell, backlog)
                                .with_context(|| format!("bind {addr} for a new cell"))?,
                        );
                    }
                }
            }
            let cpus = usable_cpus();
            for i in old..cells {
                self.slots.push(Slot::new(cpus[i % cpus.len()]));
            }
        }
        let cpus: Vec<usize> = self.slots.iter().map(|s| s.cpu).collect();
        if let Some(s) = self.shared.steering.borrow_mut().as_mut() {
            s.set_cpus(&cpus)?;
        }
        self.shared.cells.set(cells);
        for slot in old..cells {
            self.spawn(slot)?;
        }
        tracing::info!("workers: {old} -> {cells} cells");
        Ok(())
    }

    /// SIGHUP (or changed sources with `reload = true`): read the configuration again and
    /// replace the cells one at a time.
    fn start_reload(&mut self, reread: bool) {
        if self.reload.is_some() {
            tracing::warn!("SIGHUP ignored: a reload is already in progress");
            return;
        }
        let resolved = if reread {
            Config::resolve(self.config_path.as_deref(), &self.overrides)
        } else {
            Ok(self.cfg.clone())
        };
        let mut cfg = match resolved {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload refused, keeping the running configuration:\n{e}");
                return;
            }
        };
        let mut resize_to = None;
        if cfg.server.listen != self.cfg.server.listen {
            tracing::warn!(
                "reload: changes to server.listen need a restart; keeping the current addresses and workers"
            );
            cfg.server.listen = self.cfg.server.listen.clone();
            cfg.server.workers = self.cfg.server.workers;
        } else if cfg.server.workers != self.cfg.server.workers {
            resize_to = Some(cfg.cell_count(usable_cpus().len()));
        }
        if cfg.server.admin != self.cfg.server.admin || cfg.ebpf != self.cfg.ebpf {
            tracing::warn!(
                "reload: changes to server.admin and [ebpf] need a restart; keeping the current ones"
            );
            cfg.server.admin = self.cfg.server.admin.clone();
            cfg.ebpf = self.cfg.ebpf.clone();
        }
        match serde_json::to_string(&cfg) {
            Ok(j) => self.cfg_json = j,
            Err(e) => {
                tracing::error!("reload refused: {e}");
                return;
            }
        }
        *self.shared.routes.borrow_mut() = cfg.routes.iter().map(|r| r.prefix.clone()).collect();
        self.cfg = cfg;
        if let Some(n) = resize_to
            && n != self.slots.len()
            && let Err(e) = self.resize(n)
        {
            tracing::error!("reload: changing workers: {e:#}");
        }
        tracing::info!(
            "reloading: replacing {} cells one at a time",
            self.slots.len()
        );
        self.reload = Some(Reload {
            queue: (0..self.slots.len()).collect(),
            current: None,
        });
        if let Err(e) = self.reload_step() {
            tracing::error!("reload: {e:#}");
            self.reload = None;
        }
    }

    fn reload_step(&mut self) -> anyhow::Result<()> {
        loop {
            let Some(r) = &mut self.reload else {
                return Ok(());
            };
            let Some(slot) = r.queue.pop_front() else {
                tracing::info!("reload complete");
                self.reload = None;
                return Ok(());
            };
            let s = &self.slots[slot];
            match (s.pid, s.ready, &s.replacing) {
                (Some(_), true, None) => {
                    r.current = Some(slot);
                    return self.replace(slot, None);
                }
                // A cell that is down, starting or being replaced picks up the new
                // configuration when its replacement spawns.
                _ => continue,
            }
        }
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
        tracing::info!(
            "{} shutdown of {} cell(s)",
            if immediate { "immediate" } else { "graceful" },
            self.children.len()
        );
        for &pid in self.children.keys() {
            signal_pid(pid, sig);
        }
        let deadline = tokio::time::Instant::now()
            + self.cfg.server.shutdown_timeout.0
            + Duration::from_secs(5);
        while !self.children.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Event::Exited { pid, .. })) => {
                    if let Some((slot, _)) = self.children.remove(&pid) {
                        self.shared.metrics.cell(slot).set(slot::UP, 0);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    for &pid in self.children.keys() {
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
        drop(self.shared.xdp.borrow_mut().take());
        drop(self.shared.steering.borrow_mut().take());
        drop(self.shared.pins.borrow_mut().take());
        tracing::info!("stopped");
        Ok(0)
    }
}

/// Loads steering (unless the policy is `kernel`) and the XDP guard (when configured). A
/// missing privilege or kernel feature falls back to plain SO_REUSEPORT with one warning
/// (an error with `mode = "on"`); another tool's XDP program on the interface is always an error.
fn setup_ebpf(
    cfg: &Config,
    listeners: &[ListenerSet],
    cpus: &[usize],
) -> anyhow::Result<(Option<Steering>, Option<XdpGuard>, Option<PinDir>)> {
    if cfg.ebpf.mode == EbpfMode::Off {
        tracing::info!("eBPF off ([ebpf] mode = \"off\"): plain SO_REUSEPORT");
        return Ok((None, None, None));
    }
    let policy = cfg.ebpf.steering.program_value();
    if policy.is_none() && cfg.ebpf.xdp.is_none() {
        tracing::info!("steering = \"kernel\": plain SO_REUSEPORT, no eBPF program");
        return Ok((None, None, None));
    }
    let groups: Vec<Vec<BorrowedFd<'_>>> = listeners
        .iter()
        .filter_map(|l| match l {
            ListenerSet::Tcp { per_cell, .. } => Some(per_cell.iter().map(|f| f.as_fd()).collect()),
            ListenerSet::Unix { .. } => None,
        })
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .filter_map(|l| match l {
            ListenerSet::Tcp { addr, .. } => Some(addr.port()),
            ListenerSet::Unix { .. } => None,
        })
        .collect();
    let instance = cfg
        .ebpf
        .instance
        .clone()
        .unwrap_or_else(|| match ports.first() {
            Some(p) => p.to_string(),
            None => format!("pid{}", std::process::id()),
        });
    let attempt = || -> Result<(Option<Steering>, Option<XdpGuard>, PinDir), EbpfError> {
        let pins = PinDir::create(&instance)?;
        let steering = match policy {
            Some(p) if !groups.is_empty() => Some(Steering::attach(&groups, cpus, p, &pins)?),
            _ => None,
        };
        let xdp = match &cfg.ebpf.xdp {
            Some(x) => {
                let mut g = XdpGuard::load(x, &ports, cpus, Some(&pins))?;
                g.attach(x)?;
                Some(g)
            }
            None => None,
        };
        Ok((steering, xdp, pins))
    };
    match attempt() {
        Ok((steering, xdp, pins)) => {
            if steering.is_some() {
                tracing::info!(
                    "eBPF steering attached (policy {}), maps pinned in {}",
                    cfg.ebpf.steering.label(),
                    pins.path().display()
                );
            }
            if let Some(x) = &xdp {
                tracing::info!(
                    "XDP guard attached to {} ({} mode)",
                    x.interface(),
                    x.mode()
                );
            }
            Ok((steering, xdp, Some(pins)))
        }
        Err(e) if e.is_conflict() => bail!("{e}"),
        Err(e) if cfg.ebpf.mode == EbpfMode::On => {
            bail!("eBPF required by [ebpf] mode = \"on\" but unavailable: {e}")
        }
        Err(e) => {
            let also = if cfg.ebpf.xdp.is_some() {
                " and no XDP guard"
            } else {
                ""
            };
            tracing::warn!("eBPF unavailable, serving with plain SO_REUSEPORT{also}: {e}");
            Ok((None, None, None))
        }
    }
}

/// A new listener for `cell` on `addr`, joining that address's reuseport group (and its
/// steering program); its duplicate replaces the cell's old one in the accept-queue readings.
fn cell_listener(
    shared: &Shared,
    addr: SocketAddr,
    cell: usize,
    backlog: i32,
) -> std::io::Result<OwnedFd> {
    let fd = OwnedFd::from(tcp_listener(addr, backlog)?);
    let name = addr.to_string();
    let mut dups = shared.listeners.borrow_mut();
    dups.retain(|(a, c, _)| !(*c == cell && *a == name));
    dups.push((name, cell, fd.try_clone()?));
    Ok(fd)
}

fn listener_dups(listeners: &[ListenerSet]) -> Vec<(String, usize, OwnedFd)> {
    let mut out = Vec::new();
    for l in listeners {
        if let ListenerSet::Tcp { addr, per_cell } = l {
            for (cell, fd) in per_cell.iter().enumerate() {
                if let Ok(dup) = fd.try_clone() {
                    out.push((addr.to_string(), cell, dup));
                }
            }
        }
    }
    out
}

fn describe(st: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

fn signal_pid(pid: u32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid as i32) {
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
        Err(_) => (0..std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1))
            .collect(),
    }
}

/// Raises RLIMIT_NOFILE to the hard limit: every keep-alive connection is a descriptor.
fn raise_nofile_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let new = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, new) {
            tracing::warn!("could not raise RLIMIT_NOFILE: {e}");
        }
    }
}

fn bind_all(cfg: &Config, cells: usize) -> anyhow::Result<Vec<ListenerSet>> {
    let backlog = cfg.server.backlog as i32;
    let mut out = Vec::new();
    for addr in &cfg.server.listen {
        match addr {
            ListenAddr::Tcp(a) => {
                // Refuse a port someone else holds, even one who also set SO_REUSEPORT.
                if a.port() != 0 {
                    std::net::TcpListener::bind(a).with_context(|| format!("bind {a}"))?;
                }
                let mut per_cell = Vec::with_capacity(cells);
                let mut bound = *a;
                for _ in 0..cells {
                    let s =
                        tcp_listener(bound, backlog).with_context(|| format!("bind {bound}"))?;
                    if bound.port() == 0 {
                        bound = s.local_addr()?.as_socket().context("local address")?;
                    }
                    per_cell.push(OwnedFd::from(s));
                }
                out.push(ListenerSet::Tcp {
                    addr: bound,
                    per_cell,
                });
            }
            ListenAddr::Unix(path) => {
                if path.exists() {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        bail!(
                            "bind unix:{}: another server is listening there",
                            path.display()
                        );
                    }
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing stale socket {}", path.display()))?;
                }
                let s = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
                s.bind(&socket2::SockAddr::unix(path)?)
                    .with_context(|| format!("bind unix:{}", path.display()))?;
                s.listen(backlog)?;
                out.push(ListenerSet::Unix {
                    path: path.clone(),
                    fd: OwnedFd::from(s),
                });
            }
        }
    }
    Ok(out)
}

fn tcp_listener(addr: SocketAddr, backlog: i32) -> std::io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per connection.
    s.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s)
}
