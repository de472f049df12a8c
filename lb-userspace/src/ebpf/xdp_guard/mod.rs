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
use crate::ebpf::loader::{
    EbpfError, PinDir, XDP_OBJ, load_program, map_err, map_mut, program_mut,
};
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
    matches!(code, Some(libc::EBUSY | libc::EEXIST))
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

pub mod fixtures;

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
