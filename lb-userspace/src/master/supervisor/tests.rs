//! Every transition of the supervisor, as events in and actions out.
use super::*;

fn t0() -> Instant {
    Instant::now()
}

/// A cell process ended (how does not matter to the decisions).
fn exit(s: &mut Supervisor, pid: u32, now: Instant) -> Vec<Action> {
    s.handle(
        Event::Exited {
            pid,
            how: String::new(),
            app_failed: false,
        },
        now,
    )
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
    assert_eq!(
        s.spawned(0, 7, now),
        vec![Action::Pid { worker: 0, pid: 7 }]
    );
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
            },
            Action::Serving
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
            app_failed: false,
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
            app_failed: false,
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
                app_failed: false,
            },
            now,
        );
    }
    assert_eq!(s.workers[0].backoff, BACKOFF_MAX);
    // A cell that lived past STABLE_AFTER respawns at once, back-off reset.
    s.spawned(0, 300, now);
    let acts = exit(&mut s, 300, now + STABLE_AFTER);
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
    exit(&mut s, 100, now);
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
    let acts = exit(&mut s, 100, now);
    assert!(acts.contains(&Action::Rebind { worker: 0 }));
    // Now worker 1 dies too: no live cell to migrate to, keep its listener and queue.
    let acts = exit(&mut s, 101, now);
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
    assert!(exit(&mut s, 100, now).is_empty());
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
            // Once serving, an app that fails in a replacement is not fatal.
            app_failed: true,
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
    let acts = exit(&mut s, 100, now);
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
    exit(&mut s, 100, now);
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
    assert!(exit(&mut s, 101, now).is_empty());
    assert_eq!(s.children().count(), 1);
}

#[test]
fn growing_spawns_the_new_workers() {
    let (mut s, now) = running(false);
    assert_eq!(s.resize(&[0, 1, 0], now), vec![Action::Spawn { worker: 2 }]);
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

#[test]
fn reload_replaces_a_starting_cell_once_it_is_ready() {
    let (mut s, now) = running(false);
    // Worker 0 crashed and is starting again (spawned, not ready) when the reload begins:
    // it was spawned with the old configuration, so it is replaced after it is ready.
    exit(&mut s, 100, now);
    s.spawned(0, 140, now);
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
    s.spawned(1, 141, now);
    // Worker 0 becomes ready while worker 1 is being replaced: it waits its turn.
    let acts = s.handle(Event::Ready { pid: 140 }, now);
    assert!(!acts.contains(&Action::Spawn { worker: 0 }));
    let acts = s.handle(Event::Ready { pid: 141 }, now);
    assert!(acts.contains(&Action::Drain { pid: 101 }));
    assert_eq!(
        &acts[acts.len() - 2..],
        &[
            Action::Steer {
                worker: 0,
                live: false
            },
            Action::Spawn { worker: 0 }
        ]
    );
    s.spawned(0, 142, now);
    let acts = s.handle(Event::Ready { pid: 142 }, now);
    assert!(acts.contains(&Action::Drain { pid: 140 }));
    assert!(!s.reloading());
}

#[test]
fn a_reload_for_changed_sources_counts_as_source_change() {
    let (mut s, now) = running(false);
    s.handle(
        Event::RecycleRequested {
            pid: 100,
            why: Recycle::SourceChange,
        },
        now,
    );
    s.spawned(0, 150, now);
    let acts = s.handle(Event::Ready { pid: 150 }, now);
    assert!(acts.contains(&Action::Restarted {
        worker: 0,
        why: Restart::Recycle(Recycle::SourceChange)
    }));
}

#[test]
fn serving_once_every_worker_had_a_ready_cell() {
    let now = t0();
    let mut s = Supervisor::new(&[0, 1], false, now);
    s.spawned(0, 100, now);
    s.spawned(1, 101, now);
    assert!(
        !s.handle(Event::Ready { pid: 100 }, now)
            .contains(&Action::Serving)
    );
    assert!(
        s.handle(Event::Ready { pid: 101 }, now)
            .contains(&Action::Serving)
    );
    // Only the first time: a respawned cell's readiness is not news.
    exit(&mut s, 100, now);
    s.spawned(0, 102, now);
    assert!(
        !s.handle(Event::Ready { pid: 102 }, now)
            .contains(&Action::Serving)
    );
}

#[test]
fn an_app_that_fails_before_serving_stops_serve() {
    let now = t0();
    let mut s = Supervisor::new(&[0, 1], false, now);
    s.spawned(0, 100, now);
    s.spawned(1, 101, now);
    s.handle(Event::Ready { pid: 100 }, now);
    // A crash that is not the app's is respawned as ever...
    let acts = exit(&mut s, 101, now);
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::RespawnAfter { worker: 1, .. }))
    );
    // ...but a cell whose app fails to start (lifespan.startup.failed) stops everything.
    s.spawned(1, 102, now);
    let fail = |pid| Event::Exited {
        pid,
        how: "exit code 3".into(),
        app_failed: true,
    };
    assert_eq!(s.handle(fail(102), now), vec![Action::AppFailed]);
    assert_eq!(
        s.children().collect::<Vec<_>>(),
        [100],
        "shutdown waits for the others only"
    );
    // An exit the supervisor does not know (already forgotten) decides nothing.
    assert!(s.handle(fail(999), now).is_empty());
}
