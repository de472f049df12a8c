//! The admin endpoint's access rules, for real: without a token, state changes (the XDP
//! blocklist) are refused from a non-loopback peer; with `[server] admin_token_file`, every
//! request needs the bearer token (401 otherwise) and a change may come from anywhere. A
//! "non-loopback" peer is an interface's address (a veth) in a namespace the test creates (127/8
//! is loopback, so 127.0.0.2 would not do); the blocklist is the XDP guard's on that interface.
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

use portico_tests::*;

/// A namespace with an interface `lp0` holding 10.213.<n>.1/24, or a skip marker.
fn setup(test: &str, tag: &str, n: u8) -> Option<(Netns, IpAddr)> {
    if !is_root() {
        skip(test, "needs root for a namespace and the XDP guard");
        return None;
    }
    let Some(ns) = Netns::create(tag) else {
        skip(
            test,
            "`ip netns add` failed (no iproute2 or no namespace support)",
        );
        return None;
    };
    let ip: IpAddr = format!("10.213.{n}.1").parse().unwrap();
    // A veth pair with both ends here (this kernel may lack the dummy driver).
    ns.ip(&["link", "add", "lp0", "type", "veth", "peer", "name", "lp1"]);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "lp0"]);
    ns.ip(&["link", "set", "lp0", "up"]);
    ns.ip(&["link", "set", "lp1", "up"]);
    Some((ns, ip))
}

/// One request from source address `from` (so the admin endpoint sees that peer).
fn request_from(
    from: IpAddr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect(&to.into()).unwrap();
    Conn::from_stream(sock.into())
        .request(method, path, headers)
        .unwrap()
}

/// Portico in `ns` with the XDP guard on `lp0` and the admin endpoint on every address.
fn launch(ns: &Netns, s: &Site, extra: &str) -> (Portico, std::path::PathBuf) {
    s.file("www/a.txt", b"a");
    let cfg = s.file(
        "portico.toml",
        format!(
            "[server]\nworkers = 1\n{extra}\n[ebpf.xdp]\ninterface = \"lp0\"\nmode = \"skb\"\n\
             [[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\" }}\n",
            s.root("www")
        )
        .as_bytes(),
    );
    let p = Portico::launch(
        ns.command(&portico_bin()),
        &["-c", cfg.to_str().unwrap(), "--admin", "0.0.0.0:9190"],
        false,
    );
    (p, cfg)
}

#[test]
fn without_a_token_changes_stay_loopback_only() {
    let test = "without_a_token_changes_stay_loopback_only";
    let Some((ns, ip)) = setup(test, "admnotok", 1) else {
        return;
    };
    let s = Site::new();
    let (p, _) = launch(&ns, &s, "");
    p.wait_stderr(Duration::from_secs(5), "no admin_token_file is set");
    if p.stderr_text().contains("eBPF unavailable") {
        skip(
            test,
            "no XDP guard here (eBPF unavailable), so no blocklist to change",
        );
        return;
    }
    let port = p.admin.unwrap().port();
    let (lo, outside) = (
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::new(ip, port),
    );
    let lo_ip: IpAddr = [127, 0, 0, 1].into();
    let (from_lo, from_outside, metrics, list) = ns.run(None, move || {
        wait_until(Duration::from_secs(10), "admin endpoint up", || {
            get(lo, "/healthz").is_ok_and(|r| r.status == 200)
        });
        (
            request_from(lo_ip, lo, "POST", "/blocklist/add?cidr=192.0.2.0/24", &[]),
            request_from(
                ip,
                outside,
                "POST",
                "/blocklist/add?cidr=198.51.100.0/24",
                &[],
            ),
            request_from(ip, outside, "GET", "/metrics", &[]),
            request_from(lo_ip, lo, "GET", "/blocklist", &[]),
        )
    });
    assert_eq!(
        (from_lo.status, from_lo.text().as_str()),
        (200, "192.0.2.0/24 added\n")
    );
    assert_eq!(from_outside.status, 403, "{}", from_outside.text());
    assert!(from_outside.text().contains("only allowed from loopback"));
    // Reading stays open to other hosts without a token (the warning above says so).
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("portico_cell_up"));
    assert_eq!(list.text(), "192.0.2.0/24\n");
}

#[test]
fn a_token_guards_every_request_and_lets_changes_come_from_anywhere() {
    let test = "a_token_guards_every_request_and_lets_changes_come_from_anywhere";
    let Some((ns, ip)) = setup(test, "admtok", 2) else {
        return;
    };
    let s = Site::new();
    let token_file = s.file("secret/admin.token", b"first-token-0123456789\n");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (p, cfg) = launch(
        &ns,
        &s,
        "admin = \"0.0.0.0:9190\"\nadmin_token_file = \"secret/admin.token\"",
    );
    p.wait_stderr(Duration::from_secs(10), "listening on");
    let log = p.stderr_text();
    if log.contains("eBPF unavailable") {
        skip(
            test,
            "no XDP guard here (eBPF unavailable), so no blocklist to change",
        );
        return;
    }
    assert!(
        !log.contains("admin_token_file"),
        "no warning expected:\n{log}"
    );
    let outside = SocketAddr::new(ip, p.admin.unwrap().port());
    let lo = SocketAddr::from(([127, 0, 0, 1], outside.port()));
    let get_with =
        move |from: IpAddr, to: SocketAddr, path: &'static str, auth: Option<&'static str>| {
            let h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
            request_from(from, to, "GET", path, &h)
        };
    let lo_ip: IpAddr = [127, 0, 0, 1].into();
    let r = ns.run(None, move || {
        wait_until(Duration::from_secs(10), "admin endpoint up", || {
            get_with(lo_ip, lo, "/healthz", Some("Bearer first-token-0123456789")).status == 200
        });
        vec![
            get_with(ip, outside, "/metrics", None),
            get_with(lo_ip, lo, "/healthz", None),
            get_with(
                ip,
                outside,
                "/metrics",
                Some("Bearer first-token-012345678"),
            ),
            get_with(ip, outside, "/metrics", Some("Basic Zmlyc3QtdG9rZW4=")),
            get_with(
                ip,
                outside,
                "/metrics",
                Some("bearer first-token-0123456789"),
            ),
            request_from(
                ip,
                outside,
                "POST",
                "/blocklist/add?cidr=198.51.100.0/24",
                &[],
            ),
            request_from(
                ip,
                outside,
                "POST",
                "/blocklist/add?cidr=198.51.100.0/24",
                &[("Authorization", "Bearer first-token-0123456789")],
            ),
        ]
    });
    for (i, resp) in r[..4].iter().enumerate() {
        assert_eq!(resp.status, 401, "request {i}: {}", resp.text());
        assert!(
            resp.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "request {i}: {:?}",
            resp.headers
        );
    }
    assert!(
        r[2].header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(r[4].status, 200);
    assert!(r[4].text().contains("portico_cell_up"));
    assert_eq!(r[5].status, 401, "a change without the token");
    assert_eq!(
        (r[6].status, r[6].text().as_str()),
        (200, "198.51.100.0/24 added\n")
    );

    // `portico block` sends the token: from --token-file, or the configuration's file.
    let block = |args: &[&str]| {
        let out = ns
            .command(&portico_bin())
            .arg("block")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let admin = outside.to_string();
    let tf = token_file.to_str().unwrap();
    assert_eq!(
        block(&[
            "add",
            "203.0.113.0/24",
            "--admin",
            &admin,
            "--token-file",
            tf
        ])
        .0,
        Some(0)
    );
    assert_eq!(
        block(&["list", "--admin", &admin]).0,
        Some(1),
        "no token: 401"
    );
    let (code, list) = block(&["list", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    let mut listed: Vec<&str> = list.lines().collect();
    listed.sort_unstable();
    assert_eq!(listed, ["198.51.100.0/24", "203.0.113.0/24"]);

    // A new token takes effect on SIGHUP; the old one stops working.
    std::fs::write(&token_file, "second-token-9876543210\n").unwrap();
    p.signal(rustix::process::Signal::HUP);
    let swapped = ns.run(None, move || {
        poll_until(Duration::from_secs(10), || {
            get_with(
                ip,
                outside,
                "/healthz",
                Some("Bearer second-token-9876543210"),
            )
            .status
                == 200
        }) && get_with(
            ip,
            outside,
            "/healthz",
            Some("Bearer first-token-0123456789"),
        )
        .status
            == 401
    });
    assert!(
        swapped,
        "the reloaded token did not replace the old one:\n{}",
        p.stderr_text()
    );
}

#[test]
fn check_reports_token_file_problems() {
    let s = Site::new();
    s.file("www/a.txt", b"a");
    let write_cfg = |extra: &str| {
        s.file(
            "portico.toml",
            format!(
                "[server]\n{extra}\n[[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\" }}\n",
                s.root("www")
            )
            .as_bytes(),
        )
    };
    let check = |cfg: &std::path::Path| {
        let out = Command::new(portico_bin())
            .args(["check", "-c", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let empty = s.file("empty.token", b"\n");
    let (code, err) = check(&write_cfg(&format!(
        "admin_token_file = {:?}",
        empty.to_str().unwrap()
    )));
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("server.admin_token_file") && err.contains("no token"),
        "{err}"
    );
    let (code, err) = check(&write_cfg("admin_token_file = \"missing.token\""));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("missing.token"), "{err}");

    let open = s.file("open.token", b"tok\n");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = check(&write_cfg("admin_token_file = \"open.token\""));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: server.admin_token_file") && err.contains("world-readable"),
        "{err}"
    );
    let (code, err) = check(&write_cfg("admin = \"0.0.0.0:9090\""));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: server.admin") && err.contains("no admin_token_file"),
        "{err}"
    );
}
