//! SIGHUP reloads under keep-alive load: a cell being replaced answers what its clients are
//! already sending (with `Connection: close`) instead of closing under them.
use std::time::Duration;

use portico_tests::*;
use rustix::process::Signal;

const APP: &str = "def application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'dynamic']\n";

#[test]
fn five_reloads_under_keepalive_load_fail_no_request() {
    let site = Site::new();
    site.file("www/a.txt", b"payload");
    site.file("app/app.py", APP.as_bytes());
    let cfg = format!(
        "[server]\nworkers = 2\n[[route]]\nprefix = \"/static/\"\nstatic = {{ root = \"{}\" }}\n[[route]]\nprefix = \"/app\"\nwsgi = {{ app = \"app:application\", chdir = \"{}\" }}\n",
        site.root("www"),
        site.root("app")
    );
    site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("p.toml")]);
    let load = Load::start(
        p.addr,
        4,
        true,
        &[("/static/a.txt", b"payload"), ("/app", b"dynamic")],
    );
    wait_until(Duration::from_secs(10), "load starting", || {
        load.ok_so_far() > 0
    });
    let reloads =
        |p: &Portico| metric_sum(&p.metrics(), "portico_cell_restarts_total{cell=") as u64;
    for round in 1..=5u64 {
        let before = load.ok_so_far();
        p.signal(Signal::HUP);
        // Both cells replaced (two restarts per round), and traffic flowed after it.
        wait_until(Duration::from_secs(30), "the reload", || {
            reloads(&p) >= 2 * round
        });
        wait_until(Duration::from_secs(10), "requests after the reload", || {
            load.ok_so_far() > before
        });
    }
    let (ok, failed) = load.finish();
    assert_eq!(
        failed,
        0,
        "reloads under keep-alive load failed {failed} of {} requests:\n{}",
        ok + failed,
        p.stderr_text()
    );
    assert_eq!(
        metric_sum(
            &p.metrics(),
            "portico_cell_restarts_total{cell=\"0\",reason=\"reload\"}"
        ),
        5.0
    );
}
