//! The supervisor: every decision about cell processes (back-off after a crash, replacing one
//! cell at a time on reload or recycle, retiring cells when `workers` shrinks) as a sans-IO
//! state machine. It takes events and returns actions; `master::cells` performs them.
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
    /// A cell process ended (`how`: its exit status, for the log).
    Exited { pid: u32, how: String },
    /// A cell asks to be replaced (recycling limits, stuck thread, changed sources).
    RecycleRequested { pid: u32, why: Recycle },
    /// A respawn delay chosen earlier has passed.
    RespawnDue { worker: usize, generation: u64 },
    /// Replace every cell, one at a time (SIGHUP, or changed sources with `reload = true`).
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
}

/// A replacement in progress for one worker: the old cell serves until the new one is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Replacing {
    old_pid: u32,
    old_gen: u64,
    /// None for a reload.
    why: Option<Recycle>,
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
        let w = &mut self.workers[worker];
        if let Some(rep) = w.replacing.take() {
            // The old cell keeps serving; a reload stops here.
            w.pid = Some(rep.old_pid);
            w.generation = rep.old_gen;
            w.ready = true;
            if rep.why.is_none() {
                tracing::error!("reload aborted");
                self.reload = None;
            }
            return vec![Action::Steer { worker, live: true }];
        }
        vec![Action::RespawnAfter {
            worker,
            generation: w.generation,
            delay: BACKOFF_MAX,
        }]
    }

    pub fn handle(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        match ev {
            Event::Ready { pid } => self.ready(pid),
            Event::RecycleRequested { pid, why } => self.recycle_requested(pid, why),
            Event::Exited { pid, how } => self.exited(pid, &how, now),
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
            Event::Reload => self.start_reload(),
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
            let why = match rep.why {
                None => Restart::Reload,
                Some(r) => {
                    tracing::info!(cell = worker, "cell recycled ({})", r.label());
                    Restart::Recycle(r)
                }
            };
            out.push(Action::Restarted { worker, why });
            if let Some(r) = &mut self.reload
                && r.current == Some(worker)
            {
                r.current = None;
                out.extend(self.reload_step());
            }
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
            return self.start_reload();
        }
        tracing::info!(cell = worker, pid, "recycling: {}", why.label());
        self.replace(worker, Some(why))
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
            w.pid = Some(rep.old_pid);
            w.generation = rep.old_gen;
            w.ready = true;
            out.push(Action::Up { worker, up: true });
            out.push(Action::Pid {
                worker,
                pid: rep.old_pid,
            });
            if rep.why.is_none() {
                tracing::error!("reload aborted");
                self.reload = None;
            }
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
    fn replace(&mut self, worker: usize, why: Option<Recycle>) -> Vec<Action> {
        let w = &mut self.workers[worker];
        let Some(old_pid) = w.pid else {
            return Vec::new();
        };
        w.replacing = Some(Replacing {
            old_pid,
            old_gen: w.generation,
            why,
        });
        vec![
            Action::Steer {
                worker,
                live: false,
            },
            Action::Spawn { worker },
        ]
    }

    fn start_reload(&mut self) -> Vec<Action> {
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
        });
        self.reload_step()
    }

    fn reload_step(&mut self) -> Vec<Action> {
        loop {
            let Some(r) = &mut self.reload else {
                return Vec::new();
            };
            let Some(worker) = r.queue.pop_front() else {
                tracing::info!("reload complete");
                self.reload = None;
                return Vec::new();
            };
            let w = &self.workers[worker];
            if w.pid.is_some() && w.ready && w.replacing.is_none() {
                r.current = Some(worker);
                return self.replace(worker, None);
            }
            // A cell that is down, starting or being replaced picks up the new configuration
            // when its replacement spawns.
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
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    /// Two workers, both spawned (pids 100, 101) and ready.
    fn running(steering: bool) -> (Supervisor, Instant) {
        let now = t0();
        let mut s = Supervisor::new(&[0, 1], steering, now);
        assert_eq!(
            s.start(),
            vec![Action::Spawn { worker: 0 }, Action::Spawn { worker: 1 }]
        );
        s.spawned(0, 100, now);
        s.spawned(1, 101, now);
        for pid in [100, 101] {
            s.handle(Event::Ready { pid }, now);
        }
        (s, now)
    }

    #[test]
    fn ready_marks_up_and_steers() {
        let now = t0();
        let mut s = Supervisor::new(&[3], false, now);
        assert_eq!(s.spawned(0, 7, now), vec![Action::Pid { worker: 0, pid: 7 }]);
        assert_eq!(
            s.handle(Event::Ready { pid: 7 }, now),
            vec![
                Action::Up {
                    worker: 0,
                    up: true
                },
                Action::Steer {
                    worker: 0,
                    live: true
                }
            ]
        );
        assert_eq!(s.cpu(0), 3);
        // Readiness from an unknown pid changes nothing.
        assert!(s.handle(Event::Ready { pid: 8 }, now).is_empty());
    }

    #[test]
    fn crash_backs_off_doubling_and_resets_after_a_stable_run() {
        let (mut s, now) = running(false);
        let acts = s.handle(
            Event::Exited {
                pid: 100,
                how: "killed by signal 9".into(),
            },
            now + Duration::from_secs(1),
        );
        let gen0 = s.workers[0].generation;
        assert_eq!(
            acts,
            vec![
                Action::Up {
                    worker: 0,
                    up: false
                },
                Action::Restarted {
                    worker: 0,
                    why: Restart::Crash
                },
                Action::Steer {
                    worker: 0,
                    live: false
                },
                Action::RespawnAfter {
                    worker: 0,
                    generation: gen0,
                    delay: BACKOFF_MIN * 2
                },
            ]
        );
        // The delay passes: spawn again; a second quick crash doubles the delay.
        assert_eq!(
            s.handle(
                Event::RespawnDue {
                    worker: 0,
                    generation: gen0
                },
                now
            ),
            vec![Action::Spawn { worker: 0 }]
        );
        s.spawned(0, 102, now);
        let acts = s.handle(
            Event::Exited {
                pid: 102,
                how: "exit code 1".into(),
            },
            now + Duration::from_millis(10),
        );
        assert!(acts.contains(&Action::RespawnAfter {
            worker: 0,
            generation: s.workers[0].generation,
            delay: BACKOFF_MIN * 4
        }));
        // Capped at BACKOFF_MAX.
        for pid in 200..210 {
            s.spawned(0, pid, now);
            s.handle(
                Event::Exited {
                    pid,
                    how: String::new(),
                },
                now,
            );
        }
        assert_eq!(s.workers[0].backoff, BACKOFF_MAX);
        // A cell that lived past STABLE_AFTER respawns at once, back-off reset.
        s.spawned(0, 300, now);
        let acts = s.handle(
            Event::Exited {
                pid: 300,
                how: String::new(),
            },
            now + STABLE_AFTER,
        );
        assert!(acts.contains(&Action::RespawnAfter {
            worker: 0,
            generation: s.workers[0].generation,
            delay: Duration::ZERO
        }));
        assert_eq!(s.workers[0].backoff, BACKOFF_MIN);
    }

    #[test]
    fn a_stale_respawn_timer_does_nothing() {
        let (mut s, now) = running(false);
        s.handle(
            Event::Exited {
                pid: 100,
                how: String::new(),
            },
            now,
        );
        let stale = s.workers[0].generation;
        s.spawned(0, 150, now);
        assert!(
            s.handle(
                Event::RespawnDue {
                    worker: 0,
                    generation: stale
                },
                now
            )
            .is_empty()
        );
    }

    #[test]
    fn crash_with_steering_rebinds_only_when_another_cell_is_live() {
        let (mut s, now) = running(true);
        let acts = s.handle(
            Event::Exited {
                pid: 100,
                how: String::new(),
            },
            now,
        );
        assert!(acts.contains(&Action::Rebind { worker: 0 }));
        // Now worker 1 dies too: no live cell to migrate to, keep its listener and queue.
        let acts = s.handle(
            Event::Exited {
                pid: 101,
                how: String::new(),
            },
            now,
        );
        assert!(!acts.contains(&Action::Rebind { worker: 1 }));
    }

    #[test]
    fn recycle_replaces_then_drains_the_old_cell_when_the_new_one_is_ready() {
        let (mut s, now) = running(false);
        let acts = s.handle(
            Event::RecycleRequested {
                pid: 100,
                why: Recycle::MaxRequests,
            },
            now,
        );
        assert_eq!(
            acts,
            vec![
                Action::Steer {
                    worker: 0,
                    live: false
                },
                Action::Spawn { worker: 0 }
            ]
        );
        s.spawned(0, 110, now);
        // A second request while replacing is ignored, and so is one from the new cell
        // before it is ready.
        assert!(
            s.handle(
                Event::RecycleRequested {
                    pid: 100,
                    why: Recycle::MaxRss
                },
                now
            )
            .is_empty()
        );
        assert!(
            s.handle(
                Event::RecycleRequested {
                    pid: 110,
                    why: Recycle::MaxRss
                },
                now
            )
            .is_empty()
        );
        let acts = s.handle(Event::Ready { pid: 110 }, now);
        assert_eq!(
            acts,
            vec![
                Action::Up {
                    worker: 0,
                    up: true
                },
                Action::Steer {
                    worker: 0,
                    live: true
                },
                Action::Drain { pid: 100 },
                Action::Restarted {
                    worker: 0,
                    why: Restart::Recycle(Recycle::MaxRequests)
                },
            ]
        );
        // The old cell's exit is a drained cell, not a crash.
        assert!(
            s.handle(
                Event::Exited {
                    pid: 100,
                    how: String::new()
                },
                now
            )
            .is_empty()
        );
    }

    #[test]
    fn a_replacement_that_dies_leaves_the_old_cell_serving() {
        let (mut s, now) = running(false);
        s.handle(Event::Reload, now);
        s.spawned(0, 120, now);
        let acts = s.handle(
            Event::Exited {
                pid: 120,
                how: "exit code 3".into(),
            },
            now,
        );
        assert!(acts.contains(&Action::Pid {
            worker: 0,
            pid: 100
        }));
        assert!(acts.contains(&Action::Steer {
            worker: 0,
            live: true
        }));
        assert!(!s.reloading(), "a failed reload stops");
        // The old cell is current again: its crash is a crash.
        let acts = s.handle(
            Event::Exited {
                pid: 100,
                how: String::new(),
            },
            now,
        );
        assert!(acts.contains(&Action::Restarted {
            worker: 0,
            why: Restart::Crash
        }));
    }

    #[test]
    fn a_failed_spawn_of_a_replacement_keeps_the_old_cell() {
        let (mut s, now) = running(false);
        s.handle(Event::Reload, now);
        assert_eq!(
            s.spawn_failed(0),
            vec![Action::Steer {
                worker: 0,
                live: true
            }]
        );
        assert!(!s.reloading());
        assert_eq!(s.workers[0].pid, Some(100));
    }

    #[test]
    fn reload_replaces_one_cell_at_a_time() {
        let (mut s, now) = running(false);
        assert_eq!(
            s.handle(Event::Reload, now),
            vec![
                Action::Steer {
                    worker: 0,
                    live: false
                },
                Action::Spawn { worker: 0 }
            ]
        );
        // A second SIGHUP while reloading is ignored.
        assert!(s.handle(Event::Reload, now).is_empty());
        s.spawned(0, 130, now);
        let acts = s.handle(Event::Ready { pid: 130 }, now);
        assert!(acts.contains(&Action::Drain { pid: 100 }));
        assert!(acts.contains(&Action::Restarted {
            worker: 0,
            why: Restart::Reload
        }));
        // ...and only then the next worker.
        assert_eq!(
            &acts[acts.len() - 2..],
            &[
                Action::Steer {
                    worker: 1,
                    live: false
                },
                Action::Spawn { worker: 1 }
            ]
        );
        s.spawned(1, 131, now);
        s.handle(Event::Ready { pid: 131 }, now);
        assert!(!s.reloading());
    }

    #[test]
    fn reload_skips_cells_that_are_down() {
        let (mut s, now) = running(false);
        s.handle(
            Event::Exited {
                pid: 100,
                how: String::new(),
            },
            now,
        );
        let acts = s.handle(Event::Reload, now);
        assert_eq!(
            acts,
            vec![
                Action::Steer {
                    worker: 1,
                    live: false
                },
                Action::Spawn { worker: 1 }
            ]
        );
    }

    #[test]
    fn source_change_reloads_every_cell() {
        let (mut s, now) = running(false);
        s.handle(
            Event::RecycleRequested {
                pid: 101,
                why: Recycle::SourceChange,
            },
            now,
        );
        assert!(s.reloading());
        assert_eq!(s.reload.as_ref().and_then(|r| r.current), Some(0));
    }

    #[test]
    fn shrinking_retires_the_cells_above_the_count() {
        let (mut s, now) = running(true);
        let acts = s.resize(&[0], now);
        assert_eq!(
            acts,
            vec![
                Action::Steer {
                    worker: 1,
                    live: false
                },
                Action::Drain { pid: 101 },
                Action::Up {
                    worker: 1,
                    up: false
                },
            ]
        );
        assert_eq!(s.workers(), 1);
        // The retired cell's exit is not a crash and spawns nothing.
        assert!(
            s.handle(
                Event::Exited {
                    pid: 101,
                    how: String::new()
                },
                now
            )
            .is_empty()
        );
        assert_eq!(s.children().count(), 1);
    }

    #[test]
    fn growing_spawns_the_new_workers() {
        let (mut s, now) = running(false);
        assert_eq!(
            s.resize(&[0, 1, 0], now),
            vec![Action::Spawn { worker: 2 }]
        );
        assert_eq!(s.cpus(), vec![0, 1, 0]);
    }

    #[test]
    fn shutdown_forgets_children() {
        let (mut s, _) = running(false);
        let mut pids: Vec<u32> = s.children().collect();
        pids.sort_unstable();
        assert_eq!(pids, vec![100, 101]);
        assert_eq!(s.forget(100), Some(0));
        assert_eq!(s.forget(100), None);
    }
}
