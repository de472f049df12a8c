//! Types shared by the eBPF programs (`lb-ebpf`) and the userspace loader (`lb-userspace`).
//!
//! Everything here is `#[repr(C)]` with no implicit padding, so both sides read the same bytes.
#![no_std]
// The only unsafe here is the `aya::Pod` impls behind the `user` feature.
#![cfg_attr(not(feature = "user"), forbid(unsafe_code))]
#![cfg_attr(feature = "user", deny(unsafe_code))]

/// Most cells (and so reuseport slots) one listen address can have.
pub const MAX_CELLS: u32 = 256;
/// Most CPUs the CPU -> cell table covers.
pub const MAX_CPUS: u32 = 1024;

/// Map, program and global names, written once so loader and programs agree.
pub mod names {
    /// REUSEPORT_SOCKARRAY: slot = cell index, value = that cell's listener (empty while the
    /// cell cannot take connections).
    pub const CELL_SOCKETS: &str = "CELL_SOCKETS";
    /// ARRAY: index = CPU, value = [`super::CpuCell`].
    pub const CPU_CELLS: &str = "CPU_CELLS";
    /// ARRAY of u32: `[0]` = number of live cells, `[1..=n]` = their indices (for hashing).
    pub const LIVE_CELLS: &str = "LIVE_CELLS";
    /// ARRAY of [`super::CellLoad`], mmapable: index = cell. The cells write their own entry;
    /// the steering program adds the connections it queues on a cell.
    pub const CELL_LOAD: &str = "CELL_LOAD";
    /// PERCPU_ARRAY of u64 indexed by [`super::steering::index`].
    pub const STEERING_COUNTERS: &str = "STEERING_COUNTERS";
    /// The sk_reuseport program.
    pub const STEERING_PROGRAM: &str = "steering";
    /// Global: the [`super::steering`] policy constant.
    pub const STEERING_POLICY: &str = "STEERING_POLICY";

    /// The XDP program.
    pub const XDP_PROGRAM: &str = "xdp_guard";
    /// PERCPU_ARRAY of [`super::XdpCount`] indexed by [`super::xdp`] action.
    pub const XDP_COUNTERS: &str = "XDP_COUNTERS";
    /// LPM_TRIE: key = prefix length + IPv4 address, value = 1.
    pub const BLOCK_V4: &str = "BLOCK_V4";
    /// LPM_TRIE: key = prefix length + IPv6 address, value = 1.
    pub const BLOCK_V6: &str = "BLOCK_V6";
    /// LRU_HASH: key = source address (IPv4 mapped into IPv6), value = [`super::SynBucket`].
    pub const SYN_BUCKETS: &str = "SYN_BUCKETS";
    /// HASH: key = a listen port (host order), value = 1. Only these ports are guarded and spread.
    pub const XDP_PORTS: &str = "XDP_PORTS";
    /// CPUMAP: the cells' CPUs, for `cpu_redirect`.
    pub const CPU_REDIRECT: &str = "CPU_REDIRECT";
    /// ARRAY of u32: `[0]` = number of CPUs to spread over, `[1..=n]` = CPU ids.
    pub const REDIRECT_CPUS: &str = "REDIRECT_CPUS";
    /// Globals of the XDP program.
    pub const SYN_RATE: &str = "SYN_RATE";
    pub const SYN_BURST: &str = "SYN_BURST";
    pub const CPU_REDIRECT_ON: &str = "CPU_REDIRECT_ON";

    /// The sk_skb stream-verdict program of `relay = "sockmap"` tunnels.
    pub const TUNNEL_RELAY_PROGRAM: &str = "tunnel_relay";
    /// SOCKHASH: key = a socket's cookie (SO_COOKIE), value = the socket. Both sides of every
    /// sockmap tunnel; the program is attached to it.
    pub const TUNNEL_SOCKS: &str = "TUNNEL_SOCKS";
    /// HASH: key = a socket's cookie, value = [`super::TunnelPeer`] (where its bytes go).
    pub const TUNNEL_PEERS: &str = "TUNNEL_PEERS";
    /// PERCPU_ARRAY of u64 indexed by [`super::tunnel`] result.
    pub const TUNNEL_STATS: &str = "TUNNEL_STATS";
}

/// Steering policies and decision counters.
pub mod steering {
    /// The cell pinned to the CPU that processed the SYN.
    pub const POLICY_CPU: u32 = 0;
    /// The kernel's flow hash over the live cells.
    pub const POLICY_HASH: u32 = 1;
    /// Power of two choices: the local cell or a hashed one, whichever has less load.
    pub const POLICY_LEAST_LOADED: u32 = 2;

    /// The policy's choice took the connection.
    pub const SELECTED: u32 = 0;
    /// The policy's choice had no listener (dead or recycling cell): another live cell took it.
    pub const FALLBACK: u32 = 1;
    /// A queued connection of a closed listener moved to this cell.
    pub const MIGRATED: u32 = 2;
    /// Load of one WSGI request in flight, in open connections: a connection costs the event
    /// loop microseconds, a request waiting for a Python thread holds its client for the app's
    /// whole run, so a cell stalled in Python must look busier than one holding idle
    /// keep-alive connections.
    pub const LOAD_PER_WSGI_REQUEST: u64 = 16;
    /// Nanoseconds per unit of load for the age of a cell's oldest Python request (~65 us):
    /// a cell whose app has sat 10 ms on one request weighs like 150 more connections, so a
    /// cell stalled in Python is avoided however few connections it holds.
    pub const AGE_SHIFT: u32 = 16;
    /// Per-cell results.
    pub const RESULTS: u32 = 3;
    /// Label values, in index order, for metrics.
    pub const LABELS: [&str; RESULTS as usize] = ["selected", "fallback", "migrated"];
    /// No live cell at all: the kernel's hash chose (the connection waits in a listener that
    /// the master keeps open until a cell is back).
    pub const NO_LIVE_CELL: u32 = super::MAX_CELLS * RESULTS;
    /// Entries of the counter array.
    pub const COUNTERS: u32 = NO_LIVE_CELL + 1;

    /// Counter index of `result` for `cell`.
    #[inline(always)]
    pub const fn index(cell: u32, result: u32) -> u32 {
        cell * RESULTS + result
    }
}

/// XDP actions counted in `XDP_COUNTERS`.
pub mod xdp {
    pub const PASS: u32 = 0;
    pub const DROP_BLOCKLIST: u32 = 1;
    pub const DROP_SYNFLOOD: u32 = 2;
    pub const REDIRECT: u32 = 3;
    pub const ACTIONS: u32 = 4;
    /// Label values, in index order, for metrics.
    pub const LABELS: [&str; ACTIONS as usize] =
        ["pass", "drop_blocklist", "drop_synflood", "redirect"];
    /// Token-bucket units per token: buckets hold token-nanoseconds so refills need no division.
    pub const NS_PER_TOKEN: u64 = 1_000_000_000;
    /// Entries of the SYN bucket LRU (sources tracked at once).
    pub const SYN_SOURCES: u32 = 65536;
    /// Entries of each blocklist trie.
    pub const BLOCK_ENTRIES: u32 = 16384;
    /// Listen ports the guard knows.
    pub const MAX_PORTS: u32 = 64;
}

/// The tunnel_relay program's limits and counters.
pub mod tunnel {
    /// Sockets in TUNNEL_SOCKS at once (two per tunnel), over every cell.
    pub const MAX_SOCKETS: u32 = 65536;
    /// An skb went to the peer socket.
    pub const REDIRECTED: u32 = 0;
    /// An skb of a socket with no peer entry stayed with it (the cell reads it).
    pub const NO_PEER: u32 = 1;
    /// The peer was no longer in TUNNEL_SOCKS (a tunnel closing): the skb was dropped.
    pub const DROPPED: u32 = 2;
    pub const COUNTERS: u32 = 3;
    /// Label values, in index order, for metrics.
    pub const LABELS: [&str; COUNTERS as usize] = ["redirected", "no_peer", "dropped"];
}

/// Value of the `TUNNEL_PEERS` map: one side of a sockmap tunnel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelPeer {
    /// Cookie of the socket this socket's bytes are redirected to.
    pub peer: u64,
    /// Bytes redirected from this socket (the program adds; the cell reads at close).
    pub bytes: u64,
}

/// Value of the `CPU_CELLS` array: which cell serves connections whose SYN ran on this CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuCell {
    /// Cell index (slot in `CELL_SOCKETS`).
    pub cell: u32,
    /// 1 when the entry is set; 0 means "no cell on this CPU".
    pub valid: u32,
}

/// One cell's load, as the `least-loaded` policy reads it from `CELL_LOAD`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CellLoad {
    /// Open connections + [`steering::LOAD_PER_WSGI_REQUEST`] per Python request in flight
    /// (written by the cell).
    pub open: u64,
    /// Connections steered to the cell and not accepted yet, as an i64: the program adds one
    /// per choice, the cell takes one per accept and resets it to its accept queue length now
    /// and then (a SYN that never completes would otherwise count forever). Without it a burst
    /// of SYNs, all seen before the cell runs, would all look at the same loads.
    pub pending: u64,
    /// CLOCK_MONOTONIC (= `bpf_ktime_get_ns`) start of the cell's oldest Python request in
    /// flight; 0 when none.
    pub oldest_ns: u64,
    /// Connections the cell may still accept (`max_connections` minus those open; written by
    /// the cell): once its pending connections fill that room, the program picks another cell
    /// that has room, so a burst of SYNs does not pile up on a cell that will not accept them.
    pub room: u64,
}

/// Per-CPU packet and byte counts of one XDP action.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpCount {
    pub packets: u64,
    pub bytes: u64,
}

/// One source's SYN token bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynBucket {
    /// Token-nanoseconds left ([`xdp::NS_PER_TOKEN`] per SYN).
    pub tokens: u64,
    /// `bpf_ktime_get_ns` of the last refill.
    pub last_ns: u64,
}

/// IPv4 LPM trie key data (network order), after the prefix length aya's `Key` carries.
pub type V4Addr = [u8; 4];
/// IPv6 LPM trie key data (network order).
pub type V6Addr = [u8; 16];

#[cfg(feature = "user")]
mod user {
    // SAFETY (all four): repr(C), only u32/u64 fields laid out without padding, and every
    // bit pattern is a valid value.
    #[expect(unsafe_code, reason = "aya reads map values as plain bytes")]
    unsafe impl aya::Pod for super::CpuCell {}
    #[expect(unsafe_code, reason = "aya reads map values as plain bytes")]
    unsafe impl aya::Pod for super::XdpCount {}
    #[expect(unsafe_code, reason = "aya reads map values as plain bytes")]
    unsafe impl aya::Pod for super::SynBucket {}
    #[expect(unsafe_code, reason = "aya reads map values as plain bytes")]
    unsafe impl aya::Pod for super::TunnelPeer {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_types_have_no_padding() {
        assert_eq!(size_of::<CpuCell>(), 8);
        assert_eq!(align_of::<CpuCell>(), 4);
        assert_eq!(size_of::<XdpCount>(), 16);
        assert_eq!(size_of::<SynBucket>(), 16);
        assert_eq!(size_of::<TunnelPeer>(), 16);
        // Cells map CELL_LOAD as consecutive u64 words.
        assert_eq!(size_of::<CellLoad>(), 4 * 8);
    }

    #[test]
    fn labels_match_counts() {
        assert_eq!(steering::LABELS.len(), steering::RESULTS as usize);
        assert_eq!(xdp::LABELS.len(), xdp::ACTIONS as usize);
        assert_eq!(tunnel::LABELS.len(), tunnel::COUNTERS as usize);
        assert_eq!(
            steering::index(MAX_CELLS - 1, steering::MIGRATED) + 1,
            steering::NO_LIVE_CELL
        );
    }
}
