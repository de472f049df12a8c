//! SIGHUP reloads under keep-alive load: a cell being replaced answers what its clients are
//! already sending (with `Connection: close`) instead of closing under them.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portico_tests::*;
use rustix::process::Signal;

const APP: &str = "def application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'dynamic']\n";

/// Keep-alive clients that reopen only when the server says `Connection: close`; every error
/// is a failure.
struct KeepAliveLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl KeepAliveLoad {
    fn start(addr: std::net::SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|i| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let (path, want): (&str, &[u8]) = if i % 2 == 0 {
                    ("/static/a.txt", b"payload")
                } else {
                    ("/app", b"dynamic")
                };
                std::thread::spawn(move || {
                    // Bounded in time whatever happens to the test.
                    let deadline = Instant::now() + Duration::from_secs(120);
                    let mut conn: Option<Conn> = None;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match Conn::open(addr) {
                                Ok(c) => conn.insert(c),
                                Err(e) => {
                                    eprintln!("connect failed: {e}");
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                            },
                        };
                        match c.request("GET", path, &[]) {
                            Ok(r) if r.status == 200 && r.body == want => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if r.header("connection") == Some("close") {
                                    conn = None;
                                }
                            }
                            Ok(r) => {
                                eprintln!("bad response {} on {path}", r.status);
                                failed.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                            Err(e) => {
                                eprintln!("request on {path} failed: {e}");
                                failed.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                        }
                    }
                })
            })
            .collect();
        KeepAliveLoad {
            stop,
            ok,
            failed,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Waits until `cond` holds, panicking with the server's log after `within`.
fn wait_for(p: &Portico, within: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} never happened:\n{}",
            p.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
    let load = KeepAliveLoad::start(p.addr, 4);
    wait_for(&p, Duration::from_secs(10), "load starting", || {
        load.ok() > 0
    });
    let reloads =
        |p: &Portico| metric_sum(&p.metrics(), "portico_cell_restarts_total{cell=") as u64;
    for round in 1..=5u64 {
        let before = load.ok();
        p.signal(Signal::HUP);
        // Both cells replaced (two restarts per round), and traffic flowed after it.
        wait_for(&p, Duration::from_secs(30), "the reload", || {
            reloads(&p) >= 2 * round
        });
        wait_for(
            &p,
            Duration::from_secs(10),
            "requests after the reload",
            || load.ok() > before,
        );
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
