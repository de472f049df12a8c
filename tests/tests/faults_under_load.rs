//! Faults under a steady mixed load (static, WSGI, ASGI, proxy, WebSocket echo): every
//! client-visible failure is counted while a cell is killed, the config is reloaded five times,
//! cells recycle every 1000 requests, an upstream server is killed and restarted, and the
//! static root's disk fails. Counts, not throughput: the table printed at the end gives the
//! failures per 1000 requests of each fault, and the test fails on any failure a fault does
//! not explain (the killed cell's own connections are the only ones that may fail).
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_tests::mixed::{
    Check, Failure, MixedLoad, MixedSite, Options, Stream, StreamTally, Tally, pattern, procs,
};
use portico_tests::*;
use rustix::process::{Pid, Signal, kill_process};

const TEST: &str = "faults_under_mixed_load";
/// Bound on any one phase's load (the phases wait for their conditions well within it).
const PHASE_MAX: Duration = Duration::from_secs(120);

/// One row of the table.
struct Row {
    fault: &'static str,
    tally: Tally,
    /// What the test allows, in words (`0`, `<= 7 (connections the cell held)`).
    allowed: String,
    note: String,
}

#[test]
fn faults_under_mixed_load() {
    let Some(venv) = venv_for(TEST, "gunicorn") else {
        return;
    };
    if !venv.join("bin/gunicorn").is_file() {
        skip(
            TEST,
            "no gunicorn in the test virtualenv (`cargo xtask test` installs it)",
        );
        return;
    }
    let mut site = MixedSite::new(&venv, 2);
    let mut problems = Vec::new();
    let mut rows = vec![
        kill_cell(&site, &mut problems),
        reloads(&site, &mut problems),
        recycling(&site, &mut problems),
        upstream_restart(&mut site, 2, &mut problems),
        upstream_restart(&mut site, 1, &mut problems),
        file_replaced(&site, &mut problems),
    ];
    match FaultyDir::new(site.site.path(), &faulty_files()) {
        Ok(dir) => rows.push(disk_eio(&site, &dir, &mut problems)),
        Err(why) => skip_part(TEST, "static root returning EIO", &why),
    }
    print_table(&rows);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Waits until every stream name of `load` has `n` more good answers than in `since`.
fn wait_served(load: &MixedLoad, since: &Tally, n: u64, what: &str) {
    let names: Vec<&'static str> = since.streams.keys().copied().collect();
    wait_until(Duration::from_secs(60), what, || {
        let now = load.tally();
        names.iter().all(|s| now.ok_of(s) >= since.ok_of(s) + n)
    });
}

/// Starts the load and waits until each of its streams has been served 20 times.
fn warm_load(p: &Portico, streams: &[Stream]) -> MixedLoad {
    let load = MixedLoad::start(p.addr, streams, PHASE_MAX, None);
    wait_until(Duration::from_secs(60), "every stream served", || {
        let t = load.tally();
        streams.iter().all(|s| t.ok_of(s.name) >= 20)
    });
    load
}

/// Checks that a phase had no failure; records a problem otherwise.
fn expect_none(fault: &str, tally: &Tally, failures: &[Failure], problems: &mut Vec<String>) {
    if tally.failures() > 0 {
        problems.push(format!(
            "{fault}: {} failures ({}): {}",
            tally.failures(),
            tally.failure_kinds(),
            summary(failures.iter())
        ));
    }
}

/// Failures grouped by what happened (the request's query left out), most frequent first.
fn summary<'a>(failures: impl Iterator<Item = &'a Failure>) -> String {
    let mut by: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for f in failures {
        let detail: String = f
            .detail
            .split('?')
            .next()
            .unwrap_or_default()
            .chars()
            .take(120)
            .collect();
        *by.entry(format!("{} {}: {detail}", f.stream, f.kind))
            .or_default() += 1;
    }
    let mut v: Vec<(String, u64)> = by.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.iter()
        .take(8)
        .map(|(k, n)| format!("\n  {n} x {k}"))
        .collect()
}

fn restarts(p: &Portico, reason: &str) -> u64 {
    let m = p.metrics();
    m.lines()
        .filter(|l| {
            l.starts_with("portico_cell_restarts_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn signal(pid: i32, sig: Signal) {
    kill_process(Pid::from_raw(pid).expect("a pid"), sig).expect("signal a cell");
}

/// SIGKILL to one cell: only requests on connections that cell held may fail.
fn kill_cell(site: &MixedSite, problems: &mut Vec<String>) -> Row {
    let p = site.portico(&Options {
        workers: 2,
        ..Options::default()
    });
    let load = warm_load(&p, &site.streams(2));
    // The cell with the most client connections; stopped first so the set of connections it
    // holds cannot change before the kill.
    let victim = p
        .cell_pids()
        .into_iter()
        .max_by_key(|&c| procs::client_ports(c, p.addr.port()).len())
        .expect("a cell");
    signal(victim, Signal::STOP);
    let held = procs::client_ports(victim, p.addr.port());
    let killed_at = Instant::now();
    signal(victim, Signal::KILL);
    wait_until(Duration::from_secs(20), "the killed cell replaced", || {
        let cells = p.cell_pids();
        cells.len() == 2 && !cells.contains(&victim)
    });
    p.wait_healthy(Duration::from_secs(20));
    // New connections after the kill, on both cells, all served.
    wait_served(&load, &load.tally(), 100, "the load served after the kill");
    let (tally, failures) = load.finish();
    let unexplained: Vec<&Failure> = failures
        .iter()
        .filter(|f| {
            !(f.local_port.is_some_and(|port| held.contains(&port))
                && f.conn_opened.is_some_and(|t| t < killed_at))
        })
        .collect();
    if !unexplained.is_empty() {
        problems.push(format!(
            "cell killed: {} failures not on the killed cell's connections: {}",
            unexplained.len(),
            summary(unexplained.into_iter())
        ));
    }
    if tally.failures() > held.len() as u64 {
        problems.push(format!(
            "cell killed: {} failures, more than the {} connections the cell held",
            tally.failures(),
            held.len()
        ));
    }
    Row {
        fault: "cell SIGKILL",
        allowed: format!("<= {} (connections it held)", held.len()),
        note: format!("failures: {}", tally.failure_kinds()),
        tally,
    }
}

/// Five SIGHUP reloads, each after the previous one replaced both cells: no failure.
fn reloads(site: &MixedSite, problems: &mut Vec<String>) -> Row {
    let p = site.portico(&Options {
        workers: 2,
        ..Options::default()
    });
    let load = warm_load(&p, &site.streams(2));
    for round in 1..=5 {
        let before = load.tally();
        p.signal(Signal::HUP);
        wait_until(Duration::from_secs(60), "the reload", || {
            restarts(&p, "reload") >= 2 * round
        });
        wait_served(&load, &before, 10, "the load served after the reload");
    }
    let (tally, failures) = load.finish();
    expect_none("5 reloads", &tally, &failures, problems);
    Row {
        fault: "5 SIGHUP reloads",
        allowed: "0".into(),
        note: format!("{} cell replacements", restarts(&p, "reload")),
        tally,
    }
}

/// `max_requests = 1000`: cells replaced every 1000 requests; no failure.
fn recycling(site: &MixedSite, problems: &mut Vec<String>) -> Row {
    let p = site.portico(&Options {
        workers: 2,
        max_requests: 1000,
        ..Options::default()
    });
    let load = warm_load(&p, &site.streams(2));
    wait_until(Duration::from_secs(90), "six recycles", || {
        restarts(&p, "max_requests") >= 6
    });
    let (tally, failures) = load.finish();
    expect_none("max_requests recycling", &tally, &failures, problems);
    Row {
        fault: "recycle every 1000 requests",
        allowed: "0".into(),
        note: format!("{} recycles", restarts(&p, "max_requests")),
        tally,
    }
}

/// An upstream server killed (SIGKILL) and started again. With two servers in the group the
/// other takes every request (a refused connect moves on, an unanswered GET is sent again):
/// no failure. With one, the proxy's requests fail (502) while it is down: reported, and every
/// request sent once it accepts again must be served.
fn upstream_restart(site: &mut MixedSite, servers: usize, problems: &mut Vec<String>) -> Row {
    let p = site.portico(&Options {
        workers: 2,
        servers,
        ..Options::default()
    });
    let load = warm_load(&p, &site.streams(2));
    let before = load.tally();
    let down_at = Instant::now();
    site.kill_upstream(0);
    // Down until the proxy stream has sent enough requests for every cell to meet it.
    let proxied = |t: &Tally| t.streams.get("proxy").map_or(0, StreamTally::requests);
    wait_until(
        Duration::from_secs(30),
        "proxy requests sent while the upstream is down",
        || proxied(&load.tally()) >= proxied(&before) + 50,
    );
    site.restart_upstream(0);
    let up_at = Instant::now();
    let down = up_at - down_at;
    wait_served(
        &load,
        &before,
        100,
        "the load served after the upstream restart",
    );
    let (tally, failures) = load.finish();
    let fault = if servers == 2 {
        expect_none("upstream restart (group of 2)", &tally, &failures, problems);
        "upstream killed, restarted (2 servers)"
    } else {
        let elsewhere: Vec<&Failure> = failures.iter().filter(|f| f.stream != "proxy").collect();
        if !elsewhere.is_empty() {
            problems.push(format!(
                "upstream restart (1 server): failures outside the proxy route: {}",
                summary(elsewhere.into_iter())
            ));
        }
        let late: Vec<&Failure> = failures.iter().filter(|f| f.started > up_at).collect();
        if !late.is_empty() {
            problems.push(format!(
                "upstream restart (1 server): requests sent after it was back failed: {}",
                summary(late.into_iter())
            ));
        }
        "upstream killed, restarted (1 server)"
    };
    Row {
        fault,
        allowed: if servers == 2 {
            "0"
        } else {
            "proxy route only"
        }
        .into(),
        note: format!(
            "down {:.1} s; proxy failures: {} ({}), {} of requests sent after it was back",
            down.as_secs_f64(),
            tally.streams.get("proxy").map_or(0, StreamTally::failures),
            tally.failure_kinds(),
            failures.iter().filter(|f| f.started > up_at).count()
        ),
        tally,
    }
}

/// Files under the static root removed and put back (by rename, with other contents) while
/// clients download them: each answer is one whole version or a 404, never mixed bytes.
fn file_replaced(site: &MixedSite, problems: &mut Vec<String>) -> Row {
    let versions = |len: usize| -> Vec<Arc<Vec<u8>>> {
        (0..2u8).map(|v| Arc::new(pattern(len, 10 + v))).collect()
    };
    let files = [
        ("swap.txt", versions(4096)),
        ("swap.bin", versions(1 << 20)),
    ];
    for (name, v) in &files {
        site.site.file(&format!("www/{name}"), &v[0]);
    }
    let p = site.portico(&Options {
        workers: 2,
        ..Options::default()
    });
    let mut streams = site.streams(1);
    for (name, bodies) in &files {
        for keepalive in [true, false] {
            streams.push(Stream::new(
                "replaced",
                keepalive,
                Check::OneOf {
                    path: format!("/static/{name}"),
                    bodies: bodies.clone(),
                },
            ));
        }
    }
    let load = warm_load(&p, &streams);
    let end = Instant::now() + Duration::from_secs(4);
    let mut swaps = 0;
    while Instant::now() < end {
        // Each version is requested a few times before the next swap.
        let seen = load.tally();
        wait_until(Duration::from_secs(30), "requests between swaps", || {
            let t = load.tally();
            t.streams.get("replaced").map_or(0, StreamTally::requests)
                >= seen
                    .streams
                    .get("replaced")
                    .map_or(0, StreamTally::requests)
                    + 5
        });
        swaps += 1;
        for (name, bodies) in &files {
            let path = site.site.path().join("www").join(name);
            std::fs::remove_file(&path).expect("remove a served file");
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, &*bodies[swaps % 2]).expect("write the next version");
            std::fs::rename(&tmp, &path).expect("rename it into place");
        }
    }
    wait_served(&load, &load.tally(), 20, "the load served after the swaps");
    let (tally, failures) = load.finish();
    expect_none("file replaced mid-serve", &tally, &failures, problems);
    let absent = tally
        .streams
        .get("replaced")
        .map_or(0, StreamTally::allowed_total);
    Row {
        fault: "file removed, replaced mid-serve",
        allowed: "0".into(),
        note: format!("{swaps} swaps; {absent} answered 404 in between"),
        tally,
    }
}

/// The files of the faulty disk: warm ones the load reads before the fault, cold ones only
/// after (their inodes looked up beforehand, so the open succeeds and the read fails).
fn faulty_files() -> Vec<(&'static str, &'static [u8])> {
    fn leak(v: Vec<u8>) -> &'static [u8] {
        Box::leak(v.into_boxed_slice())
    }
    vec![
        ("warm.txt", leak(pattern(4096, 20))),
        ("warm.bin", leak(pattern(300 << 10, 21))),
        ("cold.txt", leak(pattern(4096, 22))),
        ("cold.bin", leak(pattern(300 << 10, 23))),
        ("unseen.txt", leak(pattern(4096, 24))),
    ]
}

/// The static root's disk returns EIO: each request to it is answered with its bytes (from
/// the cell's cache) or a clean 5xx, the rest of the mix is untouched, and no cell dies.
fn disk_eio(site: &MixedSite, dir: &FaultyDir, problems: &mut Vec<String>) -> Row {
    let extra = format!(
        "[[route]]\nprefix = \"/faulty/\"\nstatic = {{ root = \"{}\" }}\n",
        dir.mount.display()
    );
    let p = site.portico(&Options {
        workers: 2,
        extra,
        ..Options::default()
    });
    let files: Vec<(String, Arc<Vec<u8>>)> = faulty_files()
        .into_iter()
        .map(|(n, b)| (format!("/faulty/{n}"), Arc::new(b.to_vec())))
        .collect();
    let faulty = |names: &[&str]| Check::Faulty {
        files: files
            .iter()
            .filter(|(path, _)| names.iter().any(|n| path.ends_with(n)))
            .cloned()
            .collect(),
    };
    let mut streams = site.streams(1);
    for keepalive in [true, false] {
        streams.push(Stream::new(
            "faulty-warm",
            keepalive,
            faulty(&["warm.txt", "warm.bin"]),
        ));
    }
    let load = warm_load(&p, &streams);
    for cold in ["cold.txt", "cold.bin"] {
        std::fs::metadata(dir.mount.join(cold)).expect("stat a cold file");
    }
    let cells = p.cell_pids();
    if let Err(e) = dir.fail() {
        problems.push(format!("EIO: could not fail the disk: {e}"));
    }
    let cold_streams: Vec<Stream> = [true, false]
        .into_iter()
        .map(|k| {
            Stream::new(
                "faulty-cold",
                k,
                faulty(&["cold.txt", "cold.bin", "unseen.txt"]),
            )
        })
        .collect();
    let cold = MixedLoad::start(p.addr, &cold_streams, PHASE_MAX, None);
    wait_until(Duration::from_secs(60), "cold files asked for", || {
        cold.tally().requests() >= 200
    });
    wait_served(&load, &load.tally(), 50, "the load served during the fault");
    let (cold_tally, cold_failures) = cold.finish();
    let (mut tally, failures) = load.finish();
    tally.streams.extend(cold_tally.streams.clone());
    let all: Vec<Failure> = failures.into_iter().chain(cold_failures).collect();
    expect_none("static root EIO", &tally, &all, problems);
    let served_5xx: u64 = tally.streams.values().map(StreamTally::allowed_total).sum();
    if served_5xx == 0 {
        problems.push("EIO: no request met the failing disk (no 5xx)".into());
    }
    let now: HashSet<i32> = p.cell_pids().into_iter().collect();
    if now != cells.iter().copied().collect() || restarts(&p, "crash") > 0 {
        problems.push(format!(
            "EIO: a cell died (cells {cells:?} -> {now:?}):\n{}",
            p.stderr_text()
        ));
    }
    Row {
        fault: "static root returns EIO",
        allowed: "0 (5xx from the faulty root counted apart)".into(),
        note: format!("{served_5xx} clean 5xx from the faulty root; cells survived"),
        tally,
    }
}

fn print_table(rows: &[Row]) {
    println!("\n| fault | requests | failures | per 1000 | allowed | note |");
    println!("|---|---:|---:|---:|---|---|");
    for r in rows {
        let (req, failed) = (r.tally.requests(), r.tally.failures());
        let per_1000 = if req == 0 {
            0.0
        } else {
            failed as f64 * 1000.0 / req as f64
        };
        println!(
            "| {} | {req} | {failed} | {per_1000:.3} | {} | {} |",
            r.fault, r.allowed, r.note
        );
    }
    println!();
}
