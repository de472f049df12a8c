//! Process model under load: graceful shutdown, SIGHUP reload, a killed cell, SIGQUIT.
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portico_tests::*;
use rustix::process::Signal;

fn site() -> Site {
    let s = Site::new();
    s.file("www/a.txt", b"payload");
    let big: Vec<u8> = vec![b'z'; 16 << 20];
    s.file("www/big.bin", &big);
    s
}

fn config(s: &Site, cache: &str) {
    let cfg = format!(
        "[server]\nworkers = 2\nshutdown_timeout = \"20s\"\n[[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\", cache_control = \"{cache}\" }}\n",
        s.root("www")
    );
    s.file("p.toml", cfg.as_bytes());
}

/// What the load asks for.
const PAYLOAD: &[Target] = &[("/a.txt", b"payload")];

#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let s = site();
    config(&s, "no-cache");
    let mut p = Portico::start(&["-c", &s.root("p.toml")]);
    // A slow download in flight when SIGTERM arrives must complete.
    let mut slow = Conn::open(p.addr).unwrap();
    slow.send(raw_request("GET", "/big.bin", &[]).as_bytes())
        .unwrap();
    let mut first = [0u8; 1024];
    slow.stream.read_exact(&mut first).unwrap();
    // And requests under load keep succeeding until the server stops taking them.
    let load = Load::start(p.addr, 4, true, PAYLOAD);
    load.wait_ok(0, 20);
    p.signal(Signal::TERM);
    // The load runs on until the master has begun the graceful stop.
    p.wait_stderr(Duration::from_secs(10), "graceful shutdown of");
    let (ok, _after_stop_failures) = load.finish();
    assert!(ok >= 20, "the load was served before the signal: {ok}");
    let mut rest = Vec::new();
    slow.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.stream.read_to_end(&mut rest).unwrap();
    let text_head = String::from_utf8_lossy(&first);
    assert!(text_head.starts_with("HTTP/1.1 200"), "{text_head}");
    let head_len = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        first.len() - head_len + rest.len(),
        16 << 20,
        "slow download was cut short"
    );
    let st = p
        .wait_exit(Duration::from_secs(25))
        .expect("master did not exit");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn graceful_shutdown_loses_no_keepalive_request() {
    let s = site();
    config(&s, "no-cache");
    let mut p = Portico::start(&["-c", &s.root("p.toml")]);
    let addr = p.addr;
    // Keep-alive clients: every request they started before the server closed their
    // connection gets a full answer; failures may only be connects after the listeners closed.
    let stop = Arc::new(AtomicBool::new(false));
    let truncated = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (stop, truncated, ok) = (stop.clone(), truncated.clone(), ok.clone());
            std::thread::spawn(move || {
                let Ok(mut c) = Conn::open(addr) else { return };
                let deadline = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if c.send(raw_request("GET", "/a.txt", &[]).as_bytes())
                        .is_err()
                    {
                        return;
                    }
                    match c.read_response("GET") {
                        Ok(r) if r.body == b"payload" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if r.header("connection") == Some("close") {
                                return;
                            }
                        }
                        Ok(_) => {
                            truncated.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        // Closed between requests (idle at the moment of shutdown): not a lost request.
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
                        Err(_) => {
                            truncated.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    // The clients are being served on their connections when the signal comes.
    wait_until(
        Duration::from_secs(20),
        "the clients got 20 answers",
        || ok.load(Ordering::Relaxed) >= 4 * 5,
    );
    p.signal(Signal::TERM);
    let st = p
        .wait_exit(Duration::from_secs(25))
        .expect("master did not exit");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(st.code(), Some(0));
    assert!(ok.load(Ordering::Relaxed) >= 20);
    assert_eq!(
        truncated.load(Ordering::Relaxed),
        0,
        "a response was cut short"
    );
}

#[test]
fn sighup_reload_under_load_refuses_nothing() {
    let s = site();
    config(&s, "max-age=1");
    let p = Portico::start(&["-c", &s.root("p.toml")]);
    assert_eq!(
        get(p.addr, "/a.txt").unwrap().header("cache-control"),
        Some("max-age=1")
    );
    let old_cells = p.cell_pids();
    assert_eq!(old_cells.len(), 2);
    let load = Load::start(p.addr, 4, false, PAYLOAD);
    load.wait_ok(0, 20);
    config(&s, "max-age=2");
    p.signal(Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(p.addr, "/a.txt").unwrap().header("cache-control") != Some("max-age=2")
        || p.cell_pids().iter().any(|pid| old_cells.contains(pid))
    {
        assert!(
            Instant::now() < deadline,
            "reload never completed:\n{}",
            p.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the load goes on, served by the new cells.
    load.wait_ok(load.ok_so_far(), 20);
    let (ok, failed) = load.finish();
    assert_eq!(
        failed,
        0,
        "reload refused or reset {failed} of {} requests",
        ok + failed
    );
    assert_eq!(
        p.metric("portico_cell_restarts_total{cell=\"0\",reason=\"reload\"}"),
        Some(1.0)
    );
    // A broken config on SIGHUP keeps the running one.
    s.file("p.toml", b"[server]\nworkers = \"lots\"\n");
    p.signal(Signal::HUP);
    p.wait_stderr(Duration::from_secs(10), "reload refused");
    assert_eq!(
        get(p.addr, "/a.txt").unwrap().header("cache-control"),
        Some("max-age=2")
    );
}

#[test]
fn killed_cell_is_respawned_and_clients_keep_going() {
    let s = site();
    config(&s, "no-cache");
    let p = Portico::start(&["-c", &s.root("p.toml")]);
    let clients = 4;
    let load = Load::start(p.addr, clients, false, PAYLOAD);
    load.wait_ok(0, 20);
    let victim = p.cell_pids()[0];
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(victim).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    // The load runs on while the master replaces the cell, and after.
    wait_until(
        Duration::from_secs(10),
        "the killed cell was replaced",
        || {
            let cells = p.cell_pids();
            cells.len() == 2 && !cells.contains(&victim)
        },
    );
    load.wait_ok(load.ok_so_far(), 20);
    let (ok, failed) = load.finish();
    // Only requests in flight on the killed cell may fail: at most one per client.
    assert!(
        failed <= clients as u64,
        "{failed} requests failed (ok {ok})"
    );
    p.wait_healthy(Duration::from_secs(10));
    let cells = p.cell_pids();
    assert_eq!(cells.len(), 2);
    assert!(!cells.contains(&victim));
    let crashes: f64 = (0..2)
        .filter_map(|i| {
            p.metric(&format!(
                "portico_cell_restarts_total{{cell=\"{i}\",reason=\"crash\"}}"
            ))
        })
        .sum();
    assert_eq!(crashes, 1.0);
    assert!(p.stderr_text().contains("killed by signal 9"));
}

#[test]
fn sigquit_stops_at_once() {
    let s = site();
    config(&s, "no-cache");
    let mut p = Portico::start(&["-c", &s.root("p.toml")]);
    let cells = p.cell_pids();
    // An open keep-alive connection would hold a graceful stop; QUIT does not wait for it.
    let mut c = Conn::open(p.addr).unwrap();
    c.request("GET", "/a.txt", &[]).unwrap();
    let t = Instant::now();
    p.signal(Signal::QUIT);
    p.wait_exit(Duration::from_secs(5))
        .expect("no exit after SIGQUIT");
    assert!(t.elapsed() < Duration::from_secs(3));
    // No cell outlives the master (allowing a moment for the last one to be reaped).
    for pid in cells {
        wait_until(
            Duration::from_secs(2),
            &format!("cell {pid} is gone after SIGQUIT"),
            || process_gone(pid),
        );
    }
}

#[test]
fn admin_reports_per_cell_counts() {
    let s = site();
    config(&s, "no-cache");
    let p = Portico::start(&["-c", &s.root("p.toml")]);
    for _ in 0..10 {
        get(p.addr, "/a.txt").unwrap();
    }
    get(p.addr, "/missing").unwrap();
    let m = p.metrics();
    let sum = |prefix: &str| metric_sum(&m, prefix);
    assert_eq!(sum("portico_cell_requests_total{") - 0.0, 11.0, "{m}");
    assert_eq!(
        m.lines()
            .filter(|l| l.starts_with("portico_cell_requests_total{") && l.contains("4xx"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>(),
        1.0
    );
    assert_eq!(sum("portico_connections_accepted_total{"), 11.0);
    assert_eq!(sum("portico_cell_up{"), 2.0);
    for name in [
        "portico_cell_up",
        "portico_connections_active",
        "portico_ebpf_enabled",
        "portico_build_info",
    ] {
        assert!(m.contains(&format!("# HELP {name} ")), "no HELP for {name}");
    }
    let h = get(p.admin.unwrap(), "/healthz").unwrap();
    assert_eq!(h.status, 200);
}
