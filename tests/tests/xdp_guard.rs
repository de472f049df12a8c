//! The `xdp_guard` XDP program, for real: portico runs in a server namespace whose veth peer
//! sits in a client namespace with several source addresses. Blocklist (from the config and
//! live through `portico block`), SYN-flood budget, and the counters in /metrics. Needs root;
//! prints SKIP otherwise. Both namespaces (and the veth pair) are deleted afterwards.
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use portico_tests::*;
use socket2::{Domain, Protocol, Socket, Type};

/// GET `path` from source address `src`; fails if nothing answers within `within`.
fn get_from(src: Ipv4Addr, addr: SocketAddr, path: &str, within: Duration) -> std::io::Result<u16> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
    s.connect_timeout(&addr.into(), within)?;
    let mut t: TcpStream = s.into();
    t.set_read_timeout(Some(within))?;
    t.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut out = Vec::new();
    t.read_to_end(&mut out)?;
    let head = String::from_utf8_lossy(&out);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {head:?}")))
}

/// Sends `count` TCP SYNs from `src` (random source ports) spread over `over`, through a raw
/// socket so no client state is kept. Returns how many were sent.
fn send_syns(src: Ipv4Addr, dst: SocketAddrV4, count: usize, over: Duration) -> usize {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))).expect("raw socket");
    let start = Instant::now();
    let mut sent = 0;
    for i in 0..count {
        let due = over.mul_f64(i as f64 / count as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let mut p = [0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.ip().octets());
        let sport = 20000 + (i % 40000) as u16;
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dst.port().to_be_bytes());
        p[24..28].copy_from_slice(&(i as u32).to_be_bytes());
        p[32] = 5 << 4;
        p[33] = 0x02;
        p[34..36].copy_from_slice(&1024u16.to_be_bytes());
        if s.send_to(&p, &SocketAddr::V4(dst).into()).is_ok() {
            sent += 1;
        }
    }
    sent
}

fn xdp(m: &str, action: &str) -> f64 {
    metric_value(
        m,
        &format!("portico_xdp_packets_total{{action=\"{action}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
fn xdp_guard_blocklist_and_syn_budget() {
    if !is_root() {
        println!("SKIP xdp_guard: needs root (CAP_BPF, CAP_NET_ADMIN) for XDP and namespaces");
        return;
    }
    let (Some(srv), Some(cli)) = (Netns::create("xsrv"), Netns::create("xcli")) else {
        println!("SKIP xdp_guard: `ip netns add` failed (no iproute2 or no namespace support)");
        return;
    };
    let n = std::process::id() % 200 + 20;
    let (vs, vc) = (format!("pxs{n}"), format!("pxc{n}"));
    let ok = Command::new("ip")
        .args(["link", "add", &vs, "type", "veth", "peer", "name", &vc])
        .status()
        .unwrap()
        .success();
    assert!(ok, "creating the veth pair");
    for (dev, ns) in [(&vs, &srv), (&vc, &cli)] {
        let st = Command::new("ip")
            .args(["link", "set", dev, "netns", &ns.0])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let ip = |host: u8| Ipv4Addr::new(10, 199, n as u8, host);
    srv.ip(&["addr", "add", &format!("{}/24", ip(1)), "dev", &vs]);
    srv.ip(&["link", "set", &vs, "up"]);
    for h in [2, 3, 4] {
        cli.ip(&["addr", "add", &format!("{}/24", ip(h)), "dev", &vc]);
    }
    cli.ip(&["link", "set", &vc, "up"]);

    let s = Site::new();
    s.file("www/a.txt", b"a");
    let conf = format!(
        "[server]\nworkers = 2\n[ebpf.xdp]\ninterface = \"{vs}\"\nblocklist = [\"{}/32\"]\nsyn_rate = 200\nsyn_burst = 400\n[[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\" }}\n",
        ip(4),
        s.root("www")
    );
    let path = s.file("portico.toml", conf.as_bytes());
    let listen = format!("{}:0", ip(1));
    let args = [
        "-c",
        path.to_str().unwrap(),
        "--listen",
        &listen,
        "--admin",
        "0.0.0.0:0",
    ];
    let p = Portico::launch(srv.command(&portico_bin()), &args, false);
    let addr = p.addr;
    let admin_port = p.admin.unwrap().port();
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let m = srv.wait_cells_up(&p, 2);
    assert!(
        p.stderr_text()
            .contains(&format!("XDP guard attached to {vs}")),
        "{}",
        p.stderr_text()
    );
    assert_eq!(metric_value(&m, "portico_ebpf_enabled"), Some(1.0));
    let entries = metric_value(&m, "portico_bpf_map_entries{map=\"BLOCK_V4\"}");
    assert_eq!(entries, Some(1.0), "the configured blocklist entry");

    // A second server on the same interface is refused: the guard is someone else's there.
    let second = srv
        .command(&portico_bin())
        .args(["serve"])
        .args(args)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already on"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // 1. The configured blocklist: every packet from .4 is dropped and counted, .2 is served.
    let before = srv.scrape(admin);
    let (a2, a4) = (ip(2), ip(4));
    let dst = SocketAddrV4::new(ip(1), addr.port());
    let sent = cli.run(None, move || {
        send_syns(a4, dst, 50, Duration::from_millis(100))
    });
    assert_eq!(sent, 50);
    let served = cli.run(None, move || {
        get_from(a2, addr, "/a.txt", Duration::from_secs(2))
    });
    assert_eq!(served.unwrap(), 200);
    std::thread::sleep(Duration::from_millis(100));
    let after = srv.scrape(admin);
    assert_eq!(
        xdp(&after, "drop_blocklist") - xdp(&before, "drop_blocklist"),
        50.0,
        "blocklist drops in /metrics must match what .4 sent"
    );

    // 2. Live changes through `portico block`, effective at once.
    let block = |args: &[&str]| {
        let out = srv
            .command(&portico_bin())
            .arg("block")
            .args(args)
            .args(["--admin", &admin.to_string()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let a3 = ip(3);
    let (ok, out) = block(&["add", &a3.to_string()]);
    assert!(ok && out.contains("added"), "{out}");
    let t = Instant::now();
    let blocked = cli.run(None, move || {
        get_from(a3, addr, "/a.txt", Duration::from_millis(800))
    });
    assert!(blocked.is_err(), "a blocked source still got {blocked:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let other = cli.run(None, move || {
        get_from(a2, addr, "/a.txt", Duration::from_secs(2))
    });
    assert_eq!(other.unwrap(), 200, "another source is untouched");
    let (ok, list) = block(&["list"]);
    assert!(
        ok && list.contains(&format!("{a3}/32")) && list.contains(&format!("{a4}/32")),
        "{list}"
    );
    // State changes are refused from a non-loopback peer (the client namespace).
    let admin_remote = SocketAddr::from((ip(1), admin_port));
    let refused = cli.run(None, move || {
        request(admin_remote, "POST", "/blocklist/add?cidr=192.0.2.1", &[]).map(|r| r.status)
    });
    assert_eq!(refused.unwrap(), 403);
    let (ok, out) = block(&["del", &format!("{a3}/32")]);
    assert!(ok && out.contains("removed"), "{out}");
    let back = cli.run(None, move || {
        get_from(a3, addr, "/a.txt", Duration::from_secs(1))
    });
    assert_eq!(back.unwrap(), 200, "unblocked within a second");

    // 3. A bounded SYN flood from .3 is cut to its budget (400 at once + 200/s) while .2 is
    // served throughout.
    std::thread::sleep(Duration::from_secs(2)); // .3's bucket refills after the requests above
    let before = srv.scrape(admin);
    let normal = cli.spawn(None, move || {
        let end = Instant::now() + Duration::from_millis(2500);
        let (mut ok, mut failed) = (0, 0);
        while Instant::now() < end {
            match get_from(a2, addr, "/a.txt", Duration::from_secs(2)) {
                Ok(200) => ok += 1,
                _ => failed += 1,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, failed)
    });
    let flood_for = Duration::from_secs(2);
    let t = Instant::now();
    let sent = cli.run(None, move || send_syns(a3, dst, 8000, flood_for));
    let elapsed = t.elapsed().as_secs_f64();
    let (ok, failed) = normal.join().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let after = srv.scrape(admin);
    let dropped = xdp(&after, "drop_synflood") - xdp(&before, "drop_synflood");
    let allowed = sent as f64 - dropped;
    let budget = 400.0 + 200.0 * elapsed;
    assert!(
        allowed <= budget + 50.0 && allowed >= 300.0,
        "sent {sent} SYNs in {elapsed:.2}s, {dropped} dropped: {allowed} allowed, budget {budget:.0}"
    );
    assert_eq!(
        failed, 0,
        "the normal client failed {failed} times ({ok} ok)"
    );
    assert!(ok > 20, "the normal client completed only {ok} requests");

    // Clean shutdown detaches the program from the interface.
    p.signal(rustix::process::Signal::TERM);
    let mut p = p;
    assert!(p.wait_exit(Duration::from_secs(10)).is_some());
    let link = Command::new("ip")
        .args(["-n", &srv.0, "-d", "link", "show", "dev", &vs])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        !link.contains("prog/xdp"),
        "XDP still attached after shutdown:\n{link}"
    );
}
