//! Configuration errors: all listed at once, exit 64, nothing bound.
use std::process::Command;

use portico_tests::*;

#[test]
fn check_lists_every_problem() {
    let s = Site::new();
    s.file(
        "bad.toml",
        br#"
        [server]
        listen = ["nowhere:80"]
        workers = 0
        admin = "also-bad"
        [limits]
        header_timeout = 0
        [[route]]
        prefix = "static/"
        static = { root = "missing-dir" }
        "#,
    );
    let out = Command::new(portico_bin())
        .args(["check", "-c", &s.root("bad.toml")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    // The listen value fails to deserialize the whole [server] table; the other sections still report.
    for needle in [
        "server",
        "limits.header_timeout",
        "route[0].prefix",
        "route[0].static.root",
    ] {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }
    assert!(err.contains("bad.toml"), "errors name the file:\n{err}");

    s.file(
        "bad2.toml",
        b"[server]\nworkers = 0\nadmin = \"x\"\n[[route]]\nprefix = \"/\"\n",
    );
    let out = Command::new(portico_bin())
        .args(["check", "-c", &s.root("bad2.toml")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["server.workers", "server.admin", "route[0]"] {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }

    s.file("www/i.html", b"x");
    s.file(
        "good.toml",
        format!(
            "[[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\" }}\n",
            s.root("www")
        )
        .as_bytes(),
    );
    let out = Command::new(portico_bin())
        .args(["check", "-c", &s.root("good.toml")])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 10: a bad value hides neither the others in its table nor the validate() problems of
/// the good ones; each gets its own line with the file and its key path. Issue 2: a huge
/// duration is one of those lines, not a panic.
#[test]
fn check_reports_each_bad_value_on_its_own_line() {
    let s = Site::new();
    s.file(
        "bad.toml",
        br#"
[server]
listen = ["not-an-address"]
workers = -3
shutdown_timeout = 1e30

[ebpf.xdp]
interface = "lo"
mode = "turbo"

[[route]]
prefix = "/app/"
wsgi = { app = "site:app", threads = "many", request_timeout = 1e30, colour = "blue" }
"#,
    );
    let path = s.root("bad.toml");
    let out = Command::new(portico_bin())
        .args(["check", "-c", &path])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for key in [
        "server.listen[0]",
        "server.workers",
        "server.shutdown_timeout",
        "ebpf.xdp.mode",
        "route[0].wsgi.threads",
        "route[0].wsgi.request_timeout",
        "route[0].wsgi.colour",
    ] {
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains(&format!(": {key}: ")))
            .collect();
        assert_eq!(lines.len(), 1, "{key} not on exactly one line:\n{err}");
        assert!(
            lines[0].contains(&format!("{path}: {key}: ")),
            "{key} without the file:\n{err}"
        );
    }
    assert!(
        !err.lines().any(|l| l.contains(": server.listen: ")),
        "the refused address is not also reported as an empty list:\n{err}"
    );
}

#[test]
fn serve_with_bad_config_binds_nothing() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let out = Command::new(portico_bin())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--static",
            "/=/definitely/missing",
            "--workers",
            "zero",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--workers") && err.contains("route[0].static.root"),
        "{err}"
    );
    // Nothing was bound: the port is still free.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port should be free");
}

#[test]
fn malformed_app_argument_is_a_config_error() {
    let out = Command::new(portico_bin())
        .args(["serve", "my-site:app", "--threads", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("APP") && err.contains("my-site"), "{err}");
    assert!(
        err.contains("wsgi.threads"),
        "every problem is listed:\n{err}"
    );
}

#[test]
fn version_flag() {
    let out = Command::new(portico_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("portico "));
}

#[test]
fn port_in_use_is_an_error() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let out = Command::new(portico_bin())
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--admin",
            "off",
            "--workers",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("bind {addr}")));
}
