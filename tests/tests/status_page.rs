//! The admin status page in a real browser (headless Chromium), under load: it loads, redraws
//! itself every second from /status.json, and a screenshot is kept as a test artifact; and the
//! open ASGI WebSockets of each cell it lists.
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portico_tests::*;

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn chromium(args: &[&str], url: &str) -> Option<std::process::Output> {
    let bin = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())?;
    Command::new(bin)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(["--window-size=1200,500", "--virtual-time-budget=3500"])
        .args(args)
        .arg(url)
        .output()
        .ok()
}

#[test]
fn status_page_renders_and_refreshes_under_load() {
    let site = Site::new();
    site.file("www/a.txt", b"status load");
    let p = Portico::start(&[
        "--static",
        &format!("/={}", site.root("www")),
        "--workers",
        "2",
    ]);
    let admin = p.admin.unwrap();

    // Load for the duration of the test (bounded).
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, addr) = (stop.clone(), p.addr);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut c = Conn::open(addr).unwrap();
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    assert_eq!(c.request("GET", "/a.txt", &[]).unwrap().status, 200);
                }
            })
        })
        .collect();

    // The status sampler reports rates and latencies once it has seen the load.
    let mut v = serde_json::Value::Null;
    let sampled = poll_until(Duration::from_secs(10), || {
        let json = get(admin, "/status.json").unwrap();
        assert_eq!(json.header("content-type"), Some("application/json"));
        v = serde_json::from_slice(&json.body).unwrap();
        let cells = v["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 2);
        let rps: f64 = cells.iter().map(|c| c["rps"].as_f64().unwrap()).sum();
        rps > 0.0 && cells.iter().any(|c| c["p99_ms"].as_f64().is_some())
    });
    assert!(sampled, "no rate or p99 in /status.json under load: {v}");

    let url = format!("http://{admin}/status");
    let Some(dom) = chromium(&["--dump-dom"], &url) else {
        stop.store(true, Ordering::Relaxed);
        skip_part(
            "status_page_renders_and_refreshes_under_load",
            "browser part",
            "chromium not installed (cargo xtask test installs it)",
        );
        return;
    };
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        html.contains("data-cell=\"0\"") && html.contains("data-cell=\"1\""),
        "{html}"
    );
    assert!(html.contains("2/2 cells up"), "{html}");
    let refreshes: u32 = html
        .split("data-refreshes=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        refreshes >= 2,
        "the page redraws itself every second ({refreshes} refreshes):\n{html}"
    );
    assert!(html.contains("<svg"), "sparklines are drawn");

    let shot = artifacts().join("status.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(&[&format!("--screenshot={}", shot.display())], &url).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000));
    println!("status page screenshot: {}", shot.display());

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
}

/// The `websockets_active` of cell 0 in /status.json.
fn websockets_on_status(admin: std::net::SocketAddr) -> u64 {
    let json = get(admin, "/status.json").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    v["cells"][0]["websockets_active"].as_u64().unwrap()
}

#[test]
fn status_counts_open_asgi_websockets() {
    let site = Site::new();
    site.file(
        "cellapp.py",
        include_str!("asgi_cell_app/cellapp.py").as_bytes(),
    );
    site.file(
        "portico.toml",
        b"[server]\nworkers = 1\n[[route]]\nprefix = \"/\"\nasgi = { app = \"cellapp:app\" }\n",
    );
    let p = Portico::start(&["-c", &site.root("portico.toml")]);
    let admin = p.admin.unwrap();
    assert_eq!(websockets_on_status(admin), 0);

    let open: Vec<Conn> = (0..3)
        .map(|_| {
            let (mut c, head) = Conn::websocket(p.addr, "/ws", &[]).unwrap();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            // The app's first message: the WebSocket is accepted and running.
            assert_eq!(c.read_frame().unwrap().0, 0x81);
            c
        })
        .collect();
    let mut n = 0;
    assert!(
        poll_until(Duration::from_secs(5), || {
            n = websockets_on_status(admin);
            n == 3
        }),
        "/status.json shows {n} open WebSockets, not 3"
    );
    if let Some(dom) = chromium(&["--dump-dom"], &format!("http://{admin}/status")) {
        let html = String::from_utf8_lossy(&dom.stdout);
        assert!(html.contains("data-websockets=\"3\""), "{html}");
    } else {
        skip_part(
            "status_counts_open_asgi_websockets",
            "browser part",
            "chromium not installed (cargo xtask test installs it)",
        );
    }

    // The clients go: the cell sees each close, and the count goes back to 0.
    drop(open);
    assert!(
        poll_until(Duration::from_secs(10), || {
            n = websockets_on_status(admin);
            n == 0
        }),
        "/status.json still shows {n} open WebSockets"
    );
}
