//! `[server] defer_accept`: with it (the default) the kernel holds a connection that has sent
//! nothing yet (SYN_RECV on the server side) instead of queueing it for accept; without it the
//! connection is established at once. Either way its request is answered.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use portico_tests::*;

/// The kernel's state of the server's end of the connection from `client` ("01" established,
/// "03" SYN_RECV), read from /proc/net/tcp.
fn server_side_state(server: u16, client: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let (s, c) = (format!(":{server:04X}"), format!(":{client:04X}"));
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[1].ends_with(&s) && f[2].ends_with(&c)).then(|| f[3].to_string())
    })
}

fn check(setting: &str, want: &str) {
    let s = Site::new();
    s.file("www/a.txt", b"a");
    let cfg = format!(
        "[server]\nworkers = 1\n{setting}\n[[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\" }}\n",
        s.root("www")
    );
    s.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &s.root("p.toml")]);
    let connect = || {
        let c = TcpStream::connect(p.addr).expect("connect");
        let port = c.local_addr().expect("local address").port();
        (c, port)
    };
    let (mut c, mut client) = connect();
    // A deferred connection is accepted anyway once the kernel's defer period (about a
    // second) has passed: a runner too slow to look within it tries a new connection.
    wait_until(
        Duration::from_secs(30),
        &format!("the server's end in state {want} ({setting:?})"),
        || {
            let state = server_side_state(p.addr.port(), client);
            if state.as_deref() == Some(want) {
                return true;
            }
            if want == "03" && state.as_deref() == Some("01") {
                (c, client) = connect();
            }
            false
        },
    );
    c.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("response");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("\r\n\r\na"), "{out}");
}

#[test]
fn defer_accept_holds_a_silent_connection_in_the_kernel() {
    // The default.
    check("", "03");
}

#[test]
fn without_defer_accept_a_connection_is_established_at_once() {
    check("defer_accept = false", "01");
}
