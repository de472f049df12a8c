//! What the master reads at scrape time besides the shared counters: eBPF maps and /proc.
/// Steering numbers for the exposition (read by the master from the maps).
#[derive(Debug, Default, Clone)]
pub struct SteeringSnapshot {
    pub enabled: bool,
    /// Per cell: decisions by `lb_common::steering` result.
    pub per_cell: Vec<[u64; lb_common::steering::RESULTS as usize]>,
    /// Connections that found no live cell (the kernel's hash chose).
    pub no_live_cell: u64,
}

/// XDP guard numbers: packets and bytes by `lb_common::xdp` action.
#[derive(Debug, Default, Clone)]
pub struct XdpSnapshot {
    pub enabled: bool,
    pub packets: [u64; lb_common::xdp::ACTIONS as usize],
    pub bytes: [u64; lb_common::xdp::ACTIONS as usize],
}

/// Everything eBPF for one scrape.
#[derive(Debug, Default, Clone)]
pub struct EbpfSnapshot {
    pub steering: SteeringSnapshot,
    pub xdp: XdpSnapshot,
    /// The tunnel_relay program's counters by `lb_common::tunnel` result; None while it is not
    /// loaded (`relay = "sockmap"` tunnels are copied).
    pub tunnel_relay: Option<[u64; lb_common::tunnel::COUNTERS as usize]>,
    /// (map name, entries) of the maps whose size changes at run time.
    pub map_entries: Vec<(&'static str, u64)>,
}

/// What the master reads from the kernel at scrape time.
#[derive(Debug, Default, Clone)]
pub struct ProcSnapshot {
    /// (listen address, cell, connections waiting in its accept queue).
    pub listen_queues: Vec<(String, usize, u64)>,
    /// Per cell: resident bytes and CPU seconds of its process (None: not running).
    pub cells: Vec<Option<(u64, f64)>>,
}

/// Resident bytes and CPU seconds (user + system) of a process, from /proc.
pub fn process_usage(pid: u32) -> Option<(u64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    Some((
        rss_pages * rustix::param::page_size() as u64,
        (utime + stime) / ticks,
    ))
}
