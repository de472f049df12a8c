//! Table-driven decisions of the guard, run through BPF_PROG_TEST_RUN: a frame in, an XDP
//! action out. Shared by the unit test and `portico xdp-test-run` (which the bench uses to
//! time the drop path).

use super::*;
use actions::*;

/// XDP action values (linux/bpf.h), named for the table.
mod actions {
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
}

#[derive(Debug)]
pub struct Fixture {
    pub name: &'static str,
    pub frame: Vec<u8>,
    pub expect: u32,
}

/// Settings the table assumes: port 80 guarded, 2 SYNs of burst, 1 per second after that.
pub fn config() -> (XdpConfig, Vec<u16>) {
    let cfg = XdpConfig {
        interface: String::new(),
        blocklist: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
        syn_rate: 1,
        syn_burst: 2,
        ..XdpConfig::default()
    };
    (cfg, vec![80])
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t
}

fn eth(ethertype: u16, vlan: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    if vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&7u16.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 header (`options` 4-byte words, fragment offset `frag`) + payload.
fn ipv4(src: [u8; 4], options: usize, frag: u16, payload: &[u8]) -> Vec<u8> {
    let ihl = 5 + options;
    let mut p = vec![0u8; ihl * 4];
    p[0] = 0x40 | ihl as u8;
    let total = (ihl * 4 + payload.len()) as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&[192, 0, 2, 80]);
    p.extend_from_slice(payload);
    p
}

fn ipv6(src: std::net::Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 6;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    p.extend_from_slice(payload);
    p
}

pub fn v4_syn(src: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
    eth(0x0800, false, &ipv4(src, 0, 0, &tcp(40000, dport, flags)))
}

/// The table, in order: the SYN bucket rows depend on the rows before them.
pub fn table() -> Vec<Fixture> {
    let ok = [192, 0, 2, 1];
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
    vec![
        Fixture {
            name: "IPv4 SYN from a blocked /8",
            frame: v4_syn([10, 1, 2, 3], 80, SYN),
            expect: DROP,
        },
        Fixture {
            name: "IPv4 ACK from a blocked /8 (all its traffic)",
            frame: v4_syn([10, 1, 2, 3], 22, ACK),
            expect: DROP,
        },
        Fixture {
            name: "SYN 1 of a burst of 2",
            frame: v4_syn(ok, 80, SYN),
            expect: PASS,
        },
        Fixture {
            name: "SYN 2 of a burst of 2",
            frame: v4_syn(ok, 80, SYN),
            expect: PASS,
        },
        Fixture {
            name: "SYN 3: over the source's budget",
            frame: v4_syn(ok, 80, SYN),
            expect: DROP,
        },
        Fixture {
            name: "established ACK from the same source",
            frame: v4_syn(ok, 80, ACK),
            expect: PASS,
        },
        Fixture {
            name: "SYN-ACK is not a new connection",
            frame: v4_syn(ok, 80, SYN | ACK),
            expect: PASS,
        },
        Fixture {
            name: "SYN to a port Portico does not listen on",
            frame: v4_syn(ok, 22, SYN),
            expect: PASS,
        },
        Fixture {
            name: "SYN with IP options, same source (still over budget)",
            frame: eth(0x0800, false, &ipv4(ok, 2, 0, &tcp(40001, 80, SYN))),
            expect: DROP,
        },
        Fixture {
            name: "another source has its own bucket",
            frame: v4_syn([198, 51, 100, 7], 80, SYN),
            expect: PASS,
        },
        Fixture {
            name: "IPv6 SYN from a blocked /32",
            frame: eth(
                0x86DD,
                false,
                &ipv6(v6("2001:db8::1"), &tcp(40000, 80, SYN)),
            ),
            expect: DROP,
        },
        Fixture {
            name: "IPv6 SYN from outside the blocked /32",
            frame: eth(
                0x86DD,
                false,
                &ipv6(v6("2001:db9::1"), &tcp(40000, 80, SYN)),
            ),
            expect: PASS,
        },
        Fixture {
            name: "VLAN-tagged IPv4 from a blocked /8",
            frame: eth(0x0800, true, &ipv4([10, 9, 9, 9], 0, 0, &tcp(1, 80, SYN))),
            expect: DROP,
        },
        Fixture {
            name: "non-first fragment (no TCP header to read)",
            frame: eth(0x0800, false, &ipv4(ok, 0, 100, &[0u8; 20])),
            expect: PASS,
        },
        Fixture {
            name: "ARP",
            frame: eth(0x0806, false, &[0u8; 28]),
            expect: PASS,
        },
        Fixture {
            name: "truncated IPv4 header",
            frame: eth(0x0800, false, &[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6]),
            expect: PASS,
        },
    ]
}

/// One fixture's outcome.
#[derive(Debug)]
pub struct Outcome {
    pub name: &'static str,
    pub expect: u32,
    pub got: u32,
}

/// Loads a fresh, unattached guard with [`config`] and runs the table once, in order.
pub fn run() -> Result<Vec<Outcome>, EbpfError> {
    let (cfg, ports) = config();
    let guard = XdpGuard::load(&cfg, &ports, &[], None)?;
    table()
        .into_iter()
        .map(|f| {
            let (got, _) = guard.test_run(&f.frame, 1)?;
            Ok(Outcome {
                name: f.name,
                expect: f.expect,
                got,
            })
        })
        .collect()
}

/// Time per packet of the drop paths and of a passed packet, `repeat` runs each.
pub fn cost(repeat: u32) -> Result<Vec<(&'static str, u32, Duration)>, EbpfError> {
    let (mut cfg, ports) = config();
    // A bucket big enough that the timed SYNs all pass: the pass row times the full parse.
    cfg.syn_burst = u32::MAX / 2;
    cfg.syn_rate = 1_000_000;
    let mut guard = XdpGuard::load(&cfg, &ports, &[], None)?;
    // A blocklist of realistic size, so the trie lookup is not a one-entry walk.
    for i in 0..1000u32 {
        let b = i.to_be_bytes();
        let c: Cidr = format!("100.{}.{}.0/24", b[2], b[3])
            .parse()
            .map_err(EbpfError::Setup)?;
        guard.block(c, true)?;
    }
    let rows = [
        ("drop: blocklisted source", v4_syn([10, 1, 2, 3], 80, SYN)),
        ("pass: SYN within budget", v4_syn([192, 0, 2, 1], 80, SYN)),
        ("pass: established ACK", v4_syn([192, 0, 2, 1], 80, ACK)),
    ];
    rows.into_iter()
        .map(|(name, frame)| {
            let (action, d) = guard.test_run(&frame, repeat)?;
            Ok((name, action, d))
        })
        .collect()
}

/// "DROP"/"PASS"/... for an action value.
pub fn action_name(a: u32) -> &'static str {
    match a {
        0 => "ABORTED",
        1 => "DROP",
        2 => "PASS",
        3 => "TX",
        4 => "REDIRECT",
        _ => "?",
    }
}
