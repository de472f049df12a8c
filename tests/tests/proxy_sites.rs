//! The three nginx sites issue 12 replaces, each as one Portico config in front of the real
//! server it fronts (apps in `sites/`, servers and clients from the test virtualenv):
//! - Django under gunicorn's gevent worker, mounted at `/catmaid/` with `FORCE_SCRIPT_NAME`
//!   and a static route beside it;
//! - a WSGI app on a Unix-socket gunicorn with `buffering = false`, streaming;
//! - Django Channels under Daphne: WebSockets and HTTP at `/channels/`, with
//!   `X-Forwarded-Host`.
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portico_tests::*;
use serde_json::Value;

/// The test virtualenv when it has every module in `modules`; else a SKIP line and None.
fn venv_with(test: &str, modules: &[&str]) -> Option<PathBuf> {
    let Some(venv) = test_venv() else {
        skip(
            test,
            "no test virtualenv (run `cargo xtask test`, which creates .venv)",
        );
        return None;
    };
    let missing: Vec<&str> = modules
        .iter()
        .copied()
        .filter(|m| {
            !Command::new(venv.join("bin/python"))
                .args(["-c", &format!("import {m}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        skip(
            test,
            &format!(
                "{} missing from the test virtualenv (run `cargo xtask test` to install)",
                missing.join(", ")
            ),
        );
        return None;
    }
    Some(venv)
}

/// Copies `tests/sites/<name>` (a file or a package) into `site`; its path there.
fn fixture(site: &Site, name: &str) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        if from.is_dir() {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap().flatten() {
                copy(&e.path(), &to.join(e.file_name()));
            }
        } else if from.extension().is_some_and(|e| e == "py") {
            std::fs::copy(from, to).unwrap();
        }
    }
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sites")
        .join(name);
    let to = site.path().join(name);
    copy(&from, &to);
    to
}

/// Runs the venv's Python with `args` in the site's directory; its stdout (panics on failure).
fn python(venv: &Path, site: &Site, args: &[&str]) -> String {
    let out = Command::new(venv.join("bin/python"))
        .current_dir(site.path())
        .env("DJANGO_SETTINGS_MODULE", "catmaid.settings")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts portico with `toml` (after `[server] workers = 1`).
fn portico(site: &Site, toml: &str) -> Portico {
    let cfg = format!("[server]\nworkers = 1\n{toml}");
    let path = site.file("p.toml", cfg.as_bytes());
    Portico::start(&["--config", path.to_str().unwrap()])
}

/// A raw GET with its own Host header.
fn get_as(p: &Portico, target: &str, host: &str) -> Response {
    let mut c = Conn::open(p.addr).unwrap();
    c.send(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    c.read_response("GET").unwrap()
}

#[test]
fn proxy_sites_catmaid_django_under_gevent_gunicorn() {
    let test = "proxy_sites_catmaid_django_under_gevent_gunicorn";
    let Some(venv) = venv_with(test, &["django", "gunicorn", "gevent", "requests"]) else {
        return;
    };
    let site = Site::new();
    fixture(&site, "catmaid");
    fixture(&site, "catmaid_login.py");
    python(
        &venv,
        &site,
        &["-m", "django", "migrate", "--noinput", "-v", "0"],
    );
    python(
        &venv,
        &site,
        &["-m", "django", "collectstatic", "--noinput", "-v", "0"],
    );
    python(
        &venv,
        &site,
        &[
            "-m",
            "django",
            "shell",
            "-c",
            "from django.contrib.auth.models import User; User.objects.create_superuser('admin', 'a@example.com', 'pw-12345-long')",
        ],
    );
    let bind = Bind::Tcp(free_port());
    let mut cmd = Command::new(venv.join("bin/gunicorn"));
    cmd.args(["-k", "gevent", "-w", "1", "-b", &bind.server()])
        .args(["--chdir", &site.root(""), "--log-level", "warning"])
        .arg("catmaid.wsgi:application");
    let up = Upstream::start(cmd, bind, site.path().join("gunicorn.log"));
    // nginx: location /catmaid/ { proxy_pass http://catmaid/; proxy_redirect default; }
    //        location /catmaid/static/ { alias .../collected/; }
    let p = portico(
        &site,
        &format!(
            "[[upstream]]\nname = \"catmaid\"\nservers = [\"{}\"]\n\
             [[route]]\nprefix = \"/catmaid/\"\n\
             proxy = {{ upstream = \"catmaid\", path = \"/\", redirect = \"default\" }}\n\
             [[route]]\nprefix = \"/catmaid/static/\"\nstatic = {{ root = \"{}\" }}\n",
            up.addr(),
            site.root("collected")
        ),
    );

    // The gevent worker answers, and sees the path under the script name.
    let r = get(p.addr, "/catmaid/whoami/").unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.text(), up.log_text());
    assert_eq!(r.text(), "/catmaid/whoami/ gevent=True");

    // Redirects come back under /catmaid/ exactly once: Django's own (it knows the mount), the
    // slash it appends, and one from a view that ignores the mount (the proxy maps it).
    for (target, want) in [
        (
            "/catmaid/admin/",
            "/catmaid/admin/login/?next=/catmaid/admin/",
        ),
        ("/catmaid/admin", "/catmaid/admin/"),
        ("/catmaid/unmounted/", "/catmaid/admin/"),
    ] {
        let r = get(p.addr, target).unwrap();
        assert!(
            (301..=302).contains(&r.status),
            "{target}: {} {}",
            r.status,
            r.text()
        );
        assert_eq!(r.header("location"), Some(want), "{target}");
    }

    // Every Set-Cookie passes.
    let r = get(p.addr, "/catmaid/cookies/").unwrap();
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies.len(), 2, "{r:?}");
    assert!(cookies[0].starts_with("a=1;") && cookies[1].starts_with("b=2;"));
    assert!(cookies[1].contains("HttpOnly"), "{cookies:?}");

    // The admin login with its CSRF token and session cookie, by a real client.
    let base = format!("http://{}", p.addr);
    let out = python(
        &venv,
        &site,
        &["catmaid_login.py", &base, "admin", "pw-12345-long"],
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v["redirects"],
        serde_json::json!(["/catmaid/admin/login/?next=/catmaid/admin/"]),
        "{v}"
    );
    assert_eq!(v["login_status"], 200, "{v}");
    assert_eq!(v["without_csrf"], 403, "{v}");
    assert_eq!(v["wrong_password"], 200, "{v}");
    assert_eq!(v["login_post"], 302, "{v}");
    assert_eq!(v["login_location"], "/catmaid/admin/", "{v}");
    assert_eq!(v["cookies"], serde_json::json!(["csrftoken", "sessionid"]));
    assert_eq!(v["admin_status"], 200, "{v}");
    assert_eq!(v["logged_in"], true, "{v}");

    // The page's stylesheet is under /catmaid/static/, and the static route serves it.
    let css = v["stylesheets"][0].as_str().unwrap_or_default().to_string();
    assert_eq!(css, "/catmaid/static/admin/css/base.css", "{v}");
    let r = get(p.addr, &css).unwrap();
    assert_eq!(r.status, 200);
    let on_disk = std::fs::read(site.path().join("collected/admin/css/base.css")).unwrap();
    assert_eq!(r.body, on_disk, "served from the static route's root");
}

#[test]
fn proxy_sites_unix_socket_gunicorn_streams_unbuffered() {
    let test = "proxy_sites_unix_socket_gunicorn_streams_unbuffered";
    let Some(venv) = venv_with(test, &["gunicorn"]) else {
        return;
    };
    let site = Site::new();
    fixture(&site, "stream_app.py");
    let gates = site.path().join("gates");
    std::fs::create_dir_all(&gates).unwrap();
    let sock = site.path().join("site-python.sock");
    let bind = Bind::Unix(sock.clone());
    let mut cmd = Command::new(venv.join("bin/gunicorn"));
    cmd.args(["-w", "1", "-b", &bind.server(), "--chdir", &site.root("")])
        .args(["--log-level", "warning", "stream_app:application"])
        .env("STREAM_GATES", &gates);
    let _up = Upstream::start(cmd, bind, site.path().join("gunicorn.log"));
    // nginx: proxy_pass http://unix:/tmp/site-python.sock:/; proxy_buffering off;
    //        proxy_connect_timeout 60s; proxy_send_timeout 90s; proxy_read_timeout 90s;
    let p = portico(
        &site,
        &format!(
            "[[upstream]]\nname = \"site-python\"\nservers = [\"unix:{}\"]\n\
             connect_timeout = \"60s\"\nsend_timeout = \"90s\"\nread_timeout = \"90s\"\n\
             [[route]]\nprefix = \"/\"\n\
             proxy = {{ upstream = \"site-python\", path = \"/\", buffering = false }}\n",
            sock.display()
        ),
    );
    let mut c = Conn::open(p.addr).unwrap();
    c.send(raw_request("GET", "/stream", &[]).as_bytes())
        .unwrap();
    let mut seen = Vec::new();
    for i in 0..4 {
        if i > 0 {
            // The app holds chunk-i until this file exists: the client has read chunk-(i-1)
            // while chunk-i did not exist yet.
            let seen_text = String::from_utf8_lossy(&seen).into_owned();
            assert!(
                !seen_text.contains(&format!("chunk-{i}")),
                "chunk-{i} before its gate: {seen_text:?}"
            );
            std::fs::write(gates.join(format!("gate-{i}")), b"").unwrap();
        }
        read_until(&mut c, &mut seen, &format!("chunk-{i}\n"), &p);
    }
    // The chunked body ends.
    read_until(&mut c, &mut seen, "\r\n0\r\n\r\n", &p);
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
}

/// Reads from `c` into `seen` until `needle` is in it (10 s at most).
fn read_until(c: &mut Conn, seen: &mut Vec<u8>, needle: &str, p: &Portico) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tmp = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {:?}\n{}",
            String::from_utf8_lossy(seen),
            p.stderr_text()
        );
        let n = c.stream.read(&mut tmp).expect("the stream goes on");
        assert!(
            n > 0,
            "closed before {needle:?}: {:?}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&tmp[..n]);
    }
}

#[test]
fn proxy_sites_channels_under_daphne() {
    let test = "proxy_sites_channels_under_daphne";
    let Some(venv) = venv_with(
        test,
        &["django", "channels", "daphne", "websockets.sync.client"],
    ) else {
        return;
    };
    let site = Site::new();
    fixture(&site, "chat");
    fixture(&site, "chat_client.py");
    let closes = site.path().join("closes.txt");
    let addr = free_port();
    let mut cmd = Command::new(venv.join("bin/daphne"));
    cmd.args(["-b", "127.0.0.1", "-p", &addr.port().to_string()])
        .arg("chat.asgi:application")
        .current_dir(site.path())
        .env("PYTHONPATH", site.path())
        .env("CHAT_CLOSES", &closes);
    let _up = Upstream::start(cmd, Bind::Tcp(addr), site.path().join("daphne.log"));
    // nginx: location /channels/ { proxy_pass http://daphne; proxy_http_version 1.1;
    //   proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";
    //   proxy_set_header X-Forwarded-Host $host; }
    let p = portico(
        &site,
        &format!(
            "[[upstream]]\nname = \"daphne\"\nservers = [\"{addr}\"]\n\
             [[route]]\nprefix = \"/channels/\"\n\
             proxy = {{ upstream = \"daphne\", websocket = true, set_headers = {{ X-Forwarded-Host = \"$host\" }} }}\n"
        ),
    );

    // Plain HTTP to the same app: the header arrives.
    let r = get_as(&p, "/channels/host/", "chat.example");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.stderr_text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["x_forwarded_host"], "chat.example", "{v}");
    assert_eq!(v["path"], "/channels/host/", "{v}");

    // The WebSocket echo: hundreds of messages, text and binary, and a close code each way.
    let url = format!("ws://{}/channels/echo/", p.addr);
    let mut client = Command::new(venv.join("bin/python"))
        .arg(site.root("chat_client.py"))
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let done = poll_until(Duration::from_secs(90), || {
        matches!(client.try_wait(), Ok(Some(_)))
    });
    if !done {
        let _ = client.kill();
    }
    let out = client.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        done && out.status.success(),
        "client: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.stderr_text()
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["ok"], 300, "{v}");
    assert_eq!(v["bad"], 0, "{v}");
    assert_eq!(v["server_close"], 4002, "the consumer's close code: {v}");
    // The client's 4001 reached the consumer (its disconnect records each code).
    wait_until(Duration::from_secs(10), "the consumer saw 4001", || {
        std::fs::read_to_string(&closes)
            .unwrap_or_default()
            .lines()
            .any(|l| l == "4001")
    });
}
