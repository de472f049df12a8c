//! eBPF `steering` (sk_reuseport), for real: each test runs portico as root inside its own
//! network namespace (deleted afterwards) and prints SKIP without root or with one CPU.
use std::process::Command;
use std::time::{Duration, Instant};

use portico_tests::*;
use rustix::process::{Pid, Signal, kill_process};

/// Root, 2+ CPUs and a namespace (named after `tag`), or a skip marker for `test` naming what
/// is missing.
fn setup(test: &str, tag: &str) -> Option<Netns> {
    if !is_root() {
        skip(
            test,
            "needs root (CAP_BPF, CAP_NET_ADMIN) for eBPF and namespaces",
        );
        return None;
    }
    if cpus() < 2 {
        skip(test, "needs at least 2 CPUs to tell cells apart");
        return None;
    }
    let ns = Netns::create(tag);
    if ns.is_none() {
        skip(
            test,
            "`ip netns add` failed (no iproute2 or no namespace support)",
        );
    }
    ns
}

fn launch(ns: &Netns, args: &[&str]) -> Portico {
    Portico::launch(ns.command(&portico_bin()), args, false)
}

/// The pid of cell `i`, from /status.json inside the namespace.
fn cell_pid(ns: &Netns, admin: std::net::SocketAddr, i: usize) -> i32 {
    let body = ns.run(None, move || get(admin, "/status.json").unwrap().text());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["cells"][i]["pid"].as_i64().unwrap() as i32
}

fn signal(pid: i32, sig: Signal) {
    kill_process(Pid::from_raw(pid).unwrap(), sig).unwrap();
}

#[test]
fn cpu_policy_client_on_cpu_k_lands_on_cell_k() {
    let Some(ns) = setup("cpu_policy_client_on_cpu_k_lands_on_cell_k", "cpu") else {
        return;
    };
    let s = Site::new();
    s.file("www/a.txt", b"a");
    let cpus = cpus();
    let p = launch(
        &ns,
        &[
            "--static",
            &format!("/={}", s.root("www")),
            "--workers",
            &cpus.to_string(),
            "--steering",
            "cpu",
        ],
    );
    let addr = p.addr;
    let m = ns.wait_cells_up(&p, cpus);
    assert_eq!(
        metric_value(&m, "portico_ebpf_enabled"),
        Some(1.0),
        "eBPF did not attach as root:\n{}",
        p.stderr_text()
    );
    const N: usize = 40;
    for k in 0..cpus {
        let before = ns.scrape(p.admin.unwrap());
        let served = ns.run(Some(k), move || {
            (0..N)
                .filter(|_| get(addr, "/a.txt").is_ok_and(|r| r.status == 200))
                .count()
        });
        assert_eq!(served, N);
        let after = ns.scrape(p.admin.unwrap());
        let on_k = delta(
            &after,
            &before,
            &format!("portico_cell_requests_total{{cell=\"{k}\",status_class=\"2xx\"}}"),
        );
        assert_eq!(
            on_k as usize, N,
            "client on CPU {k}: only {on_k} of {N} on cell {k}"
        );
        let steered = delta(
            &after,
            &before,
            &format!("portico_steering_decisions_total{{cell=\"{k}\",result=\"selected\"}}"),
        );
        assert!(
            steered as usize >= N,
            "steering counted {steered} for cell {k}"
        );
    }
}

#[test]
fn least_loaded_policy_avoids_a_busy_cell() {
    let Some(ns) = setup("least_loaded_policy_avoids_a_busy_cell", "least") else {
        return;
    };
    let s = Site::new();
    s.file("www/a.txt", b"a");
    s.file(
        "app/slowapp.py",
        br#"import time
def app(environ, start_response):
    if environ['PATH_INFO'] == '/slow':
        time.sleep(float(environ.get('QUERY_STRING') or 3))
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'ok']
"#,
    );
    let p = launch(
        &ns,
        &[
            "slowapp:app",
            "--python-path",
            &s.root("app"),
            "--threads",
            "8",
            "--static",
            &format!("/s={}", s.root("www")),
            "--workers",
            "2",
            "--steering",
            "least-loaded",
        ],
    );
    let (addr, admin) = (p.addr, p.admin.unwrap());
    ns.wait_cells_up(&p, 2);
    // Keep-alive connections from CPU 1; each one's cell is told by the active-connection gauge.
    let conns: Vec<(Conn, usize)> = ns.run(Some(1), move || {
        let mut out = Vec::new();
        for _ in 0..24 {
            let before = get(admin, "/metrics").unwrap().text();
            let mut c = Conn::open(addr).unwrap();
            let r = c.request("GET", "/s/a.txt", &[]).unwrap();
            assert_eq!(r.status, 200);
            let after = get(admin, "/metrics").unwrap().text();
            let cell = (0..2)
                .find(|i| {
                    delta(
                        &after,
                        &before,
                        &format!("portico_connections_active{{cell=\"{i}\"}}"),
                    ) >= 1.0
                })
                .expect("the new connection shows up on one cell");
            out.push((c, cell));
            if out.iter().filter(|(_, c)| *c == 1).count() >= 4 {
                break;
            }
        }
        out
    });
    let (mut busy, idle): (Vec<_>, Vec<_>) = conns.into_iter().partition(|(_, c)| *c == 1);
    assert!(busy.len() >= 4, "could not place 4 connections on cell 1");
    drop(idle);
    // Cell 1 now has 4+ connections, each running a 4 s request.
    for (c, _) in &mut busy {
        c.send(raw_request("GET", "/slow?4", &[]).as_bytes())
            .unwrap();
    }
    // Until their Python threads are running them (the gauge is published five times a
    // second), well inside the 4 s.
    let running = busy.len() as f64;
    wait_until(
        Duration::from_secs(2),
        "cell 1 runs the slow requests",
        || {
            metric_value(&ns.scrape(admin), "portico_wsgi_threads_busy{cell=\"1\"}")
                .is_some_and(|n| n >= running)
        },
    );
    let before = ns.scrape(admin);
    // New connections from both CPUs for a bounded 1.5 s (inside the slow requests' 4 s).
    let spread = |cpu: usize| {
        ns.spawn(Some(cpu), move || {
            let end = Instant::now() + Duration::from_millis(1500);
            let (mut ok, mut errors) = (0, Vec::new());
            while Instant::now() < end {
                match get(addr, "/s/a.txt") {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => errors.push(format!("status {}", r.status)),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (ok, errors)
        })
    };
    let (a, b) = (spread(0), spread(1));
    let ((ok_a, mut errors), (ok_b, errors_b)) = (a.join().unwrap(), b.join().unwrap());
    errors.extend(errors_b);
    let ok = ok_a + ok_b;
    let after = ns.scrape(admin);
    let accepted = |i: usize| {
        delta(
            &after,
            &before,
            &format!("portico_connections_accepted_total{{cell=\"{i}\"}}"),
        )
    };
    let (idle_cell, busy_cell) = (accepted(0), accepted(1));
    assert!(
        errors.is_empty(),
        "{} requests failed: {errors:?}",
        errors.len()
    );
    assert!(ok > 0, "no request completed");
    assert!(
        busy_cell < 0.1 * (idle_cell + busy_cell),
        "the busy cell still took {busy_cell} of {} new connections",
        idle_cell + busy_cell
    );
    for (c, _) in &mut busy {
        assert_eq!(c.read_response("GET").unwrap().status, 200);
    }
}

#[test]
fn killing_a_cell_refuses_and_resets_no_new_connection() {
    let Some(ns) = setup(
        "killing_a_cell_refuses_and_resets_no_new_connection",
        "kill",
    ) else {
        return;
    };
    let s = Site::new();
    s.file("www/a.txt", b"a");
    let p = launch(
        &ns,
        &[
            "--static",
            &format!("/={}", s.root("www")),
            "--workers",
            "2",
            "--steering",
            "cpu",
        ],
    );
    let (addr, admin) = (p.addr, p.admin.unwrap());
    ns.wait_cells_up(&p, 2);
    let before = ns.scrape(admin);
    let victim = cell_pid(&ns, admin, 1);
    let client = |cpu: usize| {
        ns.spawn(Some(cpu), move || {
            let end = Instant::now() + Duration::from_secs(3);
            let (mut ok, mut errors) = (0, Vec::new());
            while Instant::now() < end {
                match get(addr, "/a.txt") {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => errors.push(format!("status {}", r.status)),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (ok, errors)
        })
    };
    // Several clients per CPU, so some connect after the master emptied the dead cell's slot.
    const PER_CPU: usize = 3;
    let clients: Vec<_> = (0..2 * PER_CPU).map(|i| client(i % 2)).collect();
    // The clients run 3 s; kill the cell once both cells are taking their connections.
    wait_until(
        Duration::from_secs(2),
        "both cells accept the clients' connections",
        || {
            let now = ns.scrape(admin);
            (0..2).all(|i| {
                delta(
                    &now,
                    &before,
                    &format!("portico_connections_accepted_total{{cell=\"{i}\"}}"),
                ) >= 10.0
            })
        },
    );
    signal(victim, Signal::KILL);
    let mut errors = Vec::new();
    let mut ok = 0;
    for c in clients {
        let (o, e) = c.join().unwrap();
        ok += o;
        errors.extend(e);
    }
    let after = ns.scrape(admin);
    // Only a request cell 1 was serving at the kill can fail (one per client on CPU 1 at most).
    assert!(
        errors.len() <= PER_CPU,
        "{} failures around the kill: {errors:?}",
        errors.len()
    );
    assert!(ok > 0, "no request succeeded");
    // Connections queued on the dead cell moved to cell 0 (migrated); new ones from CPU 1
    // went there while cell 1 was down (fallback).
    let moved = |r: &str| {
        delta(
            &after,
            &before,
            &format!("portico_steering_decisions_total{{cell=\"0\",result=\"{r}\"}}"),
        )
    };
    assert!(
        moved("fallback") + moved("migrated") >= 1.0,
        "no connection was steered away from the dead cell:\n{after}"
    );
    ns.wait_cells_up(&p, 2);
}

#[test]
fn reducing_workers_on_reload_migrates_queued_connections() {
    let Some(ns) = setup(
        "reducing_workers_on_reload_migrates_queued_connections",
        "migrate",
    ) else {
        return;
    };
    let s = Site::new();
    s.file("www/a.txt", b"a");
    let conf = |workers: usize| {
        format!(
            "[server]\nworkers = {workers}\n[ebpf]\nsteering = \"cpu\"\n[[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\" }}\n",
            s.root("www")
        )
    };
    let path = s.file("portico.toml", conf(2).as_bytes());
    let p = launch(&ns, &["-c", path.to_str().unwrap()]);
    let (addr, admin) = (p.addr, p.admin.unwrap());
    ns.wait_cells_up(&p, 2);
    let victim = cell_pid(&ns, admin, 1);
    // Cell 1 stops taking connections; requests from CPU 1 queue on its listener.
    signal(victim, Signal::STOP);
    const N: usize = 5;
    let mut queued: Vec<Conn> = ns.run(Some(1), move || {
        (0..N)
            .map(|_| {
                let mut c = Conn::open(addr).unwrap();
                c.send(raw_request("GET", "/a.txt", &[]).as_bytes())
                    .unwrap();
                c
            })
            .collect()
    });
    std::fs::write(&path, conf(1)).unwrap();
    p.signal(Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.stderr_text().contains("reload complete") {
        assert!(
            Instant::now() < deadline,
            "reload never completed:\n{}",
            p.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        p.stderr_text().contains("workers: 2 -> 1 cells"),
        "{}",
        p.stderr_text()
    );
    let before = ns.scrape(admin);
    // The retired cell goes away with its copy of the listener: the listener closes and the
    // kernel runs the steering program to move its queued connections.
    signal(victim, Signal::KILL);
    for c in &mut queued {
        let r = c
            .read_response("GET")
            .expect("a queued connection was reset");
        assert_eq!(r.status, 200);
    }
    let after = ns.scrape(admin);
    let migrated = delta(
        &after,
        &before,
        "portico_steering_decisions_total{cell=\"0\",result=\"migrated\"}",
    );
    assert!(migrated >= N as f64, "migrated {migrated} of {N}:\n{after}");
    assert_eq!(metric_value(&after, "portico_cell_up{cell=\"1\"}"), None);
}

#[test]
fn without_cap_bpf_serves_with_plain_reuseport() {
    if !is_root() {
        skip(
            "without_cap_bpf_serves_with_plain_reuseport",
            "needs root to drop capabilities from",
        );
        return;
    }
    let s = Site::new();
    s.file("www/a.txt", b"a");
    // Root without CAP_BPF, CAP_SYS_ADMIN, CAP_PERFMON and CAP_NET_ADMIN in its bounding set.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set=-bpf,-sys_admin,-perfmon,-net_admin", "--"])
        .arg(portico_bin());
    let p = Portico::start_with(cmd, &["--static", &format!("/={}", s.root("www"))]);
    assert_eq!(get(p.addr, "/a.txt").unwrap().status, 200);
    assert_eq!(p.metric("portico_ebpf_enabled"), Some(0.0));
    let warnings: Vec<String> = p
        .stderr_text()
        .lines()
        .filter(|l| l.contains("eBPF unavailable, serving with plain SO_REUSEPORT"))
        .map(str::to_owned)
        .collect();
    assert_eq!(warnings.len(), 1, "{}", p.stderr_text());
}
