//! What the master's supervision and its admin endpoint share (one thread: no locks).
use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd as _, OwnedFd};

use crate::ebpf::{PinDir, Steering, TunnelRelay, XdpGuard};
use crate::master::admin::auth::AdminToken;
use crate::metrics::{EbpfSnapshot, MetricsRegion, ProcSnapshot, cell_counter, process_usage};

pub struct MasterState {
    pub metrics: MetricsRegion,
    /// Cells now (changes when a reload changes `workers`).
    pub cells: Cell<usize>,
    pub steering: RefCell<Option<Steering>>,
    /// The steering policy in effect (`kernel` when no program is attached).
    pub policy: &'static str,
    pub xdp: RefCell<Option<XdpGuard>>,
    /// The pin directory; dropping it removes the pins (clean shutdown).
    pub pins: RefCell<Option<PinDir>>,
    /// The sockmap relay (`relay = "sockmap"`), when a route asked for it and it loaded.
    pub tunnel_relay: RefCell<Option<TunnelRelay>>,
    /// Route prefixes in configuration order: the `route` label (updated on reload).
    pub routes: RefCell<Vec<String>>,
    /// (upstream, server) of every upstream server in configuration order: the labels of the
    /// upstream series (updated on reload).
    pub upstream_servers: RefCell<Vec<(String, String)>>,
    /// (listen address, cell, a duplicate of the listener) for accept-queue lengths.
    pub listeners: RefCell<Vec<(String, usize, OwnedFd)>>,
    /// The admin endpoint's bearer token (`server.admin_token_file`; read again on reload).
    pub admin_token: RefCell<Option<AdminToken>>,
    /// The certificates the TLS listeners serve, with their expiry (updated on reload).
    pub certs: RefCell<Vec<crate::metrics::CertExpiry>>,
}

impl MasterState {
    pub fn cells(&self) -> usize {
        self.cells.get()
    }

    /// Steering decisions, XDP counters and map sizes, read from the kernel now.
    pub fn ebpf_snapshot(&self) -> EbpfSnapshot {
        let cells = self.cells();
        let st = self.steering.borrow();
        let xdp = self.xdp.borrow();
        let mut map_entries = Vec::new();
        if let Some(s) = st.as_ref() {
            map_entries.extend(s.map_entries());
        }
        if let Some(x) = xdp.as_ref() {
            map_entries.extend(x.map_entries());
        }
        EbpfSnapshot {
            steering: st.as_ref().map(|s| s.snapshot(cells)).unwrap_or_default(),
            xdp: xdp.as_ref().map(XdpGuard::snapshot).unwrap_or_default(),
            map_entries,
            tunnel_relay: self
                .tunnel_relay
                .borrow()
                .as_ref()
                .map(TunnelRelay::snapshot),
        }
    }

    /// Accept queues and cell processes, read from /proc at scrape time.
    pub fn proc_snapshot(&self) -> ProcSnapshot {
        ProcSnapshot {
            listen_queues: self
                .listeners
                .borrow()
                .iter()
                .filter_map(|(addr, cell, fd)| {
                    crate::sys::listen_queue_len(fd.as_fd())
                        .ok()
                        .map(|n| (addr.clone(), *cell, u64::from(n)))
                })
                .collect(),
            cells: (0..self.cells())
                .map(|i| {
                    let c = self.metrics.cell(i);
                    let pid = c.get(cell_counter::PID) as u32;
                    (c.get(cell_counter::UP) == 1 && pid > 0)
                        .then(|| process_usage(pid))
                        .flatten()
                })
                .collect(),
        }
    }
}
