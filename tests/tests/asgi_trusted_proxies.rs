//! `trusted_proxies` on ASGI routes against the real binary, with a raw ASGI app (fixture in
//! `asgi_cell_app/`) that echoes its scope: X-Forwarded-For/-Proto/-Host/-Prefix from a
//! trusted peer set `client`, `scheme` (`https`, `wss`), the `host` header and the prefix of
//! `root_path`; from any other peer they change nothing.
use portico_tests::*;
use serde_json::Value;

const APP: &str = include_str!("asgi_cell_app/cellapp.py");

const FORWARDED: [(&str, &str); 4] = [
    ("X-Forwarded-For", "203.0.113.7, 127.0.0.1"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "example.org"),
    ("X-Forwarded-Prefix", "/app"),
];

/// portico with the fixture at `/trusted/` (the test's loopback peer is a trusted proxy) and
/// at `/open/` (it is not).
fn serve(site: &Site) -> Portico {
    site.file("cellapp.py", APP.as_bytes());
    site.file(
        "portico.toml",
        b"[server]\nworkers = 1\n\
          [[route]]\nprefix = \"/trusted/\"\n\
          asgi = { app = \"cellapp:app\", trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"] }\n\
          [[route]]\nprefix = \"/open/\"\n\
          asgi = { app = \"cellapp:app\", trusted_proxies = [\"10.0.0.0/8\"] }\n",
    );
    Portico::start(&["-c", &site.root("portico.toml")])
}

fn http_scope(p: &Portico, path: &str) -> Value {
    let r = request(p.addr, "GET", path, &FORWARDED).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_str(&r.text()).unwrap()
}

/// The scope of a WebSocket on `path`, as the app's first message tells it.
fn websocket_scope(p: &Portico, path: &str) -> Value {
    websocket_scope_with(p, path, &FORWARDED)
}

fn websocket_scope_with(p: &Portico, path: &str, headers: &[(&str, &str)]) -> Value {
    let (mut c, head) = Conn::websocket(p.addr, path, headers).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (first, payload) = c.read_frame().unwrap();
    assert_eq!(first, 0x81, "one text frame");
    serde_json::from_slice(&payload).unwrap()
}

#[test]
fn asgi_trusted_proxies_set_client_and_scheme() {
    let site = Site::new();
    let p = serve(&site);

    let s = http_scope(&p, "/trusted/x");
    assert_eq!(s["client"], serde_json::json!(["203.0.113.7", 0]), "{s}");
    assert_eq!(s["scheme"], "https", "{s}");
    assert_eq!(s["host"], "example.org", "{s}");
    assert_eq!(s["root_path"], "/app/trusted", "{s}");
    assert_eq!(s["path"], "/app/trusted/x", "{s}");
    let s = websocket_scope(&p, "/trusted/ws");
    assert_eq!(s["scheme"], "wss", "{s}");
    assert_eq!(s["client"][0], "203.0.113.7", "{s}");
    // A proxy that names the WebSocket schemes themselves (`wss`, `ws`) is understood too.
    for (proto, want) in [("wss", "wss"), ("ws", "ws")] {
        let h = [FORWARDED[0], ("X-Forwarded-Proto", proto)];
        let s = websocket_scope_with(&p, "/trusted/ws", &h);
        assert_eq!(s["scheme"], want, "X-Forwarded-Proto: {proto}: {s}");
    }

    // The same headers from a peer that is not a trusted proxy change nothing.
    let s = http_scope(&p, "/open/x");
    assert_eq!(s["client"][0], "127.0.0.1", "{s}");
    assert_ne!(s["client"][1], 0, "the peer's own port: {s}");
    assert_eq!(s["scheme"], "http", "{s}");
    assert_eq!(s["host"], "test", "{s}");
    assert_eq!(s["root_path"], "/open", "{s}");
    assert_eq!(s["path"], "/open/x", "{s}");
    let s = websocket_scope(&p, "/open/ws");
    assert_eq!(s["scheme"], "ws", "{s}");
    assert_eq!(s["client"][0], "127.0.0.1", "{s}");
}
