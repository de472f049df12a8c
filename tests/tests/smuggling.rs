//! Request smuggling, differential: every ambiguous request of `smuggle_cases` goes through a
//! proxy route to a raw-socket backend that records the bytes it receives and reads them with a
//! strict RFC 9112 reader. For each case Portico either refuses it (4xx, or 501 for a transfer
//! coding it does not implement) and closes, with nothing of it reaching the backend, or the
//! backend reads exactly the requests Portico answered for, each as RFC 9112 reads the client's
//! bytes. The same cases then go to the direct server (a WSGI app that reports what it got).
//! A table per suite is printed; any desync fails the test.
use std::time::Duration;

use portico_tests::smuggle::{RecordingBackend, Served, backend_view, run_suite};
use portico_tests::smuggle_cases::cases;
use portico_tests::*;

#[test]
fn proxy_differential_has_no_desyncs() {
    let backend = RecordingBackend::start();
    let route = format!("/=http://{}", backend.addr);
    let p = Portico::start(&["--workers", "1", "--proxy", &route]);
    let all = cases();
    let desyncs = run_suite(
        "proxy -> recording backend",
        p.addr,
        &all,
        || backend.clear_after(&p),
        |_| backend_view(&backend),
    );
    assert!(
        desyncs.is_empty(),
        "{} desyncs:\n{}",
        desyncs.len(),
        desyncs.join("\n")
    );
    // Portico is still serving after the whole suite.
    backend.clear_after(&p);
    let r = get(p.addr, "/after").unwrap();
    assert_eq!(r.status, 200);
    let (served, problems) = backend_view(&backend);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(served.len(), 1);
}

#[test]
fn a_broken_chunk_past_the_preread_closes_the_upstream_connection() {
    // Past the pre-read the body streams: the upstream has part of the request when the
    // framing error comes, so that connection must be closed, never reused.
    let backend = RecordingBackend::start();
    let route = format!("/=http://{}", backend.addr);
    let p = Portico::start(&["--workers", "1", "--proxy", &route]);
    assert_eq!(get(p.addr, "/warm").unwrap().status, 200);
    backend.clear_after(&p);
    let mut raw = b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..80 {
        raw.extend_from_slice(b"400\r\n");
        raw.extend_from_slice(&[b'x'; 1024]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"+5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut c = Conn::open(p.addr).unwrap();
    c.send(&raw).unwrap();
    let r = c.read_response("POST").unwrap();
    assert!(
        r.header("x-backend").is_none(),
        "the upstream answered: {}",
        r.status
    );
    assert!(r.status == 400 || r.status == 502, "status {}", r.status);
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "client connection left open"
    );
    wait_until(
        Duration::from_secs(10),
        "the upstream connection holding part of the request is closed",
        || backend.closed_unfinished() == 1 && backend.unfinished_open() == 0,
    );
    let (served, _) = backend_view(&backend);
    assert!(served.is_empty(), "served: {served:?}");
    // The next request is read cleanly by the backend.
    backend.clear_after(&p);
    assert_eq!(get(p.addr, "/next").unwrap().status, 200);
    let (served, problems) = backend_view(&backend);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        served.iter().map(|s| s.target.as_str()).collect::<Vec<_>>(),
        ["/next"]
    );
}

/// Reports what it got (method, raw target, Host, body as latin-1) and marks its answers.
const ECHO_APP: &str = r#"
import json

def application(environ, start_response):
    body = environ["wsgi.input"].read()
    out = json.dumps({
        "m": environ["REQUEST_METHOD"],
        "u": environ.get("RAW_URI", ""),
        "h": environ.get("HTTP_HOST"),
        "b": body.decode("latin-1"),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("X-Backend", "1")])
    return [out]
"#;

/// The direct server: the WSGI echo app on `/`.
pub fn echo_server(site: &Site) -> Portico {
    site.file("app/echo.py", ECHO_APP.as_bytes());
    let cfg = format!(
        "[server]\nworkers = 1\n[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"echo:application\", chdir = \"{}\" }}\n",
        site.root("app")
    );
    site.file("p.toml", cfg.as_bytes());
    Portico::start(&["-c", &site.root("p.toml")])
}

#[test]
fn direct_server_reads_every_case_as_rfc_9112() {
    if venv_for(
        "direct_server_reads_every_case_as_rfc_9112",
        "nothing but Python",
    )
    .is_none()
    {
        return;
    }
    let site = Site::new();
    let p = echo_server(&site);
    let all = cases();
    let desyncs = run_suite(
        "direct WSGI echo app",
        p.addr,
        &all,
        || (),
        |client| {
            let mut served = Vec::new();
            let mut problems = Vec::new();
            for (_, _, body) in client.responses.iter().filter(|r| r.1) {
                match serde_json::from_slice::<serde_json::Value>(body) {
                    Ok(v) => served.push(Served {
                        method: v["m"].as_str().unwrap_or_default().into(),
                        target: v["u"].as_str().unwrap_or_default().into(),
                        host: v["h"].as_str().map(Into::into),
                        body: v["b"]
                            .as_str()
                            .unwrap_or_default()
                            .chars()
                            .map(|c| c as u8)
                            .collect(),
                    }),
                    Err(e) => problems.push(format!("echo body: {e}")),
                }
            }
            (served, problems)
        },
    );
    assert!(
        desyncs.is_empty(),
        "{} cases read differently:\n{}",
        desyncs.len(),
        desyncs.join("\n")
    );
    assert_eq!(get(p.addr, "/after").unwrap().status, 200);
    assert!(
        !p.stderr_text().contains("Traceback"),
        "{}",
        p.stderr_text()
    );
}
