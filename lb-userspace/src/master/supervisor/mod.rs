//! The supervisor: every decision about cell processes (back-off after a crash, replacing one
//! cell at a time on reload or recycle, retiring cells when `workers` shrinks) as a sans-IO
//! state machine. It takes events and returns actions; `Master::apply` (master/mod.rs) carries
//! them out.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::proto::Recycle;

/// First respawn delay after a crash; doubles per crash up to `BACKOFF_MAX`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A cell that lived this long before dying starts its back-off over.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Something that happened to the cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A cell wrote its readiness byte: it accepts connections.
    Ready { pid: u32 },
    /// A cell process ended (`how`: its exit status, for the log; `app_failed`: it exited with
    /// `EXIT_APP`, its app failed to import or start).
    Exited {
        pid: u32,
        how: String,
        app_failed: bool,
    },
    /// A cell asks to be replaced (recycling limits, stuck thread, changed sources).
    RecycleRequested { pid: u32, why: Recycle },
    /// A respawn delay chosen earlier has passed.
    RespawnDue { worker: usize, generation: u64 },
    /// Replace every cell, one at a time (SIGHUP; changed sources arrive as `RecycleRequested`
    /// with `Recycle::SourceChange`).
    Reload,
}

/// Why a cell was restarted: the `reason` label of `portico_cell_restarts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Crash,
    Reload,
    Recycle(Recycle),
}

/// What the master must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a cell process for this worker; report the result with `spawned` or `spawn_failed`.
    Spawn { worker: usize },
    /// Ask a cell to drain and exit (SIGTERM).
    Drain { pid: u32 },
    /// Put this worker's listeners in the steering maps (`live`) or take them out.
    Steer { worker: usize, live: bool },
    /// After a crash: a fresh listener in the same reuseport group, so what was queued on the
    /// dead cell's listener migrates to live cells instead of waiting out the back-off.
    Rebind { worker: usize },
    /// Send `RespawnDue` after this delay.
    RespawnAfter {
        worker: usize,
        generation: u64,
        delay: Duration,
    },
    /// The worker's `portico_cell_up` gauge.
    Up { worker: usize, up: bool },
    /// The worker's pid (for /metrics and /status).
    Pid { worker: usize, pid: u32 },
    /// Count a restart of this worker.
    Restarted { worker: usize, why: Restart },
    /// Every worker has had a ready cell for the first time: `serve` is serving.
    Serving,
    /// A cell's app failed to start before `serve` was serving (a `lifespan.startup.failed`):
    /// stop every cell and exit with `EXIT_APP`, as an import error does.
    AppFailed,
}

/// A replacement in progress for one worker: the old cell serves until the new one is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Replacing {
    old_pid: u32,
    old_gen: u64,
    /// The restart it counts as (`Reload`, or `Recycle(SourceChange)` for a reload that
    /// changed sources started).
    why: Restart,
    /// Part of a reload: a replacement that fails stops the reload.
    by_reload: bool,
}

/// One configured worker: a CPU, and the cell process that currently serves as it.
#[derive(Debug, Clone)]
struct Worker {
    cpu: usize,
    /// The generation of the cell process now in this place (unique across workers).
    generation: u64,
    pid: Option<u32>,
    ready: bool,
    started: Instant,
    backoff: Duration,
    replacing: Option<Replacing>,
}

impl Worker {
    fn new(cpu: usize, now: Instant) -> Self {
        Worker {
            cpu,
            generation: 0,
            pid: None,
            ready: false,
            started: now,
            backoff: BACKOFF_MIN,
            replacing: None,
        }
    }
}

/// A reload in progress: workers still to replace, and the one being replaced now.
#[derive(Debug)]
struct Reload {
    queue: VecDeque<usize>,
    current: Option<usize>,
    /// Workers whose cell was starting or being replaced when their turn came: that cell was
    /// spawned with the old configuration, so it is replaced once it is ready.
    deferred: Vec<usize>,
    /// What the restarts count as.
    why: Restart,
}

#[derive(Debug)]
pub struct Supervisor {
    workers: Vec<Worker>,
    /// pid -> (worker, generation) for every live child, current or draining.
    children: HashMap<u32, (usize, u64)>,
    reload: Option<Reload>,
    /// Generations are unique across workers, so a retired cell's exit is never mistaken for
    /// the exit of a later cell in the same place.
    next_gen: u64,
    /// Steering programs are attached (listeners can be rebound after a crash).
    steering: bool,
    /// Every worker has had a ready cell once (`Action::Serving` was given).
    serving: bool,
}

impl Supervisor {
    /// One worker per entry of `cpus`, none started yet: `start()` spawns them.
    pub fn new(cpus: &[usize], steering: bool, now: Instant) -> Self {
        Supervisor {
            workers: cpus.iter().map(|&c| Worker::new(c, now)).collect(),
            children: HashMap::new(),
            reload: None,
            next_gen: 0,
            steering,
            serving: false,
        }
    }

    /// Spawns every worker.
    pub fn start(&self) -> Vec<Action> {
        (0..self.workers.len())
            .map(|worker| Action::Spawn { worker })
            .collect()
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The CPU each worker is pinned to.
    pub fn cpus(&self) -> Vec<usize> {
        self.workers.iter().map(|w| w.cpu).collect()
    }

    pub fn cpu(&self, worker: usize) -> usize {
        self.workers[worker].cpu
    }

    /// Every live child (current, draining or retired): what shutdown signals and waits for.
    pub fn children(&self) -> impl Iterator<Item = u32> + '_ {
        self.children.keys().copied()
    }

    /// A child exited during shutdown: forget it; returns its worker.
    pub fn forget(&mut self, pid: u32) -> Option<usize> {
        self.children.remove(&pid).map(|(w, _)| w)
    }

    pub fn reloading(&self) -> bool {
        self.reload.is_some()
    }

    /// The IO layer started a cell for `worker` (after `Action::Spawn`).
    pub fn spawned(&mut self, worker: usize, pid: u32, now: Instant) -> Vec<Action> {
        self.next_gen += 1;
        let w = &mut self.workers[worker];
        w.generation = self.next_gen;
        w.pid = Some(pid);
        w.ready = false;
        w.started = now;
        self.children.insert(pid, (worker, w.generation));
        vec![Action::Pid { worker, pid }]
    }

    /// The IO layer could not start a cell for `worker`.
    pub fn spawn_failed(&mut self, worker: usize) -> Vec<Action> {
        if let Some(rep) = self.workers[worker].replacing.take() {
            self.keep_old(worker, rep);
            return vec![Action::Steer { worker, live: true }];
        }
        vec![Action::RespawnAfter {
            worker,
            generation: self.workers[worker].generation,
            delay: BACKOFF_MAX,
        }]
    }

    /// A replacement failed: the old cell it was to replace keeps serving, and a reload stops
    /// here.
    fn keep_old(&mut self, worker: usize, rep: Replacing) {
        let w = &mut self.workers[worker];
        w.pid = Some(rep.old_pid);
        w.generation = rep.old_gen;
        w.ready = true;
        if rep.by_reload {
            tracing::error!("reload aborted");
            self.reload = None;
        }
    }

    pub fn handle(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        match ev {
            Event::Ready { pid } => self.ready(pid),
            Event::RecycleRequested { pid, why } => self.recycle_requested(pid, why),
            Event::Exited {
                pid,
                how,
                app_failed,
            } => {
                if app_failed && !self.serving && self.children.remove(&pid).is_some() {
                    tracing::error!(pid, "a cell could not start the application ({how})");
                    return vec![Action::AppFailed];
                }
                self.exited(pid, &how, now)
            }
            Event::RespawnDue { worker, generation } => {
                let due = self
                    .workers
                    .get(worker)
                    .is_some_and(|w| w.generation == generation && w.pid.is_none());
                if due {
                    vec![Action::Spawn { worker }]
                } else {
                    Vec::new()
                }
            }
            Event::Reload => self.start_reload(Restart::Reload),
        }
    }

    /// The live worker for `pid`, if it is the current cell of its worker.
    fn current(&self, pid: u32) -> Option<usize> {
        let &(worker, generation) = self.children.get(&pid)?;
        self.workers
            .get(worker)
            .is_some_and(|w| w.generation == generation)
            .then_some(worker)
    }

    fn ready(&mut self, pid: u32) -> Vec<Action> {
        let Some(worker) = self.current(pid) else {
            return Vec::new();
        };
        let w = &mut self.workers[worker];
        w.ready = true;
        let mut out = vec![
            Action::Up { worker, up: true },
            Action::Steer { worker, live: true },
        ];
        tracing::debug!(cell = worker, pid, "cell up");
        if let Some(rep) = w.replacing.take() {
            // The replacement accepts on the same listener; now the old one may drain.
            out.push(Action::Drain { pid: rep.old_pid });
            if !rep.by_reload
                && let Restart::Recycle(r) = rep.why
            {
                tracing::info!(cell = worker, "cell recycled ({})", r.label());
            }
            out.push(Action::Restarted {
                worker,
                why: rep.why,
            });
            if let Some(r) = &mut self.reload
                && r.current == Some(worker)
            {
                r.current = None;
            }
        }
        // The next cell of a reload (this one, if its turn came while it was starting).
        if self.reload.as_ref().is_some_and(|r| r.current.is_none()) {
            out.extend(self.reload_step());
        }
        if !self.serving && self.workers.iter().all(|w| w.ready) {
            self.serving = true;
            out.push(Action::Serving);
        }
        out
    }

    fn recycle_requested(&mut self, pid: u32, why: Recycle) -> Vec<Action> {
        let Some(worker) = self.current(pid) else {
            return Vec::new();
        };
        let w = &self.workers[worker];
        if !w.ready || w.replacing.is_some() {
            return Vec::new();
        }
        if why == Recycle::SourceChange {
            tracing::info!("reload: a Python source file changed");
            return self.start_reload(Restart::Recycle(Recycle::SourceChange));
        }
        tracing::info!(cell = worker, pid, "recycling: {}", why.label());
        self.replace(worker, Restart::Recycle(why), false)
    }

    fn exited(&mut self, pid: u32, how: &str, now: Instant) -> Vec<Action> {
        let Some((worker, generation)) = self.children.remove(&pid) else {
            return Vec::new();
        };
        let steering = self.steering;
        let others_live = self
            .workers
            .iter()
            .enumerate()
            .any(|(i, w)| i != worker && w.ready && w.pid.is_some());
        let Some(w) = self.workers.get_mut(worker) else {
            tracing::info!(cell = worker, pid, "retired cell finished draining");
            return Vec::new();
        };
        if w.generation != generation {
            tracing::debug!(cell = worker, pid, "replaced cell finished draining");
            return Vec::new();
        }
        w.pid = None;
        w.ready = false;
        let mut out = vec![
            Action::Up { worker, up: false },
            Action::Restarted {
                worker,
                why: Restart::Crash,
            },
        ];
        // A replacement that died: keep the old cell serving (and stop a reload).
        if let Some(rep) = w.replacing.take() {
            tracing::error!(
                cell = worker,
                "replacement cell exited ({how}); the old cell keeps serving"
            );
            let old_pid = rep.old_pid;
            self.keep_old(worker, rep);
            out.push(Action::Up { worker, up: true });
            out.push(Action::Pid {
                worker,
                pid: old_pid,
            });
            out.push(Action::Steer { worker, live: true });
            return out;
        }
        // No new connection waits on a dead cell, and what is queued there moves to the live
        // cells.
        out.push(Action::Steer {
            worker,
            live: false,
        });
        if steering && others_live {
            out.push(Action::Rebind { worker });
        }
        let lived = now.saturating_duration_since(w.started);
        let stable = lived >= STABLE_AFTER;
        w.backoff = if stable {
            BACKOFF_MIN
        } else {
            (w.backoff * 2).min(BACKOFF_MAX)
        };
        let delay = if stable { Duration::ZERO } else { w.backoff };
        tracing::error!(
            cell = worker,
            pid,
            "cell exited ({how}) after {:.1}s; respawning in {delay:?}",
            lived.as_secs_f64()
        );
        out.push(Action::RespawnAfter {
            worker,
            generation: w.generation,
            delay,
        });
        out
    }

    /// Starts a replacement cell for `worker`; the old one drains once the new one is ready.
    fn replace(&mut self, worker: usize, why: Restart, by_reload: bool) -> Vec<Action> {
        let w = &mut self.workers[worker];
        let Some(old_pid) = w.pid else {
            return Vec::new();
        };
        w.replacing = Some(Replacing {
            old_pid,
            old_gen: w.generation,
            why,
            by_reload,
        });
        vec![
            Action::Steer {
                worker,
                live: false,
            },
            Action::Spawn { worker },
        ]
    }

    fn start_reload(&mut self, why: Restart) -> Vec<Action> {
        if self.reload.is_some() {
            tracing::warn!("reload ignored: a reload is already in progress");
            return Vec::new();
        }
        tracing::info!(
            "reloading: replacing {} cells one at a time",
            self.workers.len()
        );
        self.reload = Some(Reload {
            queue: (0..self.workers.len()).collect(),
            current: None,
            deferred: Vec::new(),
            why,
        });
        self.reload_step()
    }

    /// Starts the next replacement of a reload, unless one is in progress.
    fn reload_step(&mut self) -> Vec<Action> {
        let workers = &self.workers;
        let Some(r) = &mut self.reload else {
            return Vec::new();
        };
        if r.current.is_some() {
            return Vec::new();
        }
        let serving = |w: &Worker| w.pid.is_some() && w.ready && w.replacing.is_none();
        // A cell that died meanwhile respawns with the new configuration anyway.
        r.deferred
            .retain(|&i| workers.get(i).is_some_and(|w| w.pid.is_some()));
        let mut next = r
            .deferred
            .iter()
            .position(|&i| serving(&workers[i]))
            .map(|pos| r.deferred.remove(pos));
        while next.is_none() {
            let Some(i) = r.queue.pop_front() else { break };
            let w = &workers[i];
            if serving(w) {
                next = Some(i);
            } else if w.pid.is_some() {
                // Starting or being replaced: spawned with the old configuration.
                r.deferred.push(i);
            }
            // A cell that is down picks up the new configuration when it respawns.
        }
        match next {
            Some(worker) => {
                r.current = Some(worker);
                let why = r.why;
                self.replace(worker, why, true)
            }
            None => {
                if r.deferred.is_empty() {
                    tracing::info!("reload complete");
                    self.reload = None;
                }
                Vec::new()
            }
        }
    }

    /// A reload changed `workers`. Shrinking retires the cells above the new count (they
    /// drain; their exits are recognised as retired); growing adds workers on `new_cpus`.
    pub fn resize(&mut self, new_cpus: &[usize], now: Instant) -> Vec<Action> {
        let old = self.workers.len();
        let cells = new_cpus.len();
        let mut out = Vec::new();
        if cells < old {
            for worker in cells..old {
                out.push(Action::Steer {
                    worker,
                    live: false,
                });
                let w = &mut self.workers[worker];
                if let Some(pid) = w.pid {
                    out.push(Action::Drain { pid });
                }
                if let Some(rep) = w.replacing.take() {
                    out.push(Action::Drain { pid: rep.old_pid });
                }
                out.push(Action::Up { worker, up: false });
            }
            self.workers.truncate(cells);
            if let Some(r) = &mut self.reload {
                r.queue.retain(|&w| w < cells);
                r.deferred.retain(|&w| w < cells);
                if r.current.is_some_and(|w| w >= cells) {
                    r.current = None;
                }
            }
        } else {
            for (worker, &cpu) in new_cpus.iter().enumerate().skip(old) {
                self.workers.push(Worker::new(cpu, now));
                out.push(Action::Spawn { worker });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
