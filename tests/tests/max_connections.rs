//! Descriptor and connection limits: RLIMIT_NOFILE raised and inherited by the cells, and
//! `max_connections`: a full cell stops accepting (the next connection waits in the kernel's
//! queue, or goes to a cell with room) and takes connections again once one closes.
use std::process::Command;
use std::time::Duration;

use portico_tests::*;

/// A static site with one small file, `extra` added to the configuration.
fn site(extra: &str) -> (Site, String) {
    let s = Site::new();
    s.file("www/a.txt", b"hello");
    let cfg = format!(
        "{extra}\n[[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\" }}\n",
        s.root("www")
    );
    s.file("p.toml", cfg.as_bytes());
    let path = s.root("p.toml");
    (s, path)
}

/// A keep-alive connection that has been served once (so it was accepted, whatever
/// TCP_DEFER_ACCEPT holds back) and stays open.
fn served_conn(addr: std::net::SocketAddr) -> Conn {
    let mut c = Conn::open(addr).unwrap();
    let r = c.request("GET", "/a.txt", &[]).unwrap();
    assert_eq!(r.status, 200);
    c
}

/// The soft limit of `pid`'s RLIMIT_NOFILE and its hard limit, from /proc.
fn nofile(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().into(), f.next().unwrap().into())
}

#[test]
fn nofile_soft_limit_is_raised_logged_and_inherited() {
    let own = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let Some(hard) = own.maximum.filter(|h| *h > 256) else {
        skip(
            "nofile_soft_limit_is_raised_logged_and_inherited",
            "the hard RLIMIT_NOFILE leaves no room to start below it",
        );
        return;
    };
    let (_s, cfg) = site("[server]\nworkers = 2");
    // Start with a low soft limit, as a login shell's `ulimit -n 256` would.
    let mut sh = Command::new("sh");
    sh.args(["-c", "ulimit -Sn 256 && exec \"$0\" \"$@\""])
        .arg(portico_bin());
    let p = Portico::start_with(sh, &["-c", &cfg]);
    p.wait_stderr(
        Duration::from_secs(5),
        &format!("RLIMIT_NOFILE {hard} (soft limit was 256, hard limit {hard})"),
    );
    let line = p
        .stderr_text()
        .lines()
        .find(|l| l.contains("RLIMIT_NOFILE"))
        .unwrap()
        .to_string();
    let per_cell = (hard - 64) / 2;
    assert!(
        line.contains(&format!("max_connections {per_cell} per cell (auto")),
        "{line}"
    );
    assert_eq!(
        p.stderr_text()
            .lines()
            .filter(|l| l.contains("RLIMIT_NOFILE"))
            .count(),
        1,
        "logged once"
    );
    assert_eq!(nofile(p.pid()), (hard.to_string(), hard.to_string()));
    let cells = p.cell_pids();
    assert_eq!(cells.len(), 2);
    for c in cells {
        assert_eq!(nofile(c), (hard.to_string(), hard.to_string()), "cell {c}");
    }
    assert_eq!(
        p.metric("portico_connections_max{cell=\"0\"}"),
        Some(per_cell as f64)
    );
}

#[test]
fn full_cell_stops_accepting_until_a_connection_closes() {
    const N: usize = 4;
    let (_s, cfg) = site(&format!(
        "[server]\nworkers = 1\n[limits]\nmax_connections = {N}"
    ));
    let p = Portico::start(&["-c", &cfg]);
    assert_eq!(
        p.metric("portico_connections_max{cell=\"0\"}"),
        Some(N as f64)
    );
    let mut held: Vec<Conn> = (0..N).map(|_| served_conn(p.addr)).collect();
    p.wait_metrics(Duration::from_secs(5), |m| {
        metric_value(m, "portico_connection_limit_reached_total{cell=\"0\"}") == Some(1.0)
    });

    // The one over the limit: connected (the kernel queues it), its request unanswered.
    let mut extra = Conn::open(p.addr).unwrap();
    extra
        .send(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    extra
        .stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let waiting = extra.read_response("GET");
    assert!(
        waiting.is_err(),
        "a connection over max_connections was served: {waiting:?}"
    );
    // The time at the limit counts up while the cell is full.
    p.wait_metrics(Duration::from_secs(5), |m| {
        metric_value(m, "portico_connection_limit_seconds_total{cell=\"0\"}")
            .is_some_and(|s| s > 0.0)
    });

    // One closes: the waiting connection is accepted and answered, nothing lost.
    drop(held.pop());
    extra
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = extra.read_response("GET").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    // The held ones are still served on their connections.
    for c in &mut held {
        assert_eq!(c.request("GET", "/a.txt", &[]).unwrap().status, 200);
    }
    // Full again (N open): a second stop is counted.
    p.wait_metrics(Duration::from_secs(5), |m| {
        metric_value(m, "portico_connection_limit_reached_total{cell=\"0\"}") == Some(2.0)
    });
    drop(held);
    drop(extra);
    p.wait_metrics(Duration::from_secs(5), |m| {
        metric_value(m, "portico_connections_active{cell=\"0\"}") == Some(0.0)
    });
    assert_eq!(get(p.addr, "/a.txt").unwrap().status, 200);
}

#[test]
fn steering_passes_over_a_full_cell() {
    let test = "steering_passes_over_a_full_cell";
    if !is_root() {
        skip(test, "eBPF steering needs root");
        return;
    }
    if cpus() < 2 {
        skip(test, "needs two CPUs for two cells");
        return;
    }
    const N: usize = 3;
    let (_s, cfg) = site(&format!(
        "[server]\nworkers = 2\n[ebpf]\nmode = \"on\"\nsteering = \"cpu\"\n[limits]\nmax_connections = {N}"
    ));
    let p = Portico::start(&["-c", &cfg]);
    // Every connection of this thread starts on CPU 0, whose cell the `cpu` policy picks.
    let mut set = rustix::thread::CpuSet::new();
    set.set(0);
    rustix::thread::sched_setaffinity(None, &set).unwrap();
    let reached = |m: &str, c: usize| {
        metric_value(
            m,
            &format!("portico_connection_limit_reached_total{{cell=\"{c}\"}}"),
        ) == Some(1.0)
    };
    let mut held: Vec<Conn> = Vec::new();
    let mut full = None;
    poll_until(Duration::from_secs(10), || {
        held.push(served_conn(p.addr));
        let m = p.metrics();
        full = (0..2).find(|&c| reached(&m, c));
        full.is_some() || held.len() > 4 * N
    });
    let Some(full) = full else {
        panic!("no cell filled up from one CPU:\n{}", p.metrics());
    };
    let other = 1 - full;
    let active = |c: usize| format!("portico_connections_active{{cell=\"{c}\"}}");
    // The full cell is passed over: the next connections go to the other one, served at once.
    let before = p.metric(&active(other)).unwrap_or(0.0);
    let more: Vec<Conn> = (0..2).map(|_| served_conn(p.addr)).collect();
    let m = p.wait_metrics(Duration::from_secs(5), |m| {
        metric_value(m, &active(other)) == Some(before + 2.0)
    });
    assert_eq!(metric_value(&m, &active(full)), Some(N as f64), "{m}");
    let fallbacks: f64 = m
        .lines()
        .filter(|l| l.starts_with("portico_steering_decisions_total{"))
        .filter(|l| l.contains(&format!("cell=\"{other}\"")) && l.contains("result=\"fallback\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(fallbacks >= 2.0, "{m}");
    drop(more);
    drop(held);
}
