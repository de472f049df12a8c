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

/// Packets the guard has seen, whatever it did with them.
fn xdp_seen(m: &str) -> f64 {
    metric_sum(m, "portico_xdp_packets_total{")
}

fn xdp(m: &str, action: &str) -> f64 {
    metric_value(
        m,
        &format!("portico_xdp_packets_total{{action=\"{action}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A server namespace and a client namespace joined by a veth pair: server 10.199.n.1 on
/// `vs`, client addresses .2, .3 and .4 on its peer. Deleting the namespaces removes the pair.
struct Pair {
    srv: Netns,
    cli: Netns,
    vs: String,
    n: u8,
}

impl Pair {
    /// None (after a skip marker naming `test`) without root or namespace support.
    fn create(test: &str) -> Option<Pair> {
        if !is_root() {
            skip(
                test,
                "needs root (CAP_BPF, CAP_NET_ADMIN) for XDP and namespaces",
            );
            return None;
        }
        let (Some(srv), Some(cli)) = (Netns::create("xsrv"), Netns::create("xcli")) else {
            skip(
                test,
                "`ip netns add` failed (no iproute2 or no namespace support)",
            );
            return None;
        };
        let n = (std::process::id() % 200 + 20) as u8;
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
        let pair = Pair { srv, cli, vs, n };
        pair.srv.ip(&[
            "addr",
            "add",
            &format!("{}/24", pair.ip(1)),
            "dev",
            &pair.vs,
        ]);
        pair.srv.ip(&["link", "set", &pair.vs, "up"]);
        for h in [2, 3, 4, 5] {
            pair.cli
                .ip(&["addr", "add", &format!("{}/24", pair.ip(h)), "dev", &vc]);
        }
        pair.cli.ip(&["link", "set", &vc, "up"]);
        Some(pair)
    }

    /// The client's end of the pair.
    fn vc(&self) -> String {
        format!("pxc{}", self.n)
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 199, self.n, host)
    }

    /// Starts portico in the server namespace with `xdp` lines under `[ebpf.xdp]`, serving
    /// www/a.txt on 10.199.n.1; admin on all addresses (state changes only from loopback).
    fn start(&self, s: &Site, xdp: &str) -> Portico {
        s.file("www/a.txt", b"a");
        let conf = format!(
            "[server]\nworkers = 2\n[ebpf.xdp]\ninterface = \"{}\"\n{xdp}\n[[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\" }}\n",
            self.vs,
            s.root("www")
        );
        s.file("portico.toml", conf.as_bytes());
        let args = self.args(s);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Portico::launch(self.srv.command(&portico_bin()), &args, false)
    }

    /// The command line `start` uses (after `serve`).
    fn args(&self, s: &Site) -> Vec<String> {
        vec![
            "-c".into(),
            s.root("portico.toml"),
            "--listen".into(),
            format!("{}:0", self.ip(1)),
            "--admin".into(),
            "0.0.0.0:0".into(),
        ]
    }
}

#[test]
fn xdp_guard_blocklist_and_syn_budget() {
    let Some(pair) = Pair::create("xdp_guard_blocklist_and_syn_budget") else {
        return;
    };
    let (srv, cli, vs, ip) = (&pair.srv, &pair.cli, &pair.vs, |h| pair.ip(h));
    let s = Site::new();
    let p = pair.start(
        &s,
        &format!(
            "blocklist = [\"{}/32\"]\nsyn_rate = 200\nsyn_burst = 400",
            ip(4)
        ),
    );
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
        .args(pair.args(&s))
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
    // The counters are read from the program's maps: wait until all 50 SYNs are in.
    let mut after = String::new();
    wait_until(Duration::from_secs(5), "the 50 SYNs are counted", || {
        after = srv.scrape(admin);
        xdp(&after, "drop_blocklist") - xdp(&before, "drop_blocklist") >= 50.0
    });
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

    // 3. A bounded SYN flood from .5 (a source with a full bucket: nothing sent from it yet) is
    // cut to its budget (400 at once + 200/s) while .2 is served throughout.
    let a5 = ip(5);
    let before = srv.scrape(admin);
    let normal = cli.spawn(None, move || {
        let end = Instant::now() + Duration::from_millis(2500);
        let (mut ok, mut failed) = (0, 0);
        while Instant::now() < end {
            match get_from(a2, addr, "/a.txt", Duration::from_secs(2)) {
                Ok(200) => ok += 1,
                _ => failed += 1,
            }
            // Pacing: a normal client's rate, for the bounded 2.5 s above.
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, failed)
    });
    let flood_for = Duration::from_secs(2);
    let t = Instant::now();
    let sent = cli.run(None, move || send_syns(a5, dst, 8000, flood_for));
    let elapsed = t.elapsed().as_secs_f64();
    let (ok, failed) = normal.join().unwrap();
    // Every SYN sent has been through the guard (dropped or passed) before counting.
    let mut after = String::new();
    wait_until(Duration::from_secs(5), "the guard saw every SYN", || {
        after = srv.scrape(admin);
        xdp_seen(&after) - xdp_seen(&before) >= sent as f64
    });
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
    assert!(ok > 0, "the normal client completed no request");

    // Clean shutdown detaches the program from the interface.
    p.signal(rustix::process::Signal::TERM);
    let mut p = p;
    assert!(p.wait_exit(Duration::from_secs(10)).is_some());
    let link = Command::new("ip")
        .args(["-n", &srv.0, "-d", "link", "show", "dev", vs])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        !link.contains("prog/xdp"),
        "XDP still attached after shutdown:\n{link}"
    );
}

const CPU_REDIRECT: &str = "xdp_guard_cpu_redirect_spreads_one_cpus_flows_over_the_cells";

#[test]
fn xdp_guard_cpu_redirect_spreads_one_cpus_flows_over_the_cells() {
    if cpus() < 2 {
        skip(CPU_REDIRECT, "needs 2 CPUs");
        return;
    }
    let Some(pair) = Pair::create(CPU_REDIRECT) else {
        return;
    };
    // The CPUMAP rebuilds each packet as a new skb without the veth's "checksum still to be
    // done" state, so TCP would see the client's unfinished checksums and drop every packet:
    // the client computes them itself (as a real NIC's packets always carry them).
    let offload = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.cli.0,
            "ethtool",
            "-K",
            &pair.vc(),
            "tx",
            "off",
        ])
        .output();
    match offload {
        Ok(o) if o.status.success() => {}
        _ => {
            skip(
                CPU_REDIRECT,
                "ethtool missing (cargo xtask test installs it)",
            );
            return;
        }
    }
    let s = Site::new();
    let p = pair.start(&s, "cpu_redirect = true");
    let addr = p.addr;
    let admin = SocketAddr::from(([127, 0, 0, 1], p.admin.unwrap().port()));
    let before = pair.srv.wait_cells_up(&p, 2);
    assert_eq!(metric_value(&before, "portico_ebpf_enabled"), Some(1.0));

    // Every connection comes from a client pinned to CPU 0: without the redirect its packets
    // are received on CPU 0 and the `cpu` policy would give them all to cell 0.
    const CONNS: usize = 100;
    let src = pair.ip(2);
    let statuses = pair.cli.run(Some(0), move || {
        (0..CONNS)
            .map(|_| get_from(src, addr, "/a.txt", Duration::from_secs(2)).ok())
            .collect::<Vec<_>>()
    });
    assert!(
        statuses.iter().all(|s| *s == Some(200)),
        "every redirected connection is served: {statuses:?}"
    );
    let after = pair.srv.scrape(admin);
    // At least the SYN and the request of each connection went through the CPUMAP.
    let redirected = xdp(&after, "redirect") - xdp(&before, "redirect");
    assert!(
        redirected >= 2.0 * CONNS as f64,
        "{redirected} packets redirected for {CONNS} connections"
    );
    let per_cell: Vec<f64> = (0..2)
        .map(|c| {
            delta(
                &after,
                &before,
                &format!("portico_steering_decisions_total{{cell=\"{c}\",result=\"selected\"}}"),
            )
        })
        .collect();
    assert_eq!(per_cell.iter().sum::<f64>(), CONNS as f64, "{per_cell:?}");
    // A flow hash over two CPUs: each gets 20% or more (a miss is ~1e-9 for a fair hash).
    assert!(
        per_cell.iter().all(|n| *n >= CONNS as f64 * 0.2),
        "connections per cell {per_cell:?}: the redirect did not spread them"
    );
}
