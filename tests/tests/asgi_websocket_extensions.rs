//! WebSocket extensions on ASGI routes: the cell speaks none (tungstenite has no
//! permessage-deflate), so an app that claims one in its `websocket.accept` has the header
//! dropped with a warning, and frames stay plain.
use std::time::Duration;

use portico_tests::*;

const APP: &str = include_str!("asgi_websocket_app/wsapp.py");
const UPGRADE: [(&str, &str); 2] = [("Upgrade", "websocket"), ("Connection", "Upgrade")];
const KEY: (&str, &str) = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");

#[test]
fn asgi_websocket_extensions_an_app_claims_are_dropped() {
    let test = "asgi_websocket_extensions_an_app_claims_are_dropped";
    let Some(venv) = venv_for(test, "Starlette") else {
        return;
    };
    let site = Site::new();
    site.file("wsapp.py", APP.as_bytes());
    site.file(
        "portico.toml",
        format!(
            "[server]\nworkers = 1\n[[route]]\nprefix = \"/ws/\"\nasgi = {{ app = \"wsapp:app\", venv = \"{}\" }}\n",
            venv.display()
        )
        .as_bytes(),
    );
    let portico = Portico::start(&["-c", &site.root("portico.toml")]);
    // The client offers permessage-deflate and the app claims it in its accept: the 101 goes
    // out without it (the cell has no deflate), and frames stay plain.
    let mut c = Conn::open(portico.addr).unwrap();
    let offer = [
        UPGRADE[0],
        UPGRADE[1],
        KEY,
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"),
    ];
    c.send(raw_request("GET", "/ws/claims_deflate", &offer).as_bytes())
        .unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        got.extend(c.read_some(1).unwrap());
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    let mask = [9u8, 8, 7, 6];
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend(b"hi".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    c.send(&frame).unwrap();
    let mut echo = Vec::new();
    while echo.len() < 4 {
        echo.extend(c.read_some(1).unwrap());
    }
    assert_eq!(
        &echo[..4],
        &[0x81, 2, b'h', b'i'],
        "a plain, unmasked text frame"
    );
    portico.wait_stderr(
        Duration::from_secs(10),
        "accepted a WebSocket with Sec-WebSocket-Extensions; dropped",
    );
}
