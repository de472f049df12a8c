//! Recycling on ASGI routes (`max_requests`, `lifetime`, `reload`) and SIGHUP reloads against the real
//! binary, with a raw ASGI app (fixture in `asgi_cell_app/`) that writes its lifespan events
//! to a file: the cell is replaced with no failed request, and the old cell's lifespan
//! shutdown and the new cell's startup both run; and the lifespan runs in the cells only,
//! never in the check before them.
use std::time::{Duration, Instant};

use portico_tests::*;
use rustix::process::Signal;

const APP: &str = include_str!("asgi_cell_app/cellapp.py");

/// portico with one cell serving the fixture at `/`, with `extra` keys in its asgi table.
fn serve(site: &Site, extra: &str) -> Portico {
    serve_cells(site, 1, extra)
}

fn serve_cells(site: &Site, workers: usize, extra: &str) -> Portico {
    site.file("cellapp.py", APP.as_bytes());
    site.file(
        "portico.toml",
        format!("[server]\nworkers = {workers}\n[[route]]\nprefix = \"/\"\nasgi = {{ app = \"cellapp:app\"{extra} }}\n")
            .as_bytes(),
    );
    Portico::start(&["-c", &site.root("portico.toml")])
}

/// The pid of the cell that answered a request to `/` (which must be a 200).
fn answering_pid(p: &Portico) -> u64 {
    let r = get(p.addr, "/").unwrap();
    assert_eq!(r.status, 200, "no request fails: {}", r.text());
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    v["pid"].as_u64().unwrap()
}

fn lifespan_log(site: &Site) -> String {
    std::fs::read_to_string(site.path().join("lifespan.log")).unwrap_or_default()
}

/// Waits until the lifespan log has every one of `lines`.
fn wait_lifespan(site: &Site, lines: &[String]) {
    let seen = poll_until(Duration::from_secs(20), || {
        let log = lifespan_log(site);
        lines.iter().all(|l| log.lines().any(|x| x == l))
    });
    assert!(
        seen,
        "{lines:?} not all in lifespan.log:\n{}",
        lifespan_log(site)
    );
}

/// Asks `/` until a pid other than `first` answers (every answer a 200); returns it.
fn next_pid(p: &Portico, first: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let pid = answering_pid(p);
        if pid != first {
            return pid;
        }
        assert!(Instant::now() < deadline, "the cell was never replaced");
    }
}

/// Waits for cell 0's restart counter for `reason` to show the recycle.
fn wait_restart(p: &Portico, reason: &str) {
    let series = format!("portico_cell_restarts_total{{cell=\"0\",reason=\"{reason}\"}}");
    p.wait_metrics(Duration::from_secs(5), |m| {
        metric_value(m, &series).unwrap_or(0.0) >= 1.0
    });
}

#[test]
fn asgi_max_requests_recycles_without_errors() {
    let site = Site::new();
    let p = serve(&site, ", max_requests = 15");
    let first = answering_pid(&p);
    let second = next_pid(&p, first, Duration::from_secs(20));
    wait_lifespan(
        &site,
        &[
            format!("startup {first}"),
            format!("shutdown {first}"),
            format!("startup {second}"),
        ],
    );
    wait_restart(&p, "max_requests");
}

#[test]
fn asgi_lifetime_recycles_the_cell() {
    let site = Site::new();
    let p = serve(&site, ", lifetime = \"2s\"");
    let first = answering_pid(&p);
    let second = next_pid(&p, first, Duration::from_secs(20));
    wait_lifespan(
        &site,
        &[format!("shutdown {first}"), format!("startup {second}")],
    );
    wait_restart(&p, "lifetime");
}

#[test]
fn asgi_sighup_replaces_cells_through_their_lifespan() {
    let site = Site::new();
    let p = serve(&site, "");
    let first = answering_pid(&p);
    p.signal(Signal::HUP);
    let second = next_pid(&p, first, Duration::from_secs(20));
    wait_lifespan(
        &site,
        &[
            format!("startup {first}"),
            format!("shutdown {first}"),
            format!("startup {second}"),
        ],
    );
}

#[test]
fn asgi_lifespan_runs_once_per_cell_and_nowhere_else() {
    let site = Site::new();
    let p = serve_cells(&site, 2, "");
    p.wait_metrics(Duration::from_secs(20), |m| {
        metric_sum(m, "portico_cell_up{") == 2.0
    });
    let mut want: Vec<String> = p
        .cell_pids()
        .iter()
        .map(|pid| format!("startup {pid}"))
        .collect();
    want.sort();
    assert_eq!(want.len(), 2);
    let mut lines: Vec<String> = lifespan_log(&site).lines().map(String::from).collect();
    lines.sort();
    assert_eq!(
        lines, want,
        "one startup per cell, none in the import check"
    );
}

#[test]
fn asgi_reload_replaces_the_cell_when_a_source_changes() {
    let site = Site::new();
    let p = serve(&site, ", reload = true");
    let first = answering_pid(&p);
    // Cells compare modification times: make the edit's one differ whatever the file system's
    // timestamp granularity (instead of sleeping past it).
    let app = site.file("cellapp.py", APP.as_bytes());
    std::fs::File::options()
        .write(true)
        .open(&app)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() + Duration::from_secs(2)))
        .unwrap();
    let second = next_pid(&p, first, Duration::from_secs(20));
    wait_lifespan(
        &site,
        &[format!("shutdown {first}"), format!("startup {second}")],
    );
    wait_restart(&p, "source_change");
}
