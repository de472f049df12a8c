//! ASGI routes (`asgi = { app = ... }`, `portico serve APP --interface`) against the real
//! binary with Starlette and raw ASGI callables (fixture in `asgi_app/`): the scope, streamed
//! request and response bodies, background tasks, lifespan startup and shutdown,
//! `http.disconnect`, `http.response.trailers`, the app errors that must give a 500 and never a hung connection,
//! max_concurrency, request_timeout, startup failures and the interface autodetection.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portico_tests::*;

const APP: &str = include_str!("asgi_app/asgiapp.py");

fn venv_or_skip(test: &str) -> Option<PathBuf> {
    venv_for(test, "Starlette")
}

fn site() -> Site {
    let site = Site::new();
    site.file("asgiapp.py", APP.as_bytes());
    site
}

/// Starts portico on `asgiapp:{attr}` mounted at `prefix` with `extra` keys in the asgi table.
fn serve(site: &Site, venv: &Path, prefix: &str, attr: &str, extra: &str) -> Portico {
    site.file(
        "portico.toml",
        format!(
            "[server]\nworkers = 1\n[[route]]\nprefix = \"{prefix}\"\nasgi = {{ app = \"asgiapp:{attr}\", venv = \"{}\"{extra} }}\n",
            venv.display()
        )
        .as_bytes(),
    );
    Portico::start(&["-c", &site.root("portico.toml")])
}

fn read_file(site: &Site, name: &str) -> String {
    std::fs::read_to_string(site.path().join(name)).unwrap_or_default()
}

/// Reads from `c` until `needle` has arrived; returns everything read.
fn read_until(c: &mut Conn, needle: &str) -> String {
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains(needle) {
        got.extend(c.read_some(1).unwrap_or_else(|e| {
            panic!(
                "waiting for {needle:?}: {e}; got {:?}",
                String::from_utf8_lossy(&got)
            )
        }));
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn asgi_scope_state_and_lifespan_events() {
    let Some(venv) = venv_or_skip("asgi_scope_state_and_lifespan_events") else {
        return;
    };
    let site = site();
    let mut p = serve(&site, &venv, "/mnt/", "app", ", root_path = \"/proxy\"");

    // lifespan.startup ran in the cell, and its state reaches the request scopes.
    let r = get(p.addr, "/mnt/hello").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hi from lifespan"));
    let cell = p.cell_pids()[0];
    assert!(
        read_file(&site, "lifespan.log").contains(&format!("startup {cell}")),
        "{}",
        read_file(&site, "lifespan.log")
    );

    let r = request(
        p.addr,
        "GET",
        "/mnt/scope?x=1%202&y",
        &[("X-First", "a"), ("x-second", "b")],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    for want in [
        r#""type":"http""#,
        r#""asgi":{"version":"3.0","spec_version":"2.4"}"#,
        r#""http_version":"1.1""#,
        r#""method":"GET""#,
        r#""scheme":"http""#,
        r#""path":"/proxy/mnt/scope""#,
        r#""raw_path":"/proxy/mnt/scope""#,
        r#""query_string":"x=1%202&y""#,
        r#""root_path":"/proxy/mnt""#,
        r#""headers":[["host","test"],["x-first","a"],["x-second","b"]]"#,
        r#""client":"127.0.0.1""#,
        &format!(r#""server_port":{}"#, p.addr.port()),
        r#""extensions":{"http.response.trailers":{}}"#,
    ] {
        assert!(t.contains(want), "{want} not in {t}");
    }
    // The path is percent-decoded (Starlette routes on it); raw_path is not.
    let r = get(p.addr, "/mnt/sc%6Fpe").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert!(t.contains(r#""path":"/proxy/mnt/scope""#), "{t}");
    assert!(t.contains(r#""raw_path":"/proxy/mnt/sc%6Fpe""#), "{t}");

    // lifespan.shutdown runs in the cell when it stops.
    p.signal(rustix::process::Signal::TERM);
    assert!(p.wait_exit(Duration::from_secs(20)).is_some());
    assert!(
        read_file(&site, "lifespan.log").contains(&format!("shutdown {cell}")),
        "{}",
        read_file(&site, "lifespan.log")
    );
}

#[test]
fn asgi_streams_request_and_response_bodies() {
    let Some(venv) = venv_or_skip("asgi_streams_request_and_response_bodies") else {
        return;
    };
    let site = site();
    let p = serve(&site, &venv, "/", "app", "");

    // Each piece of a chunked upload is counted back before the next one is sent: the app
    // reads the body as it comes and its answer streams out as it is sent.
    let mut c = Conn::open(p.addr).unwrap();
    c.send(b"POST /count HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\naaaa\r\n")
        .unwrap();
    let got = read_until(&mut c, "4\n");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    c.send(b"6\r\nbbbbbb\r\n").unwrap();
    read_until(&mut c, "10\n");
    c.send(b"0\r\n\r\n").unwrap();
    read_until(&mut c, "end\n");

    // A streamed response is seen before the app sends its end.
    let mut c = Conn::open(p.addr).unwrap();
    c.send(raw_request("GET", "/gated", &[]).as_bytes())
        .unwrap();
    let got = read_until(&mut c, "first\n");
    assert!(!got.contains("second"), "{got}");
    site.file("gate-stream", b"");
    read_until(&mut c, "second\n");

    // A larger body in one request is counted whole.
    let body = vec![b'z'; 300_000];
    let mut c = Conn::open(p.addr).unwrap();
    let mut req = format!(
        "POST /count HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    c.send(&req).unwrap();
    let got = read_until(&mut c, "end\n");
    assert!(got.contains("300000\n"), "{got}");
}

#[test]
fn asgi_response_trailers() {
    let Some(venv) = venv_or_skip("asgi_response_trailers") else {
        return;
    };
    let site = site();
    let p = serve(&site, &venv, "/", "app", "");
    let te = [("TE", "trailers")];
    let pairs = |v: &[(String, String)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    };
    let want = vec![
        ("x-checksum".to_string(), "abc123".to_string()),
        ("x-count".to_string(), "2".to_string()),
    ];

    // A client that accepts trailers gets the app's fields after the last chunk.
    let mut c = Conn::open(p.addr).unwrap();
    let r = c.request("GET", "/raw/trailers", &te).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "part one\npart two\n"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(pairs(&r.trailers), want);
    // Without `TE: trailers` they are dropped and the body is intact (same connection).
    let r = c.request("GET", "/raw/trailers", &[]).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "part one\npart two\n"));
    assert!(r.trailers.is_empty(), "{:?}", r.trailers);
    // A body of one piece is sent chunked too, to carry the trailers.
    let r = c.request("GET", "/raw/trailers?whole=1", &te).unwrap();
    assert_eq!(r.text(), "all of it\n");
    assert_eq!(pairs(&r.trailers), want);
    // The app's Content-Length gives way to chunked framing, which carries the trailers; a
    // client that takes no trailers keeps the length.
    let r = c
        .request("GET", "/raw/trailers?whole=1&length=1", &te)
        .unwrap();
    assert_eq!(r.text(), "all of it\n");
    assert_eq!(r.header("content-length"), None);
    assert_eq!(pairs(&r.trailers), want);
    let r = c
        .request("GET", "/raw/trailers?whole=1&length=1", &[])
        .unwrap();
    assert_eq!(
        (r.text().as_str(), r.header("content-length")),
        ("all of it\n", Some("10"))
    );
    // A field the Trailer header does not name is dropped (said in the log).
    let r = c.request("GET", "/raw/trailers?undeclared=1", &te).unwrap();
    assert_eq!(pairs(&r.trailers), want);
    p.wait_stderr(Duration::from_secs(5), "trailer field x-undeclared dropped");

    // Body after the trailers, and trailers without `trailers: True`: the app's send raises
    // (logged); the response already complete went out whole and the connection serves on.
    let r = c.request("GET", "/raw/body_after_trailers", &te).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "body\n"));
    assert_eq!(pairs(&r.trailers), [("x-count".into(), "1".into())]);
    p.wait_stderr(
        Duration::from_secs(5),
        "http.response.body sent after http.response.trailers",
    );
    let r = c.request("GET", "/raw/trailers_unannounced", &te).unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "no trailers promised\n")
    );
    assert!(r.trailers.is_empty(), "{:?}", r.trailers);
    p.wait_stderr(
        Duration::from_secs(5),
        "http.response.trailers sent without trailers: True in http.response.start",
    );
    let r = c.request("GET", "/hello", &[]).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hi from lifespan"));

    // Trailers before the last body piece: an error mid-response, so the connection closes
    // without the body's end (no hung connection).
    let mut c = Conn::open(p.addr).unwrap();
    c.send(raw_request("GET", "/raw/trailers_early", &te).as_bytes())
        .unwrap();
    read_until(&mut c, "more to come\n");
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "the connection is closed"
    );
    p.wait_stderr(
        Duration::from_secs(5),
        "http.response.trailers sent before the last http.response.body",
    );
}

#[test]
fn asgi_background_task_and_disconnect() {
    let Some(venv) = venv_or_skip("asgi_background_task_and_disconnect") else {
        return;
    };
    let site = site();
    let p = serve(&site, &venv, "/", "app", "");

    // The response is complete before the background task may run; then it runs.
    let r = get(p.addr, "/background").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "queued"));
    assert_eq!(read_file(&site, "bg.log"), "");
    site.file("gate-bg", b"");
    wait_until(Duration::from_secs(10), "the background task", || {
        read_file(&site, "bg.log").contains("background ran")
    });

    // A client that leaves mid-stream: the app's receive() gives http.disconnect.
    let mut c = Conn::open(p.addr).unwrap();
    c.send(raw_request("GET", "/raw/disconnect", &[]).as_bytes())
        .unwrap();
    read_until(&mut c, "tick\n");
    drop(c);
    wait_until(
        Duration::from_secs(10),
        "http.disconnect seen by the app",
        || read_file(&site, "disconnect.log").contains("http.disconnect"),
    );
}

#[test]
fn asgi_app_errors_are_500_with_the_traceback_logged() {
    let Some(venv) = venv_or_skip("asgi_app_errors_are_500_with_the_traceback_logged") else {
        return;
    };
    let site = site();
    let p = serve(&site, &venv, "/", "app", "");

    let r = get(p.addr, "/raw/boom").unwrap();
    assert_eq!(r.status, 500);
    assert!(!r.text().contains("secret"), "{}", r.text());
    p.wait_stderr(
        Duration::from_secs(5),
        "ValueError: secret detail of the failure",
    );
    assert!(p.stderr_text().contains("Traceback"));

    let r = get(p.addr, "/raw/nostart").unwrap();
    assert_eq!(r.status, 500);
    p.wait_stderr(
        Duration::from_secs(5),
        "returned without sending http.response.start",
    );

    let r = get(p.addr, "/raw/early").unwrap();
    assert_eq!(r.status, 500);
    assert!(!r.text().contains("too early"), "{}", r.text());
    p.wait_stderr(
        Duration::from_secs(5),
        "http.response.body sent before http.response.start",
    );

    // An exception after the response started: what was sent, then the connection closes
    // without the chunked body's end (the client sees a truncated response).
    let mut c = Conn::open(p.addr).unwrap();
    c.send(raw_request("GET", "/raw/midfail", &[]).as_bytes())
        .unwrap();
    let got = read_until(&mut c, "partial\n");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "the connection is closed"
    );
    p.wait_stderr(Duration::from_secs(5), "raised after the response started");
    assert!(
        p.stderr_text()
            .contains("KeyError: 'failure after the response started'")
    );

    // The connection is still good after each (no hung or half-answered connection).
    let mut c = Conn::open(p.addr).unwrap();
    for path in ["/raw/boom", "/raw/nostart", "/raw/early", "/hello"] {
        let r = c.request("GET", path, &[]).unwrap();
        assert!(r.status == 500 || path == "/hello", "{path}: {}", r.status);
    }
}

#[test]
fn asgi_max_concurrency_and_request_timeout() {
    let Some(venv) = venv_or_skip("asgi_max_concurrency_and_request_timeout") else {
        return;
    };
    let site = site();
    let p = serve(
        &site,
        &venv,
        "/",
        "app",
        ", max_concurrency = 1, request_timeout = \"1s\"",
    );

    // request_timeout: the task is cancelled and the client gets 504.
    let r = get(p.addr, "/slow").unwrap();
    assert_eq!(r.status, 504);
    wait_until(Duration::from_secs(5), "the task cancelled", || {
        read_file(&site, "cancelled.log").contains("cancelled")
    });

    // One request runs; a second one beyond max_concurrency is 503.
    let mut held = Conn::open(p.addr).unwrap();
    held.send(raw_request("GET", "/hold", &[]).as_bytes())
        .unwrap();
    let addr = p.addr;
    wait_until(
        Duration::from_secs(5),
        "a 503 beyond max_concurrency",
        || get(addr, "/hello").unwrap().status == 503,
    );
    site.file("gate-hold", b"");
    let r = held.read_response("GET").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "held"));
    wait_until(Duration::from_secs(5), "room again", || {
        get(addr, "/hello").unwrap().status == 200
    });
}

/// `portico serve ARGS` in the site's directory must fail; returns (status, stderr).
fn serve_fails(site: &Site, venv: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(portico_bin())
        .current_dir(site.path())
        .arg("serve")
        .args(args)
        .args(["--venv", &venv.display().to_string()])
        .args(["--listen", "127.0.0.1:0", "--admin", "off"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("listening on"), "nothing is served:\n{err}");
    (out.status.code(), err)
}

#[test]
fn asgi_startup_failures_stop_serve() {
    let Some(venv) = venv_or_skip("asgi_startup_failures_stop_serve") else {
        return;
    };
    let site = site();
    // lifespan.startup.failed: its message, exit 3.
    let (code, err) = serve_fails(&site, &venv, &["asgiapp:failing_lifespan_app"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("database unreachable at startup"), "{err}");

    // An app that does not import: the traceback, exit 3 (explicit interface and autodetect).
    site.file("broken.py", b"import not_a_module_anywhere\n");
    for args in [
        &["broken:app", "--interface", "asgi"][..],
        &["broken:app"][..],
    ] {
        let (code, err) = serve_fails(&site, &venv, args);
        assert_eq!(code, Some(3), "{err}");
        assert!(err.contains("Traceback"), "{err}");
        assert!(err.contains("ModuleNotFoundError"), "{err}");
    }
}

#[test]
fn asgi_interface_is_autodetected() {
    let Some(venv) = venv_or_skip("asgi_interface_is_autodetected") else {
        return;
    };
    let site = site();
    let venv = venv.display().to_string();
    // A Starlette instance (its __call__ is a coroutine function) is ASGI.
    let mut cmd = Command::new(portico_bin());
    cmd.current_dir(site.path());
    let p = Portico::start_with(cmd, &["asgiapp:starlette_app", "--venv", &venv]);
    assert!(
        p.stderr_text()
            .contains("asgiapp:starlette_app is an ASGI application (--interface auto)"),
        "{}",
        p.stderr_text()
    );
    let r = get(p.addr, "/hello").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hi from lifespan"));
    drop(p);

    // A plain function is WSGI.
    let mut cmd = Command::new(portico_bin());
    cmd.current_dir(site.path());
    let p = Portico::start_with(cmd, &["asgiapp:wsgi_app", "--venv", &venv]);
    assert!(
        p.stderr_text()
            .contains("asgiapp:wsgi_app is a WSGI application (--interface auto)"),
        "{}",
        p.stderr_text()
    );
    assert_eq!(get(p.addr, "/").unwrap().text(), "wsgi");
    drop(p);

    // --interface asgi needs no detection.
    let mut cmd = Command::new(portico_bin());
    cmd.current_dir(site.path());
    let p = Portico::start_with(
        cmd,
        &["asgiapp:app", "--interface", "asgi", "--venv", &venv],
    );
    assert!(!p.stderr_text().contains("--interface auto"));
    assert_eq!(get(p.addr, "/hello").unwrap().status, 200);
}

#[test]
fn asgi_routes_of_a_cell_share_one_event_loop() {
    let Some(venv) = venv_or_skip("asgi_routes_of_a_cell_share_one_event_loop") else {
        return;
    };
    let site = site();
    site.file(
        "portico.toml",
        format!(
            "[server]\nworkers = 1\n[[route]]\nprefix = \"/a/\"\nasgi = {{ app = \"asgiapp:app\", venv = \"{v}\" }}\n[[route]]\nprefix = \"/b/\"\nasgi = {{ app = \"asgiapp:starlette_app\", venv = \"{v}\", lifespan = \"off\" }}\n",
            v = venv.display()
        )
        .as_bytes(),
    );
    let p = Portico::start(&["-c", &site.root("portico.toml")]);
    let r = get(p.addr, "/a/hello").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hi from lifespan"));
    // The second route's lifespan is off: its scopes get an empty state of their own.
    let r = get(p.addr, "/b/hello").unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    let r = get(p.addr, "/b/scope").unwrap();
    assert!(r.text().contains(r#""root_path":"/b""#), "{}", r.text());

    let cell = p.cell_pids()[0];
    let loops = std::fs::read_dir(format!("/proc/{cell}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "asgi-loop")
        .count();
    assert_eq!(loops, 1, "one event loop thread for both routes");
}
