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
    /// WSGI gauges the cell publishes five times a second.
    pub const WSGI_QUEUE_DEPTH: usize = 23;
    pub const WSGI_THREADS_BUSY: usize = 24;
    pub const WSGI_THREADS: usize = 25;
}

/// Request-duration histogram bounds in nanoseconds: 100 us to 10 s (static files answer in
/// microseconds, so the sub-millisecond buckets carry information).
pub const BOUNDS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// One histogram: a count per bucket (the last one is +Inf), then the sum in nanoseconds.
pub const HIST_LEN: usize = BOUNDS_NS.len() + 2;
/// The `method` label: common methods by name, the rest as OTHER (bounded).
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Most routes a configuration may have (their histograms live at fixed offsets).
pub const MAX_ROUTES: usize = 63;
/// Route slot 0 counts requests no route matched; config route i uses slot i + 1.
pub const ROUTE_SLOTS: usize = MAX_ROUTES + 1;

/// Offsets inside one route's block.
pub mod route_slot {
    use super::{CLASSES, HIST_LEN, METHODS};
    /// Request duration histograms, by method and status class.
    pub const REQUEST_HIST: usize = 0;
    pub const BODY_BYTES: usize = METHODS.len() * CLASSES.len() * HIST_LEN;
    /// WSGI: time from the request being ready to the app being called, and the app's run.
    pub const QUEUE_WAIT_HIST: usize = BODY_BYTES + 1;
    pub const APP_HIST: usize = QUEUE_WAIT_HIST + HIST_LEN;
    pub const APP_EXCEPTIONS: usize = APP_HIST + HIST_LEN;
    pub const LEN: usize = APP_EXCEPTIONS + 1;
}

/// Method label index for `m`.
pub fn method_index(m: &http::Method) -> usize {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|n| *n == m.as_str())
        .unwrap_or(METHODS.len() - 1)
}

fn hist_observe(h: &[AtomicU64], ns: u64) {
    let i = BOUNDS_NS
        .iter()
        .position(|b| ns <= *b)
        .unwrap_or(BOUNDS_NS.len());
    h[i].fetch_add(1, Relaxed);
    h[HIST_LEN - 1].fetch_add(ns, Relaxed);
}

const CELL_AREA: usize = lb_common::MAX_CELLS as usize * SLOTS_PER_CELL;
const ROUTE_AREA_PER_CELL: usize = ROUTE_SLOTS * route_slot::LEN;
const TOTAL_SLOTS: usize = CELL_AREA + lb_common::MAX_CELLS as usize * ROUTE_AREA_PER_CELL;

/// The whole shared region: per-cell counters, then per-cell route histograms. The memfd is
/// sparse: only the pages of cells and routes in use are ever touched.
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
        file.set_len((TOTAL_SLOTS * 8) as u64)
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
        let counters = SharedCounters::map(&file, TOTAL_SLOTS)?;
        Ok(Self { counters, file })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// One cell's block.
    pub fn cell(&self, index: usize) -> CellStats<'_> {
        let all = self.counters.slots();
        let start = index * SLOTS_PER_CELL;
        let rstart = CELL_AREA + index * ROUTE_AREA_PER_CELL;
        CellStats {
            s: &all[start..start + SLOTS_PER_CELL],
            routes: &all[rstart..rstart + ROUTE_AREA_PER_CELL],
        }
    }
}

/// A view of one cell's counters.
#[derive(Clone, Copy)]
pub struct CellStats<'a> {
    s: &'a [AtomicU64],
    routes: &'a [AtomicU64],
}

impl std::fmt::Debug for CellStats<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CellStats")
    }
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
    /// One route's block (`route`: 0 = no route, else config index + 1).
    pub fn route(&self, route: usize) -> &[AtomicU64] {
        let r = route.min(ROUTE_SLOTS - 1) * route_slot::LEN;
        &self.routes[r..r + route_slot::LEN]
    }
    /// A finished request (its body handed to the socket): duration and body bytes by route.
    pub fn observe_request(&self, route: usize, method: usize, status: u16, ns: u64, body: u64) {
        let r = self.route(route);
        let class = (status / 100).clamp(1, 5) as usize - 1;
        let h = route_slot::REQUEST_HIST + (method * CLASSES.len() + class) * HIST_LEN;
        hist_observe(&r[h..h + HIST_LEN], ns);
        r[route_slot::BODY_BYTES].fetch_add(body, Relaxed);
    }
    pub fn observe_queue_wait(&self, route: usize, ns: u64) {
        let h = route_slot::QUEUE_WAIT_HIST;
        hist_observe(&self.route(route)[h..h + HIST_LEN], ns);
    }
    pub fn observe_app(&self, route: usize, ns: u64, raised: bool) {
        let r = self.route(route);
        hist_observe(
            &r[route_slot::APP_HIST..route_slot::APP_HIST + HIST_LEN],
            ns,
        );
        if raised {
            r[route_slot::APP_EXCEPTIONS].fetch_add(1, Relaxed);
        }
    }
    /// One finished request: status class and body bytes.
    pub fn request(&self, status: u16, body_bytes: u64) {
        self.add(slot::REQUESTS, 1);
        let class = (status / 100).clamp(1, 5) as usize;
        self.add(slot::STATUS_1XX + class - 1, 1);
        self.add(slot::RESPONSE_BODY_BYTES, body_bytes);
    }
}

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

/// Renders the exposition for `cells` cells in `format`.
pub fn render(
    region: &MetricsRegion,
    cells: usize,
    bpf: &EbpfSnapshot,
    routes: &[String],
    procs: &ProcSnapshot,
    format: crate::exposition::Format,
) -> anyhow::Result<String> {
    use prometheus::proto::MetricType::{COUNTER, GAUGE};
    use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};
    // Families are built straight from the shared counters (a scrape allocates per series,
    // not per label lookup); the registry only carries build info and process_* series.
    let reg = Registry::new();
    let ebpf = IntGauge::new(
        "portico_ebpf_enabled",
        "1 when an eBPF program (steering or the XDP guard) is attached, 0 when plain SO_REUSEPORT serves.",
    )?;
    reg.register(Box::new(ebpf.clone()))?;
    let steering = &bpf.steering;
    ebpf.set((steering.enabled || bpf.xdp.enabled) as i64);
    let info = IntGaugeVec::new(
        Opts::new(
            "portico_build_info",
            "Build information; the value is always 1.",
        ),
        &["version", "python_version", "kernel"],
    )?;
    reg.register(Box::new(info.clone()))?;
    let uname = rustix::system::uname();
    let kernel = uname.release().to_string_lossy();
    info.with_label_values(&[
        env!("CARGO_PKG_VERSION"),
        env!("PORTICO_PYTHON_VERSION"),
        kernel.as_ref(),
    ])
    .set(1);
    // The master's own process_* series (CPU, memory, file descriptors, start time).
    reg.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;

    let mut up = Vec::with_capacity(cells);
    let mut requests = Vec::with_capacity(cells * CLASSES.len());
    let (mut body_bytes, mut sendfile, mut accepted, mut active) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut restarts, mut rejected, mut timeouts) = (Vec::new(), Vec::new(), Vec::new());
    let (mut queue_depth, mut threads_busy, mut steered) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rss, mut cpu) = (Vec::new(), Vec::new());
    for i in 0..cells {
        let c = region.cell(i);
        let cell = i.to_string();
        let cell = cell.as_str();
        up.push(gauge_metric(&[("cell", cell)], c.get(slot::UP) as f64));
        for (k, class) in CLASSES.iter().enumerate() {
            requests.push(scalar_metric(
                &[("cell", cell), ("status_class", class)],
                c.get(slot::STATUS_1XX + k) as f64,
            ));
        }
        let one = |s: usize| scalar_metric(&[("cell", cell)], c.get(s) as f64);
        body_bytes.push(one(slot::RESPONSE_BODY_BYTES));
        sendfile.push(one(slot::SENDFILE_BYTES));
        accepted.push(one(slot::CONNECTIONS_ACCEPTED));
        timeouts.push(one(slot::WSGI_REQUEST_TIMEOUTS));
        active.push(gauge_metric(
            &[("cell", cell)],
            c.get(slot::CONNECTIONS_ACTIVE) as f64,
        ));
        for (reason, s) in [
            ("crash", slot::RESTARTS_CRASH),
            ("reload", slot::RESTARTS_RELOAD),
        ] {
            restarts.push(scalar_metric(
                &[("cell", cell), ("reason", reason)],
                c.get(s) as f64,
            ));
        }
        for (k, why) in crate::wsgi::Recycle::ALL.iter().enumerate() {
            let n = c.get(slot::RESTARTS_RECYCLE + k);
            if n > 0 {
                restarts.push(scalar_metric(
                    &[("cell", cell), ("reason", why.label())],
                    n as f64,
                ));
            }
        }
        for (reason, s) in [
            ("queue_full", slot::WSGI_QUEUE_FULL),
            ("queue_timeout", slot::WSGI_QUEUE_TIMEOUTS),
        ] {
            rejected.push(scalar_metric(
                &[("cell", cell), ("reason", reason)],
                c.get(s) as f64,
            ));
        }
        if c.get(slot::WSGI_THREADS) > 0 {
            queue_depth.push(gauge_metric(
                &[("cell", cell)],
                c.get(slot::WSGI_QUEUE_DEPTH) as f64,
            ));
            threads_busy.push(gauge_metric(
                &[("cell", cell)],
                c.get(slot::WSGI_THREADS_BUSY) as f64,
            ));
        }
        if let Some(results) = steering.per_cell.get(i) {
            for (r, label) in lb_common::steering::LABELS.iter().enumerate() {
                steered.push(scalar_metric(
                    &[("cell", cell), ("result", label)],
                    results[r] as f64,
                ));
            }
        }
        if let Some(Some((bytes, secs))) = procs.cells.get(i) {
            rss.push(gauge_metric(&[("cell", cell)], *bytes as f64));
            cpu.push(scalar_metric(&[("cell", cell)], *secs));
        }
    }
    if steering.enabled {
        steered.push(scalar_metric(
            &[("cell", "none"), ("result", "no_live_cell")],
            steering.no_live_cell as f64,
        ));
    }
    let (mut xdp_packets, mut xdp_bytes) = (Vec::new(), Vec::new());
    if bpf.xdp.enabled {
        for (a, label) in lb_common::xdp::LABELS.iter().enumerate() {
            xdp_packets.push(scalar_metric(
                &[("action", label)],
                bpf.xdp.packets[a] as f64,
            ));
            xdp_bytes.push(scalar_metric(&[("action", label)], bpf.xdp.bytes[a] as f64));
        }
    }
    let map_entries: Vec<_> = bpf
        .map_entries
        .iter()
        .map(|(name, n)| gauge_metric(&[("map", name)], *n as f64))
        .collect();
    let listen: Vec<_> = procs
        .listen_queues
        .iter()
        .map(|(addr, cell, n)| {
            gauge_metric(
                &[
                    ("cell", cell.to_string().as_str()),
                    ("listener", addr.as_str()),
                ],
                *n as f64,
            )
        })
        .collect();

    let mut families = reg.gather();
    for (name, help, kind, metrics) in [
        (
            "portico_cell_up",
            "1 when the cell is running and accepting connections.",
            GAUGE,
            up,
        ),
        (
            "portico_cell_requests_total",
            "HTTP requests answered by the cell, by status class.",
            COUNTER,
            requests,
        ),
        (
            "portico_cell_response_body_bytes_total",
            "Response body bytes sent by the cell.",
            COUNTER,
            body_bytes,
        ),
        (
            "portico_cell_sendfile_bytes_total",
            "Response body bytes the cell sent with sendfile(2) straight from the file.",
            COUNTER,
            sendfile,
        ),
        (
            "portico_connections_accepted_total",
            "Connections accepted by the cell.",
            COUNTER,
            accepted,
        ),
        (
            "portico_connections_active",
            "Connections the cell has open now.",
            GAUGE,
            active,
        ),
        (
            "portico_cell_restarts_total",
            "Times the cell was replaced, by reason.",
            COUNTER,
            restarts,
        ),
        (
            "portico_wsgi_rejected_total",
            "WSGI requests answered 503 before reaching the app, by reason.",
            COUNTER,
            rejected,
        ),
        (
            "portico_wsgi_request_timeouts_total",
            "WSGI requests answered 504 because they ran past request_timeout.",
            COUNTER,
            timeouts,
        ),
        (
            "portico_wsgi_queue_depth",
            "WSGI requests waiting for a Python thread in the cell.",
            GAUGE,
            queue_depth,
        ),
        (
            "portico_wsgi_threads_busy",
            "Python threads of the cell running a request.",
            GAUGE,
            threads_busy,
        ),
        (
            "portico_steering_decisions_total",
            "New connections placed by the sk_reuseport steering program, by cell and result.",
            COUNTER,
            steered,
        ),
        (
            "portico_xdp_packets_total",
            "Packets seen by the XDP guard, by action.",
            COUNTER,
            xdp_packets,
        ),
        (
            "portico_xdp_bytes_total",
            "Bytes of the packets seen by the XDP guard, by action.",
            COUNTER,
            xdp_bytes,
        ),
        (
            "portico_bpf_map_entries",
            "Entries in the eBPF maps whose contents change at run time.",
            GAUGE,
            map_entries,
        ),
        (
            "portico_cell_rss_bytes",
            "Resident memory of the cell's process.",
            GAUGE,
            rss,
        ),
        (
            "portico_cell_cpu_seconds_total",
            "CPU time (user + system) of the cell's current process.",
            COUNTER,
            cpu,
        ),
        (
            "portico_listen_queue_length",
            "Connections waiting in a listener's accept queue (from the kernel).",
            GAUGE,
            listen,
        ),
    ] {
        if !metrics.is_empty() {
            families.push(family(name, help, kind, metrics));
        }
    }
    families.extend(route_families(region, cells, routes));
    families.sort_by(|a, b| a.name().cmp(b.name()));
    crate::exposition::encode(families, format)
}

fn gauge_metric(pairs: &[(&str, &str)], v: f64) -> prometheus::proto::Metric {
    let mut g = prometheus::proto::Gauge::default();
    g.set_value(v);
    let mut m = prometheus::proto::Metric::default();
    m.set_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// Sums one histogram over every cell.
fn sum_hist(region: &MetricsRegion, cells: usize, route: usize, at: usize) -> [u64; HIST_LEN] {
    let mut h = [0u64; HIST_LEN];
    for c in 0..cells {
        let r = region.cell(c);
        let r = r.route(route);
        for (k, v) in h.iter_mut().enumerate() {
            *v += r[at + k].load(Relaxed);
        }
    }
    h
}

fn labels(pairs: &[(&str, &str)]) -> Vec<prometheus::proto::LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = prometheus::proto::LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn histogram_metric(pairs: &[(&str, &str)], h: &[u64; HIST_LEN]) -> prometheus::proto::Metric {
    use prometheus::proto::{Bucket, Histogram, Metric};
    let mut buckets = Vec::with_capacity(BOUNDS_NS.len());
    let mut cumulative = 0;
    for (i, b) in BOUNDS_NS.iter().enumerate() {
        cumulative += h[i];
        let mut bucket = Bucket::default();
        bucket.set_upper_bound(*b as f64 / 1e9);
        bucket.set_cumulative_count(cumulative);
        buckets.push(bucket);
    }
    let mut hist = Histogram::default();
    hist.set_bucket(buckets);
    hist.set_sample_count(h[..HIST_LEN - 1].iter().sum());
    hist.set_sample_sum(h[HIST_LEN - 1] as f64 / 1e9);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_histogram(hist);
    m
}

fn scalar_metric(pairs: &[(&str, &str)], v: f64) -> prometheus::proto::Metric {
    let mut c = prometheus::proto::Counter::default();
    c.set_value(v);
    let mut m = prometheus::proto::Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    m
}

fn family(
    name: &str,
    help: &str,
    kind: prometheus::proto::MetricType,
    metrics: Vec<prometheus::proto::Metric>,
) -> prometheus::proto::MetricFamily {
    let mut f = prometheus::proto::MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

/// Per-route series, summed over cells. Series that never saw a request are left out, so the
/// exposition grows with what is served, not with routes x methods x classes.
fn route_families(
    region: &MetricsRegion,
    cells: usize,
    routes: &[String],
) -> Vec<prometheus::proto::MetricFamily> {
    use prometheus::proto::MetricType;
    let (mut durations, mut requests, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut waits, mut runs, mut raised) = (Vec::new(), Vec::new(), Vec::new());
    for slot in 0..=routes.len().min(MAX_ROUTES) {
        let route = if slot == 0 {
            "none"
        } else {
            routes[slot - 1].as_str()
        };
        let mut by_class = [0u64; CLASSES.len()];
        let mut seen = false;
        for (m, method) in METHODS.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let at = route_slot::REQUEST_HIST + (m * CLASSES.len() + c) * HIST_LEN;
                let h = sum_hist(region, cells, slot, at);
                let n: u64 = h[..HIST_LEN - 1].iter().sum();
                if n > 0 {
                    by_class[c] += n;
                    seen = true;
                    durations.push(histogram_metric(
                        &[
                            ("route", route),
                            ("method", method),
                            ("status_class", class),
                        ],
                        &h,
                    ));
                }
            }
        }
        if seen {
            for (c, class) in CLASSES.iter().enumerate() {
                if by_class[c] > 0 {
                    requests.push(scalar_metric(
                        &[("route", route), ("status_class", class)],
                        by_class[c] as f64,
                    ));
                }
            }
            let b: u64 = (0..cells)
                .map(|c| region.cell(c).route(slot)[route_slot::BODY_BYTES].load(Relaxed))
                .sum();
            bytes.push(scalar_metric(&[("route", route)], b as f64));
        }
        let wait = sum_hist(region, cells, slot, route_slot::QUEUE_WAIT_HIST);
        if wait[..HIST_LEN - 1].iter().any(|n| *n > 0) {
            waits.push(histogram_metric(&[("route", route)], &wait));
            let run = sum_hist(region, cells, slot, route_slot::APP_HIST);
            runs.push(histogram_metric(&[("route", route)], &run));
            let e: u64 = (0..cells)
                .map(|c| region.cell(c).route(slot)[route_slot::APP_EXCEPTIONS].load(Relaxed))
                .sum();
            raised.push(scalar_metric(&[("route", route)], e as f64));
        }
    }
    let mut out = vec![
        family(
            "http_server_request_duration_seconds",
            "Time from a request's head to its response body handed to the socket.",
            MetricType::HISTOGRAM,
            durations,
        ),
        family(
            "portico_http_requests_total",
            "HTTP requests answered, by route and status class.",
            MetricType::COUNTER,
            requests,
        ),
        family(
            "portico_http_response_body_bytes_total",
            "Response body bytes, by route.",
            MetricType::COUNTER,
            bytes,
        ),
    ];
    if !waits.is_empty() {
        out.push(family(
            "portico_wsgi_queue_wait_seconds",
            "Time from a WSGI request being ready to the app being called (mod_wsgi's queue_time).",
            MetricType::HISTOGRAM,
            waits,
        ));
        out.push(family(
            "portico_wsgi_app_duration_seconds",
            "Time the WSGI app ran for a request, until its response was handed over.",
            MetricType::HISTOGRAM,
            runs,
        ));
        out.push(family(
            "portico_wsgi_app_exceptions_total",
            "WSGI requests whose app raised (500 or aborted response).",
            MetricType::COUNTER,
            raised,
        ));
    }
    out.retain(|f| !f.get_metric().is_empty());
    out
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
        c.observe_request(1, method_index(&http::Method::GET), 200, 150_000, 10);
        c.observe_request(1, method_index(&http::Method::GET), 200, 20_000_000_000, 5);
        c.observe_queue_wait(1, 50_000);
        c.observe_app(1, 2_000_000, true);
        let procs = ProcSnapshot {
            listen_queues: vec![("127.0.0.1:8080".into(), 0, 3)],
            cells: vec![process_usage(std::process::id())],
        };
        let text = render(
            &region,
            4,
            &EbpfSnapshot::default(),
            &["/".into()],
            &procs,
            crate::exposition::Format::Prometheus,
        )
        .unwrap();
        assert!(
            text.contains("portico_listen_queue_length{cell=\"0\",listener=\"127.0.0.1:8080\"} 3"),
            "{text}"
        );
        assert!(text.contains("portico_cell_rss_bytes{cell=\"0\"}"));
        assert!(text.contains("process_resident_memory_bytes"));
        assert!(
            text.contains("http_server_request_duration_seconds_bucket{route=\"/\",method=\"GET\",status_class=\"2xx\",le=\"0.00025\"} 1"),
            "{text}"
        );
        assert!(text.contains("http_server_request_duration_seconds_bucket{route=\"/\",method=\"GET\",status_class=\"2xx\",le=\"+Inf\"} 2"));
        assert!(text.contains("http_server_request_duration_seconds_count{route=\"/\",method=\"GET\",status_class=\"2xx\"} 2"));
        assert!(text.contains("portico_http_requests_total{route=\"/\",status_class=\"2xx\"} 2"));
        assert!(text.contains("portico_http_response_body_bytes_total{route=\"/\"} 15"));
        assert!(
            text.contains("portico_wsgi_queue_wait_seconds_bucket{route=\"/\",le=\"0.0001\"} 1")
        );
        assert!(text.contains("portico_wsgi_app_exceptions_total{route=\"/\"} 1"));
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
