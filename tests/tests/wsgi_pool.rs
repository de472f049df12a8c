//! WSGI pools end to end: timeouts, the queue, recycling, reload, import errors, script
//! files, the validator, the access log, and static routes beside busy Python threads.
mod wsgi_app;

use std::process::Command;
use std::time::{Duration, Instant};

use portico_tests::*;
use wsgi_app::{APP, serve};

#[test]
fn wsgi_request_timeout_gives_504_and_recycles_a_stuck_cell() {
    let site = Site::new();
    let p = serve(
        &site,
        "/",
        ", threads = 2, request_timeout = \"1s\", request_timeout_grace = \"2s\"",
        &[],
    );
    // A Python-level sleep: RequestTimeout is raised in it; the thread comes back.
    let t = Instant::now();
    let r = get(p.addr, "/slow?5").unwrap();
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(get(p.addr, "/hello").unwrap().status, 200);
    p.wait_stderr(Duration::from_secs(5), "ran past request_timeout");
    assert!(
        p.stderr_text().contains("in application"),
        "the stuck stack names the app frame"
    );

    // Stuck in C (no bytecode boundary): 504, then the cell is replaced after the grace.
    let r = get(p.addr, "/stuck?60").unwrap();
    assert_eq!(r.status, 504);
    let mut served = 0;
    wait_until(Duration::from_secs(15), "a recycle after the grace", || {
        // Every request meanwhile is answered, by the other cell or the stuck cell's spare thread.
        assert_eq!(get(p.addr, "/hello").unwrap().status, 200);
        served += 1;
        (0..2).any(|c| {
            p.metric(&format!(
                "portico_cell_restarts_total{{cell=\"{c}\",reason=\"timeout\"}}"
            ))
            .unwrap_or(0.0)
                >= 1.0
        })
    });
    assert!(served > 0);
    let m = p.metrics();
    assert!(m.contains("portico_wsgi_request_timeouts_total"), "{m}");
    for _ in 0..20 {
        assert_eq!(get(p.addr, "/hello").unwrap().status, 200);
    }
}

#[test]
fn wsgi_full_queue_gives_503_with_retry_after() {
    let site = Site::new();
    let p = serve(
        &site,
        "/",
        ", threads = 1, max_queue = 1",
        &["--workers", "1"],
    );
    let addr = p.addr;
    let busy = std::thread::spawn(move || get(addr, "/slow?2").unwrap().status);
    // The gauges are published five times a second: the slow request holds the only thread,
    // then the next one waits in the queue.
    p.wait_metrics(Duration::from_secs(2), |m| {
        metric_sum(m, "portico_wsgi_threads_busy{") >= 1.0
    });
    let queued = std::thread::spawn(move || get(addr, "/hello").unwrap().status);
    p.wait_metrics(Duration::from_secs(2), |m| {
        metric_sum(m, "portico_wsgi_queue_depth{") >= 1.0
    });
    let r = get(p.addr, "/hello").unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(busy.join().unwrap(), 200);
    assert_eq!(queued.join().unwrap(), 200);
    assert!(
        p.metric("portico_wsgi_rejected_total{cell=\"0\",reason=\"queue_full\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn wsgi_max_requests_recycles_without_errors() {
    let site = Site::new();
    let p = serve(&site, "/", ", max_requests = 15", &["--workers", "1"]);
    let first = get(p.addr, "/pid").unwrap().text();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pids = std::collections::HashSet::new();
    while pids.len() < 2 {
        let r = get(p.addr, "/pid").unwrap();
        assert_eq!(r.status, 200, "no client sees an error during recycling");
        pids.insert(r.text());
        assert!(Instant::now() < deadline, "never recycled");
    }
    assert!(pids.contains(&first) || pids.len() >= 2);
    p.wait_metrics(Duration::from_secs(5), |m| {
        metric_value(
            m,
            "portico_cell_restarts_total{cell=\"0\",reason=\"max_requests\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
    });
}

#[test]
fn wsgi_lifetime_and_inactivity_recycle_cells() {
    let site = Site::new();
    let p = serve(
        &site,
        "/",
        ", lifetime = \"2s\", inactivity_timeout = \"1s\"",
        &["--workers", "1"],
    );
    wait_until(Duration::from_secs(20), "a lifetime recycle", || {
        assert_eq!(get(p.addr, "/hello").unwrap().status, 200);
        p.metric("portico_cell_restarts_total{cell=\"0\",reason=\"lifetime\"}")
            .unwrap_or(0.0)
            >= 1.0
    });
    // Now idle: the inactivity limit replaces the cell too.
    p.wait_metrics(Duration::from_secs(20), |m| {
        metric_value(
            m,
            "portico_cell_restarts_total{cell=\"0\",reason=\"inactivity\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
    });
    assert_eq!(get(p.addr, "/hello").unwrap().status, 200);
}

#[test]
fn wsgi_200_concurrent_keepalive_clients() {
    let site = Site::new();
    let p = serve(&site, "/", "", &[]);
    let addr = p.addr;
    let threads: Vec<_> = (0..200)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Conn::open(addr).unwrap();
                for _ in 0..10 {
                    let r = c.request("GET", "/hello", &[]).unwrap();
                    assert_eq!(r.text(), "Hello, World!");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn wsgi_reload_replaces_cells_when_sources_change() {
    let site = Site::new();
    site.file("app/greet.py", b"WORD = 'v1'\n");
    site.file(
        "app/main.py",
        b"import greet\ndef application(e, s):\n    s('200 OK', [('Content-Type', 'text/plain')])\n    return [greet.WORD.encode()]\n",
    );
    let cfg = format!(
        "[server]\nworkers = 2\n[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"main:application\", chdir = \"{}\", reload = true }}\n",
        site.root("app")
    );
    site.file("portico.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("portico.toml")]);
    assert_eq!(get(p.addr, "/").unwrap().text(), "v1");
    let greet = site.file("app/greet.py", b"WORD = 'v2'\n");
    // Cells compare modification times: make the edit's one differ whatever the file system's
    // timestamp granularity (instead of sleeping past it).
    std::fs::File::options()
        .write(true)
        .open(&greet)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() + Duration::from_secs(2)))
        .unwrap();
    wait_until(Duration::from_secs(20), "the new code served", || {
        let r = get(p.addr, "/").unwrap();
        assert_eq!(r.status, 200);
        r.text() == "v2"
    });
    // Both cells were replaced, and counted under the reason that says why.
    let reason = "portico_cell_restarts_total{cell=\"0\",reason=\"source_change\"}";
    let text = p.wait_metrics(Duration::from_secs(20), |m| {
        metric_sum(
            m,
            "portico_cell_restarts_total{cell=\"1\",reason=\"source_change\"}",
        ) >= 1.0
    });
    assert_eq!(metric_value(&text, reason), Some(1.0), "{text}");
}

/// `portico serve APP` in the site's directory must fail; returns its stderr.
fn serve_fails(site: &Site, app: &str) -> String {
    let out = Command::new(portico_bin())
        .current_dir(site.path())
        .args(["serve", app, "--listen", "127.0.0.1:0", "--admin", "off"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit status 3 for an app that fails to import"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn wsgi_import_error_stops_startup_with_the_traceback() {
    let site = Site::new();
    site.file("broken.py", b"def application(e, s):\n    return [b'x'\n");
    let err = serve_fails(&site, "broken:application");
    assert!(err.contains("SyntaxError"), "{err}");
    assert!(err.contains("broken.py"), "{err}");
    assert!(!err.contains("listening on"), "nothing is served:\n{err}");

    site.file("raises.py", b"import not_a_module_anywhere\n");
    let err = serve_fails(&site, "raises:app");
    assert!(err.contains("ModuleNotFoundError"), "{err}");

    // `portico check` imports the app too.
    site.file(
        "c.toml",
        format!(
            "[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"broken:application\", chdir = \"{}\" }}\n",
            site.path().display()
        )
        .as_bytes(),
    );
    let out = Command::new(portico_bin())
        .args(["check", "-c", &site.root("c.toml")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SyntaxError"));
}

#[test]
fn wsgi_script_file_and_environ_extras() {
    let site = Site::new();
    site.file(
        "site/app.wsgi",
        b"import os\ndef application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [(environ['DEPLOY'] + ' ' + str(__debug__)).encode()]\n",
    );
    let cfg = format!(
        "[[route]]\nprefix = \"/\"\nwsgi = {{ script = \"{}\", environ = {{ DEPLOY = \"blue\" }}, optimize = 1 }}\n",
        site.root("site/app.wsgi")
    );
    site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("p.toml")]);
    assert_eq!(get(p.addr, "/").unwrap().text(), "blue False");
}

/// Everything the validator checks, on one path per feature; any violation raises in the app.
const VALIDATED: &str = r#"
import sys, warnings
from wsgiref.validate import validator, WSGIWarning
warnings.simplefilter("error", WSGIWarning)

def inner(environ, start_response):
    path = environ["PATH_INFO"]
    inp = environ["wsgi.input"]
    if path == "/input":
        a = inp.read(3)
        b = inp.readline()
        c = inp.readline(2)
        d = inp.readlines()
        e = list(iter(inp))
        body = repr((a, b, c, d, e, inp.read(100))).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    if path == "/write":
        w = start_response("200 OK", [("Content-Type", "text/plain")])
        w(b"w")
        return [b"x"]
    if path == "/exc":
        try:
            raise KeyError("k")
        except KeyError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"e"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 1024)
    if path == "/errors":
        environ["wsgi.errors"].write("via errors\n")
        environ["wsgi.errors"].writelines(["a\n", "b\n"])
        environ["wsgi.errors"].flush()
        start_response("204 No Content", [])
        return []
    start_response("200 OK", [("Content-Type", "text/plain")])
    def gen():
        yield b"gen"
    return gen()

application = validator(inner)
"#;

#[test]
fn wsgi_validator_sees_no_violation() {
    let site = Site::new();
    site.file("v/validated.py", VALIDATED.as_bytes());
    let cfg = format!(
        "[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"validated:application\", chdir = \"{}\" }}\n",
        site.root("v")
    );
    site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("p.toml")]);
    let mut c = Conn::open(p.addr).unwrap();
    c.send(b"POST /input HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\r\nabcdef\nghij\nkl\nmn\nop").unwrap();
    let r = c.read_response("POST").unwrap();
    assert_eq!(r.status, 200, "{}", p.stderr_text());
    assert_eq!(
        r.text(),
        "(b'abc', b'def\\n', b'gh', [b'ij\\n', b'kl\\n', b'mn\\n', b'op'], [], b'')"
    );
    for (path, status, body) in [
        ("/write", 200, "wx"),
        ("/exc", 500, "e"),
        ("/errors", 204, ""),
        ("/", 200, "gen"),
    ] {
        let r = c.request("GET", path, &[]).unwrap();
        assert_eq!(
            (r.status, r.text().as_str()),
            (status, body),
            "{path}: {}",
            p.stderr_text()
        );
    }
    let r = c.request("GET", "/file", &[]).unwrap();
    assert_eq!(r.body, VALIDATED.as_bytes());
    let r = c.request("HEAD", "/", &[]).unwrap();
    assert_eq!(r.status, 200);
    p.wait_stderr(Duration::from_secs(5), "via errors");
    let log = p.stderr_text();
    assert!(
        !log.contains("AssertionError") && !log.contains("WSGIWarning"),
        "{log}"
    );
    assert!(log.contains("via errors"));
}

#[test]
fn wsgi_access_log_counts_streamed_bytes() {
    let site = Site::new();
    let log = site.root("access.log");
    let p = serve(&site, "/", "", &["--access-log", &log]);
    let mut c = Conn::open(p.addr).unwrap();
    assert_eq!(c.request("GET", "/gen", &[]).unwrap().body.len(), 35);
    assert_eq!(c.request("GET", "/hello", &[]).unwrap().status, 200);
    wait_until(
        Duration::from_secs(5),
        "both lines in the access log",
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("\"GET /gen HTTP/1.1\" 200 35 ")
                && text.contains("\"GET /hello HTTP/1.1\" 200 13 ")
        },
    );
}

#[test]
fn static_routes_are_never_blocked_by_python_work() {
    let site = Site::new();
    site.file("www/a.txt", b"static bytes");
    site.file("app/app.py", APP.as_bytes());
    let cfg = format!(
        "[server]\nworkers = 1\n[[route]]\nprefix = \"/static/\"\nstatic = {{ root = \"{}\" }}\n[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"app:application\", chdir = \"{}\", threads = 1 }}\n",
        site.root("www"),
        site.root("app")
    );
    site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("p.toml")]);
    let addr = p.addr;
    // The only Python thread of the only cell is busy for ~3 s.
    let slow = std::thread::spawn(move || get(addr, "/slow?3").unwrap().status);
    p.wait_metrics(Duration::from_secs(2), |m| {
        metric_sum(m, "portico_wsgi_threads_busy{") >= 1.0
    });
    for _ in 0..20 {
        let t = Instant::now();
        let r = get(p.addr, "/static/a.txt").unwrap();
        assert_eq!(r.text(), "static bytes");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "static waited on Python: {:?}",
            t.elapsed()
        );
    }
    assert_eq!(slow.join().unwrap(), 200);
}
