//! `tunnel_relay`: the sk_skb program of `relay = "sockmap"` tunnels. The master loads it and
//! attaches it to TUNNEL_SOCKS as the stream verdict; each cell puts both sockets of a tunnel
//! in TUNNEL_SOCKS and their peers in TUNNEL_PEERS, and takes them out when it closes.
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, SockHash};
use aya::programs::SkSkb;
use aya::{Ebpf, EbpfLoader};
use lb_common::{TunnelPeer, names, tunnel};

use crate::ebpf::loader::{EbpfError, TUNNEL_RELAY_OBJ, load_program, map_err, map_ref};

/// The loaded program (attached while this lives) and its maps: the master's side.
pub struct TunnelRelay {
    bpf: Ebpf,
}

impl TunnelRelay {
    /// Loads the program and attaches it to TUNNEL_SOCKS: fails without CAP_BPF /
    /// CAP_NET_ADMIN or on a kernel without sockmap stream verdicts.
    pub fn load() -> Result<Self, EbpfError> {
        let mut bpf = EbpfLoader::new().load(TUNNEL_RELAY_OBJ)?;
        let map_fd = {
            let socks: SockHash<&MapData, u64> = map_ref(&bpf, names::TUNNEL_SOCKS)?
                .try_into()
                .map_err(map_err("open TUNNEL_SOCKS"))?;
            socks
                .fd()
                .try_clone()
                .map_err(|e| EbpfError::Setup(format!("dup TUNNEL_SOCKS: {e}")))?
        };
        let prog: &mut SkSkb = load_program(&mut bpf, names::TUNNEL_RELAY_PROGRAM, SkSkb::load)?;
        prog.attach(&map_fd).map_err(|source| EbpfError::Program {
            op: "attach (BPF_SK_SKB_STREAM_VERDICT)",
            source,
            log: String::new(),
        })?;
        Ok(TunnelRelay { bpf })
    }

    /// TUNNEL_SOCKS and TUNNEL_PEERS, for the cells.
    pub fn map_fds(&self) -> Option<(BorrowedFd<'_>, BorrowedFd<'_>)> {
        let socks = match self.bpf.map(names::TUNNEL_SOCKS)? {
            Map::SockHash(d) => d.fd().as_fd(),
            _ => return None,
        };
        let peers = match self.bpf.map(names::TUNNEL_PEERS)? {
            Map::HashMap(d) => d.fd().as_fd(),
            _ => return None,
        };
        Some((socks, peers))
    }

    /// The program's counters by `lb_common::tunnel` result, summed over CPUs.
    pub fn snapshot(&self) -> [u64; tunnel::COUNTERS as usize] {
        let mut out = [0; tunnel::COUNTERS as usize];
        let Some(Ok(counters)) = self
            .bpf
            .map(names::TUNNEL_STATS)
            .map(PerCpuArray::<_, u64>::try_from)
        else {
            return out;
        };
        for (i, v) in out.iter_mut().enumerate() {
            if let Ok(vals) = counters.get(&(i as u32), 0) {
                *v = vals.iter().sum();
            }
        }
        out
    }
}

/// A cell's handles on the maps the master passed down.
pub struct TunnelMaps {
    socks: SockHash<MapData, u64>,
    peers: HashMap<MapData, u64, TunnelPeer>,
}

impl TunnelMaps {
    pub fn open(socks: OwnedFd, peers: OwnedFd) -> Result<Self, EbpfError> {
        let socks = SockHash::try_from(Map::SockHash(
            MapData::from_fd(socks).map_err(map_err("open inherited TUNNEL_SOCKS"))?,
        ))
        .map_err(map_err("open inherited TUNNEL_SOCKS"))?;
        let peers = HashMap::try_from(Map::HashMap(
            MapData::from_fd(peers).map_err(map_err("open inherited TUNNEL_PEERS"))?,
        ))
        .map_err(map_err("open inherited TUNNEL_PEERS"))?;
        Ok(TunnelMaps { socks, peers })
    }

    /// Starts redirecting between sockets `a` and `b` (by cookie): peers first, so the
    /// program never sees a socket without its peer; on failure nothing stays in the maps.
    pub fn join(
        &mut self,
        a: (u64, BorrowedFd<'_>),
        b: (u64, BorrowedFd<'_>),
    ) -> Result<(), EbpfError> {
        let r = (|| {
            for (me, peer) in [(a.0, b.0), (b.0, a.0)] {
                self.peers
                    .insert(me, TunnelPeer { peer, bytes: 0 }, 0)
                    .map_err(map_err("insert into TUNNEL_PEERS"))?;
            }
            for (cookie, fd) in [a, b] {
                self.socks
                    .insert(cookie, fd, 0)
                    .map_err(map_err("insert a socket into TUNNEL_SOCKS"))?;
            }
            Ok(())
        })();
        if r.is_err() {
            self.part(a.0, b.0);
        }
        r
    }

    /// Bytes the program redirected from socket `cookie` so far.
    pub fn bytes(&self, cookie: u64) -> u64 {
        self.peers.get(&cookie, 0).map_or(0, |p| p.bytes)
    }

    /// Stops redirecting: both sockets out of TUNNEL_SOCKS and their peer entries removed.
    /// (A socket that closes leaves TUNNEL_SOCKS by itself; what is gone is not an error.)
    pub fn part(&mut self, a: u64, b: u64) {
        for c in [a, b] {
            ignore_missing(self.socks.remove(&c));
        }
        for c in [a, b] {
            ignore_missing(self.peers.remove(&c));
        }
    }
}

fn ignore_missing(r: Result<(), MapError>) {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => {}
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => tracing::debug!("tunnel maps: {e}"),
    }
}
