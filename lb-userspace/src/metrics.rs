//! Per-cell counters in a memfd the master creates and every cell maps: a scrape reads fresh
//! values without asking the cells, and a crashed cell loses nothing it already counted.
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::sys::{SharedCounters, SysError};

/// u64 slots reserved for each cell (fixed layout; unused slots stay zero).
pub const SLOTS_PER_CELL: usize = 32;

/// Slot indices inside a cell's block.
pub mod slot {
    /// 1 while the cell is ready to serve (written by the master).
    pub const UP: usize = 0;
    pub const PID: usize = 1;
    pub const REQUESTS: usize = 2;
    pub const CONNECTIONS_ACCEPTED: usize = 3;
    pub const CONNECTIONS_ACTIVE: usize = 4;
    /// 1xx..5xx: STATUS_1XX + class - 1.
    pub const STATUS_1XX: usize = 5;
    pub const RESPONSE_BODY_BYTES: usize = 10;
    pub const RESTARTS_CRASH: usize = 11;
    pub const RESTARTS_RELOAD: usize = 12;
    /// Recycles by reason, in `wsgi::Recycle::ALL` order (6 slots).
    pub const RESTARTS_RECYCLE: usize = 13;
    /// WSGI requests refused with 503: queue full, waited past queue_timeout.
    pub const WSGI_QUEUE_FULL: usize = 19;
    pub const WSGI_QUEUE_TIMEOUTS: usize = 20;
    /// WSGI requests answered 504 after request_timeout.
    pub const WSGI_REQUEST_TIMEOUTS: usize = 21;
    /// Response body bytes the cell sent with sendfile(2) (part of RESPONSE_BODY_BYTES).
    pub const SENDFILE_BYTES: usize = 22;
}

/// The whole shared region.
pub struct MetricsRegion {
    counters: SharedCounters,
    file: File,
}

impl MetricsRegion {
    /// Master side: a new zeroed region for `lb_common::MAX_CELLS` cells.
    pub fn create() -> anyhow::Result<Self> {
        let fd = rustix::fs::memfd_create("portico-metrics", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| SysError {
                op: "memfd_create(portico-metrics)",
                source: e.into(),
            })?;
        let file = File::from(fd);
        file.set_len((lb_common::MAX_CELLS as usize * SLOTS_PER_CELL * 8) as u64)
            .map_err(|e| SysError {
                op: "ftruncate(portico-metrics)",
                source: e,
            })?;
        Self::from_file(file)
    }

    /// Cell side: the region handed down by the master.
    pub fn open(fd: OwnedFd) -> anyhow::Result<Self> {
        Self::from_file(File::from(fd))
    }

    fn from_file(file: File) -> anyhow::Result<Self> {
        let counters = SharedCounters::map(&file, lb_common::MAX_CELLS as usize * SLOTS_PER_CELL)?;
        Ok(Self { counters, file })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// One cell's block.
    pub fn cell(&self, index: usize) -> CellStats<'_> {
        let start = index * SLOTS_PER_CELL;
        CellStats {
            s: &self.counters.slots()[start..start + SLOTS_PER_CELL],
        }
    }
}

/// A view of one cell's counters.
#[derive(Clone, Copy)]
pub struct CellStats<'a> {
    s: &'a [AtomicU64],
}

impl CellStats<'_> {
    pub fn get(&self, slot: usize) -> u64 {
        self.s[slot].load(Relaxed)
    }
    pub fn set(&self, slot: usize, v: u64) {
        self.s[slot].store(v, Relaxed)
    }
    pub fn add(&self, slot: usize, v: u64) {
        self.s[slot].fetch_add(v, Relaxed);
    }
    pub fn connection_opened(&self) {
        self.add(slot::CONNECTIONS_ACCEPTED, 1);
        self.add(slot::CONNECTIONS_ACTIVE, 1);
    }
    pub fn connection_closed(&self) {
        self.s[slot::CONNECTIONS_ACTIVE].fetch_sub(1, Relaxed);
    }
    /// One finished request: status class and body bytes.
    pub fn request(&self, status: u16, body_bytes: u64) {
        self.add(slot::REQUESTS, 1);
        let class = (status / 100).clamp(1, 5) as usize;
        self.add(slot::STATUS_1XX + class - 1, 1);
        self.add(slot::RESPONSE_BODY_BYTES, body_bytes);
    }
}

/// eBPF numbers for the exposition (read by the master from the maps).
#[derive(Debug, Default, Clone)]
pub struct SteeringSnapshot {
    pub enabled: bool,
    /// Totals by `lb_common::steering` index.
    pub results: [u64; lb_common::steering::COUNT as usize],
    /// Connections steered to each cell.
    pub per_cell: Vec<u64>,
}

/// Renders the Prometheus text exposition for `cells` cells.
pub fn render(
    region: &MetricsRegion,
    cells: usize,
    steering: &SteeringSnapshot,
) -> anyhow::Result<String> {
    use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
    let reg = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        reg.register(Box::new(c.clone()))?;
        Ok(c)
    };
    let gauge = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntGaugeVec> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        reg.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let up = gauge(
        "portico_cell_up",
        "1 when the cell is running and accepting connections.",
        &["cell"],
    )?;
    let requests = counter(
        "portico_cell_requests_total",
        "HTTP requests answered by the cell, by status class.",
        &["cell", "status_class"],
    )?;
    let body_bytes = counter(
        "portico_cell_response_body_bytes_total",
        "Response body bytes sent by the cell.",
        &["cell"],
    )?;
    let sendfile = counter(
        "portico_cell_sendfile_bytes_total",
        "Response body bytes the cell sent with sendfile(2) straight from the file.",
        &["cell"],
    )?;
    let accepted = counter(
        "portico_connections_accepted_total",
        "Connections accepted by the cell.",
        &["cell"],
    )?;
    let active = gauge(
        "portico_connections_active",
        "Connections the cell has open now.",
        &["cell"],
    )?;
    let restarts = counter(
        "portico_cell_restarts_total",
        "Times the cell was replaced, by reason.",
        &["cell", "reason"],
    )?;
    let wsgi_rejected = counter(
        "portico_wsgi_rejected_total",
        "WSGI requests answered 503 before reaching the app, by reason.",
        &["cell", "reason"],
    )?;
    let wsgi_timeouts = counter(
        "portico_wsgi_request_timeouts_total",
        "WSGI requests answered 504 because they ran past request_timeout.",
        &["cell"],
    )?;
    let steered = counter(
        "portico_steering_decisions_total",
        "New connections seen by the sk_reuseport steering program, by result.",
        &["cell", "result"],
    )?;
    let ebpf = IntGauge::new(
        "portico_ebpf_enabled",
        "1 when eBPF steering is attached, 0 when plain SO_REUSEPORT serves.",
    )?;
    reg.register(Box::new(ebpf.clone()))?;
    let info = IntGaugeVec::new(
        Opts::new(
            "portico_build_info",
            "Build information; the value is always 1.",
        ),
        &["version"],
    )?;
    reg.register(Box::new(info.clone()))?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    ebpf.set(steering.enabled as i64);

    const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    for i in 0..cells {
        let c = region.cell(i);
        let cell = i.to_string();
        up.with_label_values(&[&cell]).set(c.get(slot::UP) as i64);
        for (k, class) in CLASSES.iter().enumerate() {
            requests
                .with_label_values(&[cell.as_str(), class])
                .inc_by(c.get(slot::STATUS_1XX + k));
        }
        body_bytes
            .with_label_values(&[&cell])
            .inc_by(c.get(slot::RESPONSE_BODY_BYTES));
        accepted
            .with_label_values(&[&cell])
            .inc_by(c.get(slot::CONNECTIONS_ACCEPTED));
        sendfile
            .with_label_values(&[&cell])
            .inc_by(c.get(slot::SENDFILE_BYTES));
        active
            .with_label_values(&[&cell])
            .set(c.get(slot::CONNECTIONS_ACTIVE) as i64);
        restarts
            .with_label_values(&[&cell, "crash"])
            .inc_by(c.get(slot::RESTARTS_CRASH));
        restarts
            .with_label_values(&[&cell, "reload"])
            .inc_by(c.get(slot::RESTARTS_RELOAD));
        for (k, why) in crate::wsgi::Recycle::ALL.iter().enumerate() {
            let n = c.get(slot::RESTARTS_RECYCLE + k);
            if n > 0 {
                restarts.with_label_values(&[&cell, why.label()]).inc_by(n);
            }
        }
        wsgi_rejected
            .with_label_values(&[&cell, "queue_full"])
            .inc_by(c.get(slot::WSGI_QUEUE_FULL));
        wsgi_rejected
            .with_label_values(&[&cell, "queue_timeout"])
            .inc_by(c.get(slot::WSGI_QUEUE_TIMEOUTS));
        wsgi_timeouts
            .with_label_values(&[&cell])
            .inc_by(c.get(slot::WSGI_REQUEST_TIMEOUTS));
        if steering.enabled {
            steered
                .with_label_values(&[&cell, "selected"])
                .inc_by(steering.per_cell.get(i).copied().unwrap_or(0));
        }
    }
    if steering.enabled {
        for (idx, label) in lb_common::steering::LABELS.iter().enumerate() {
            if idx as u32 != lb_common::steering::SELECTED {
                steered
                    .with_label_values(&["kernel", label])
                    .inc_by(steering.results[idx]);
            }
        }
    }
    let mut out = Vec::with_capacity(8192);
    TextEncoder::new().encode(&reg.gather(), &mut out)?;
    Ok(String::from_utf8(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_in_the_shared_region() {
        let region = MetricsRegion::create().unwrap();
        let c = region.cell(3);
        c.connection_opened();
        c.request(200, 10);
        c.request(404, 5);
        c.request(503, 0);
        c.connection_closed();
        let text = render(&region, 4, &SteeringSnapshot::default()).unwrap();
        assert!(
            text.contains("portico_cell_requests_total{cell=\"3\",status_class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("portico_cell_requests_total{cell=\"3\",status_class=\"4xx\"} 1"));
        assert!(text.contains("portico_cell_response_body_bytes_total{cell=\"3\"} 15"));
        assert!(text.contains("portico_connections_accepted_total{cell=\"3\"} 1"));
        assert!(text.contains("portico_connections_active{cell=\"3\"} 0"));
        assert!(text.contains("portico_ebpf_enabled 0"));
        assert!(text.contains("# HELP portico_cell_up"));
    }
}
