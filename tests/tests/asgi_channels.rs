//! A Django Channels site served by Portico directly (no Daphne, no proxy in front): one ASGI
//! application (`ProtocolTypeRouter`) with Django views for HTTP and Channels consumers for
//! WebSockets (fixture in `asgi_channels_app/`), checked over the socket with the raw client,
//! Python `requests` (a form POST with its CSRF cookie and token) and the Python `websockets`
//! client: a JSON view, the echo consumer (text, binary, a close code both ways) and a group
//! broadcast through the in-memory channel layer between members of one room.
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use portico_tests::*;
use serde_json::Value;

const FILES: [(&str, &str); 6] = [
    (
        "mysite/__init__.py",
        include_str!("asgi_channels_app/mysite/__init__.py"),
    ),
    (
        "mysite/settings.py",
        include_str!("asgi_channels_app/mysite/settings.py"),
    ),
    (
        "mysite/asgi.py",
        include_str!("asgi_channels_app/mysite/asgi.py"),
    ),
    (
        "mysite/urls.py",
        include_str!("asgi_channels_app/mysite/urls.py"),
    ),
    (
        "mysite/consumers.py",
        include_str!("asgi_channels_app/mysite/consumers.py"),
    ),
    ("client.py", include_str!("asgi_channels_app/client.py")),
];

/// How long one client scenario may run.
const WITHIN: Duration = Duration::from_secs(60);

struct Channels {
    venv: PathBuf,
    site: Site,
    portico: Portico,
}

impl Channels {
    /// Portico serving `mysite.asgi:application` at `/`, or a SKIP line and None when the test
    /// virtualenv lacks Django, Channels, `websockets` or `requests`.
    fn start(test: &str) -> Option<Channels> {
        let venv = venv_for(test, "Django, Channels, websockets and requests")?;
        let has = Command::new(venv.join("bin/python"))
            .args([
                "-c",
                "import django, channels.layers, websockets.sync.client, requests",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            skip(
                test,
                "no django, channels, websockets>=13 or requests in the test virtualenv (run `cargo xtask test`)",
            );
            return None;
        }
        let site = Site::new();
        for (name, text) in FILES {
            site.file(name, text.as_bytes());
        }
        // One cell: Channels' in-memory channel layer lives in one process, so the members of
        // a room must be connected to the same cell for a group message to reach them all.
        site.file(
            "portico.toml",
            format!(
                "[server]\nworkers = 1\n[[route]]\nprefix = \"/\"\nasgi = {{ app = \"mysite.asgi:application\", chdir = \"{}\", venv = \"{}\" }}\n",
                site.path().display(),
                venv.display()
            )
            .as_bytes(),
        );
        let portico = Portico::start(&["-c", &site.root("portico.toml")]);
        Some(Channels {
            venv,
            site,
            portico,
        })
    }

    /// Runs a client scenario against `url` to its end and returns its JSON summary.
    fn client(&self, mode: &str, url: &str) -> Value {
        let mut child = Command::new(self.venv.join("bin/python"))
            .arg(self.site.root("client.py"))
            .args([mode, url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the client");
        let done = poll_until(WITHIN, || matches!(child.try_wait(), Ok(Some(_))));
        if !done {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("client output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            done,
            "client still running after {WITHIN:?}: {stdout}\n{stderr}"
        );
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "client summary ({e}): {stdout}\n{stderr}\n{}",
                self.portico.stderr_text()
            )
        })
    }

    fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.portico.addr)
    }
}

#[test]
fn asgi_channels_django_views_over_http() {
    let Some(ch) = Channels::start("asgi_channels_django_views_over_http") else {
        return;
    };
    let p = &ch.portico;

    // A Django view answers through Channels' ProtocolTypeRouter, in the cell itself.
    let r = get(p.addr, "/api/info/?lang=en").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["method"], "GET", "{v}");
    assert_eq!(v["path"], "/api/info/", "{v}");
    assert_eq!(v["query"]["lang"], "en", "{v}");
    assert_eq!(v["host"], "test", "{v}");
    assert_eq!(v["pid"], p.cell_pids()[0], "{v}");
    // Django's own 404 and APPEND_SLASH redirect come from the app, not from Portico.
    assert_eq!(get(p.addr, "/nowhere/").unwrap().status, 404);
    let r = get(p.addr, "/api/info").unwrap();
    assert_eq!(r.status, 301, "{}", r.text());
    assert_eq!(r.header("location"), Some("/api/info/"));

    // A form POST with CSRF protection, as a browser session does it.
    let s = ch.client("http", &format!("http://{}", p.addr));
    assert_eq!(s["get_status"], 200, "{s}");
    assert_eq!(s["cookie"], true, "{s}");
    assert_eq!(s["post_status"], 200, "{s}");
    assert_eq!(s["post"]["name"], "ada", "{s}");
    assert_eq!(s["forged_status"], 403, "{s}");
}

#[test]
fn asgi_channels_echo_consumer() {
    let Some(ch) = Channels::start("asgi_channels_echo_consumer") else {
        return;
    };
    // Text and binary messages come back as sent, of their own type; the consumer's close
    // code reaches the client.
    let s = ch.client("echo", &ch.ws("/channels/echo/"));
    assert_eq!(s["mismatches"], 0, "{s}");
    assert_eq!(s["close_code"], 4002, "{s}");
    // ... and the consumer saw the end of the connection (`websocket.disconnect`).
    let closes = || std::fs::read_to_string(ch.site.path().join("closes.log")).unwrap_or_default();
    wait_until(Duration::from_secs(10), "the consumer's disconnect", || {
        closes().lines().any(|l| l == "4002")
    });

    // A path no consumer routes: Channels' URLRouter raises, which closes the handshake
    // with a 500 (the traceback in the error log only).
    let mut c = Conn::open(ch.portico.addr).unwrap();
    let r = c
        .request(
            "GET",
            "/channels/nowhere/",
            &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "13"),
            ],
        )
        .unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    ch.portico
        .wait_stderr(Duration::from_secs(5), "No route found for path");
}

#[test]
fn asgi_channels_group_broadcast_through_the_channel_layer() {
    let Some(ch) = Channels::start("asgi_channels_group_broadcast_through_the_channel_layer")
    else {
        return;
    };
    let s = ch.client("chat", &ch.ws("/channels/chat/"));
    // Each member's message reaches both members of the room, in order.
    let room = ["chat_lobby: hello from a", "chat_lobby: hi from b"];
    assert_eq!(s["a_got"], serde_json::json!(room), "{s}");
    assert_eq!(s["b_got"], serde_json::json!(room), "{s}");
    // Another room's member saw only its own room.
    assert_eq!(s["c_got"], "chat_attic: alone", "{s}");
    assert_eq!(s["b_after"], "chat_lobby: still here", "{s}");
}
