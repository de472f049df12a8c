//! Loader for the `xdp_guard` XDP program (blocklist, SYN-flood guard, CPU spreading), its
//! run-time blocklist changes, and the BPF_PROG_TEST_RUN fixtures that pin its decisions down.
use std::cell::Cell as StdCell;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, CpuMap, HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use lb_common::{MAX_CPUS, V4Addr, V6Addr, XdpCount, names, xdp};
use wsgi_worker::Cidr;

use crate::config::XdpConfig;
use crate::ebpf::{EbpfError, PinDir, XDP_OBJ, load_program, map_err, map_mut, program_mut};
use crate::metrics::XdpSnapshot;

/// CPUMAP queue per CPU (frames waiting for that CPU's stack).
const CPUMAP_QSIZE: u32 = 2048;

/// The XDP guard on one interface. Dropping it detaches the program (the link is ours).
pub struct XdpGuard {
    bpf: Ebpf,
    iface: String,
    mode: &'static str,
    /// SYN_BUCKETS is walked key by key: counted at most every few seconds.
    buckets: StdCell<(Option<Instant>, u64)>,
}

impl XdpGuard {
    /// Loads the program with `cfg`'s settings and maps filled; not attached yet.
    pub fn load(
        cfg: &XdpConfig,
        ports: &[u16],
        cpus: &[usize],
        pins: Option<&PinDir>,
    ) -> Result<Self, EbpfError> {
        let redirect = u32::from(cfg.cpu_redirect);
        // A CPUMAP may not have more entries than the kernel has possible CPUs.
        let possible = aya::util::nr_cpus()
            .map_or(1, |n| n as u32)
            .clamp(1, MAX_CPUS);
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::CPU_REDIRECT, possible)
            .override_global(names::SYN_RATE, &cfg.syn_rate, true)
            .override_global(names::SYN_BURST, &cfg.syn_burst, true)
            .override_global(names::CPU_REDIRECT_ON, &redirect, true);
        if let Some(p) = pins {
            for name in [
                names::XDP_COUNTERS,
                names::BLOCK_V4,
                names::BLOCK_V6,
                names::SYN_BUCKETS,
                names::XDP_PORTS,
                names::CPU_REDIRECT,
                names::REDIRECT_CPUS,
            ] {
                loader.map_pin_path(name, p.pin(name));
            }
        }
        let mut bpf = loader.load(XDP_OBJ)?;
        {
            let mut p: BpfHashMap<&mut MapData, u16, u32> = map_mut(&mut bpf, names::XDP_PORTS)?
                .try_into()
                .map_err(map_err("open XDP_PORTS"))?;
            for &port in ports {
                p.insert(port, 1, 0).map_err(map_err("fill XDP_PORTS"))?;
            }
        }
        let mut distinct: Vec<u32> = Vec::new();
        for &c in cpus {
            if (c as u32) < possible && !distinct.contains(&(c as u32)) {
                distinct.push(c as u32);
            }
        }
        if cfg.cpu_redirect {
            let mut cm: CpuMap<&mut MapData> = map_mut(&mut bpf, names::CPU_REDIRECT)?
                .try_into()
                .map_err(map_err("open CPU_REDIRECT"))?;
            for &c in &distinct {
                cm.set(c, CPUMAP_QSIZE, None, 0)
                    .map_err(|e| EbpfError::Setup(format!("fill CPU_REDIRECT: {e}")))?;
            }
            let mut list: Array<&mut MapData, u32> = map_mut(&mut bpf, names::REDIRECT_CPUS)?
                .try_into()
                .map_err(map_err("open REDIRECT_CPUS"))?;
            for (i, &c) in distinct.iter().enumerate() {
                list.set(i as u32 + 1, c, 0)
                    .map_err(map_err("fill REDIRECT_CPUS"))?;
            }
            list.set(0, distinct.len() as u32, 0)
                .map_err(map_err("fill REDIRECT_CPUS"))?;
        }
        load_program(&mut bpf, names::XDP_PROGRAM, Xdp::load)?;
        let mut guard = XdpGuard {
            bpf,
            iface: String::new(),
            mode: "",
            buckets: StdCell::new((None, 0)),
        };
        for c in &cfg.blocklist {
            let cidr: Cidr = c.parse().map_err(EbpfError::Setup)?;
            guard.block(cidr, true)?;
        }
        Ok(guard)
    }

    /// Attaches to `cfg.interface` in `cfg.mode` (auto: native, else generic). Another
    /// program already there is an error unless `cfg.replace`.
    pub fn attach(&mut self, cfg: &XdpConfig) -> Result<(), EbpfError> {
        use crate::config::XdpMode as M;
        let modes: &[(XdpMode, &'static str)] = match cfg.mode {
            M::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "skb")],
            M::Native => &[(XdpMode::Driver, "native")],
            M::Skb => &[(XdpMode::Skb, "skb")],
        };
        let mut replaced = false;
        let mut last = None;
        let mut i = 0;
        while i < modes.len() {
            let (mode, label) = modes[i];
            let prog: &mut Xdp = program_mut(&mut self.bpf, names::XDP_PROGRAM)?;
            match prog.attach(&cfg.interface, mode) {
                Ok(_) => {
                    self.iface = cfg.interface.clone();
                    self.mode = label;
                    return Ok(());
                }
                Err(e) if is_busy(&e) => {
                    if !cfg.replace {
                        return Err(EbpfError::XdpBusy(cfg.interface.clone()));
                    }
                    if replaced {
                        return Err(EbpfError::XdpAttach {
                            iface: cfg.interface.clone(),
                            mode: label,
                            source: e,
                        });
                    }
                    tracing::warn!(
                        "XDP: replacing the program already attached to {}",
                        cfg.interface
                    );
                    detach_foreign(&cfg.interface);
                    replaced = true;
                    continue;
                }
                Err(e) => {
                    tracing::debug!("XDP {label} mode on {}: {e}", cfg.interface);
                    last = Some(EbpfError::XdpAttach {
                        iface: cfg.interface.clone(),
                        mode: label,
                        source: e,
                    });
                }
            }
            i += 1;
        }
        Err(last.unwrap_or(EbpfError::MissingProgram(names::XDP_PROGRAM)))
    }

    pub fn interface(&self) -> &str {
        &self.iface
    }

    /// `native` or `skb`.
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// Adds (`add`) or removes a blocklist entry. Ok(false): nothing to change.
    pub fn block(&mut self, cidr: Cidr, add: bool) -> Result<bool, EbpfError> {
        let bits = cidr.bits() as u32;
        match cidr.network() {
            IpAddr::V4(a) => {
                let mut t: LpmTrie<&mut MapData, V4Addr, u32> =
                    map_mut(&mut self.bpf, names::BLOCK_V4)?
                        .try_into()
                        .map_err(map_err("open BLOCK_V4"))?;
                trie_change(&mut t, Key::new(bits, a.octets()), add)
            }
            IpAddr::V6(a) => {
                let mut t: LpmTrie<&mut MapData, V6Addr, u32> =
                    map_mut(&mut self.bpf, names::BLOCK_V6)?
                        .try_into()
                        .map_err(map_err("open BLOCK_V6"))?;
                trie_change(&mut t, Key::new(bits, a.octets()), add)
            }
        }
    }

    /// One blocklist trie (`BLOCK_V4` with 4-byte keys, `BLOCK_V6` with 16).
    fn trie<K: aya::Pod>(&self, name: &'static str) -> Option<LpmTrie<&MapData, K, u32>> {
        self.bpf.map(name)?.try_into().ok()
    }

    /// Entries of one blocklist trie, as CIDRs.
    fn trie_cidrs<K: aya::Pod>(&self, name: &'static str) -> Vec<String>
    where
        IpAddr: From<K>,
    {
        self.trie::<K>(name).map_or_else(Vec::new, |t| {
            t.keys()
                .flatten()
                .map(|k| format!("{}/{}", IpAddr::from(k.data()), k.prefix_len()))
                .collect()
        })
    }

    /// The blocklist, IPv4 first.
    pub fn blocklist(&self) -> Vec<String> {
        let mut out = self.trie_cidrs::<V4Addr>(names::BLOCK_V4);
        out.extend(self.trie_cidrs::<V6Addr>(names::BLOCK_V6));
        out
    }

    /// Packets and bytes by action, summed over CPUs.
    pub fn snapshot(&self) -> XdpSnapshot {
        let mut snap = XdpSnapshot {
            enabled: true,
            ..Default::default()
        };
        if let Some(Ok(c)) = self
            .bpf
            .map(names::XDP_COUNTERS)
            .map(PerCpuArray::<_, XdpCount>::try_from)
        {
            for a in 0..xdp::ACTIONS {
                if let Ok(vals) = c.get(&a, 0) {
                    for v in vals.iter() {
                        snap.packets[a as usize] += v.packets;
                        snap.bytes[a as usize] += v.bytes;
                    }
                }
            }
        }
        snap
    }

    /// Entries of the guard's hash and trie maps.
    pub fn map_entries(&self) -> Vec<(&'static str, u64)> {
        let v4 = self
            .trie::<V4Addr>(names::BLOCK_V4)
            .map_or(0, |t| t.keys().count() as u64);
        let v6 = self
            .trie::<V6Addr>(names::BLOCK_V6)
            .map_or(0, |t| t.keys().count() as u64);
        let ports = self
            .bpf
            .map(names::XDP_PORTS)
            .and_then(|m| BpfHashMap::<_, u16, u32>::try_from(m).ok())
            .map_or(0, |t| t.keys().count() as u64);
        let count_buckets = || {
            self.bpf
                .map(names::SYN_BUCKETS)
                .and_then(|m| BpfHashMap::<_, V6Addr, lb_common::SynBucket>::try_from(m).ok())
                .map_or(0, |t| t.keys().count() as u64)
        };
        let (at, n) = self.buckets.get();
        let buckets = match at {
            Some(t) if t.elapsed() < Duration::from_secs(5) => n,
            _ => {
                let n = count_buckets();
                self.buckets.set((Some(Instant::now()), n));
                n
            }
        };
        vec![
            (names::BLOCK_V4, v4),
            (names::BLOCK_V6, v6),
            (names::SYN_BUCKETS, buckets),
            (names::XDP_PORTS, ports),
        ]
    }

    /// Runs the program on `frame` through BPF_PROG_TEST_RUN `repeat` times: its action and
    /// the kernel-measured time per run.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration), EbpfError> {
        let prog: &Xdp = self
            .bpf
            .program(names::XDP_PROGRAM)
            .ok_or(EbpfError::MissingProgram(names::XDP_PROGRAM))?
            .try_into()
            .map_err(|source| EbpfError::Program {
                op: "type check",
                source,
                log: String::new(),
            })?;
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..Default::default()
            })
            .map_err(|source| EbpfError::Program {
                op: "BPF_PROG_TEST_RUN",
                source,
                log: String::new(),
            })?;
        Ok((r.return_value, r.duration))
    }
}

fn trie_change<K: aya::Pod>(
    t: &mut LpmTrie<&mut MapData, K, u32>,
    key: Key<K>,
    add: bool,
) -> Result<bool, EbpfError> {
    let present = t.get(&key, 0).is_ok();
    if add == present {
        return Ok(false);
    }
    if add {
        t.insert(&key, 1, 0)
            .map_err(map_err("insert into the blocklist"))?;
    } else {
        t.remove(&key)
            .map_err(map_err("remove from the blocklist"))?;
    }
    Ok(true)
}

/// EBUSY/EEXIST from attaching: another XDP program holds the interface.
fn is_busy(e: &ProgramError) -> bool {
    let code = match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    matches!(code, Some(libc::EBUSY) | Some(libc::EEXIST))
        || e.to_string().contains("Device or resource busy")
}

/// `replace = true`: detaches whatever XDP program is on `iface` (every mode), with iproute2.
fn detach_foreign(iface: &str) {
    for what in ["xdp", "xdpgeneric", "xdpdrv"] {
        let _ = std::process::Command::new("ip")
            .args(["link", "set", "dev", iface, what, "off"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Table-driven decisions of the guard, run through BPF_PROG_TEST_RUN: a frame in, an XDP
/// action out. Shared by the unit test and `portico xdp-test-run` (which the bench uses to
/// time the drop path).
pub mod fixtures {
    use super::*;
    use actions::*;

    /// XDP action values (linux/bpf.h), named for the table.
    mod actions {
        pub const DROP: u32 = 1;
        pub const PASS: u32 = 2;
    }

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
}

#[cfg(test)]
mod tests {
    use super::fixtures;

    fn privileged() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn xdp_guard_decisions_match_the_table() {
        if !privileged() {
            println!("SKIP xdp_guard fixtures: BPF_PROG_TEST_RUN needs root (CAP_BPF)");
            return;
        }
        let outcomes = fixtures::run().expect("load the XDP guard and run the fixtures");
        let wrong: Vec<String> = outcomes
            .iter()
            .filter(|o| o.got != o.expect)
            .map(|o| {
                format!(
                    "{}: expected {}, got {}",
                    o.name,
                    fixtures::action_name(o.expect),
                    fixtures::action_name(o.got)
                )
            })
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert_eq!(outcomes.len(), fixtures::table().len());
    }

    #[test]
    fn blocklist_changes_and_lists() {
        if !privileged() {
            println!("SKIP xdp_guard blocklist: needs root (CAP_BPF)");
            return;
        }
        let (cfg, ports) = fixtures::config();
        let mut g = super::XdpGuard::load(&cfg, &ports, &[], None).unwrap();
        let c = |s: &str| s.parse::<wsgi_worker::Cidr>().unwrap();
        assert!(g.block(c("192.0.2.77"), true).unwrap());
        assert!(!g.block(c("192.0.2.77/32"), true).unwrap(), "added twice");
        let frame = fixtures::v4_syn([192, 0, 2, 77], 80, fixtures::ACK);
        assert_eq!(g.test_run(&frame, 1).unwrap().0, 1, "blocked at once");
        let list = g.blocklist();
        for want in ["10.0.0.0/8", "192.0.2.77/32", "2001:db8::/32"] {
            assert!(
                list.iter().any(|l| l == want),
                "{want} missing from {list:?}"
            );
        }
        assert!(g.block(c("192.0.2.77/32"), false).unwrap());
        assert!(
            !g.block(c("192.0.2.77/32"), false).unwrap(),
            "removed twice"
        );
        assert_eq!(g.test_run(&frame, 1).unwrap().0, 2, "passes again");
        // Host bits are cleared: 10.1.2.3/8 is the same entry as 10.0.0.0/8.
        assert!(g.block(c("10.1.2.3/8"), false).unwrap());
    }
}
