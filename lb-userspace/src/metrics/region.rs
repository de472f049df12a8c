//! The shared-memory region: its fixed layout (per-cell counters, then per-route
//! histograms) and the views the master and the cells read and write it through.
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::sys::{SharedCounters, SysError};

/// u64 counters reserved for each cell (fixed layout; unused ones stay zero).
pub const COUNTERS_PER_CELL: usize = 80;

/// Counter indices inside a cell's block.
pub mod cell_counter {
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
    /// Recycles by reason, in `proto::Recycle::ALL` order (6 counters).
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
    /// ASGI WebSockets open now (gauge), and their messages from and to the client.
    pub const WEBSOCKETS_ACTIVE: usize = 26;
    pub const WEBSOCKET_MESSAGES_IN: usize = 27;
    pub const WEBSOCKET_MESSAGES_OUT: usize = 28;
    /// The cell's `max_connections` (written once at start), the times it reached it and
    /// stopped accepting, the nanoseconds spent there, and when (CLOCK_MONOTONIC) the current
    /// stop began (0 while accepting).
    pub const CONNECTIONS_MAX: usize = 29;
    pub const CONNECTION_LIMIT_REACHED: usize = 30;
    pub const CONNECTION_LIMIT_NS: usize = 31;
    pub const CONNECTION_LIMIT_SINCE_NS: usize = 32;
    /// Connections closed because the client took nothing of a response for `send_timeout`.
    pub const SEND_TIMEOUTS: usize = 33;
    /// Idle keep-alive connections held as a bare socket, without hyper's buffers (gauge).
    pub const CONNECTIONS_PARKED: usize = 34;
    /// Requests answered by HTTP version, in `HTTP_VERSIONS` order (3 counters).
    pub const REQUESTS_BY_VERSION: usize = 35;
    /// HTTP/2 connections served (h2c prior knowledge or ALPN `h2`).
    pub const HTTP2_CONNECTIONS: usize = 38;
    /// HTTP/2 connections closed because no request came within header_timeout of opening
    /// (the preface included).
    pub const HTTP2_HEADER_TIMEOUTS: usize = 39;
    /// RST_STREAM frames the cell sent, by error code in `HTTP2_ERROR_CODES` order (8).
    pub const HTTP2_STREAM_RESETS: usize = 40;
    /// TLS handshakes completed, by cipher suite (`TLS_SUITES` order, the last one "other").
    pub const TLS_HANDSHAKES: usize = 48;
    /// Of those, resumed ones: TLS 1.2, TLS 1.3.
    pub const TLS_RESUMED: usize = TLS_HANDSHAKES + crate::metrics::region::TLS_SUITES.len();
    /// Handshakes that failed, by reason (`TLS_FAILURES` order).
    pub const TLS_FAILED: usize = TLS_RESUMED + 2;
    /// GOAWAY frames with an error the cell sent, by error code in `HTTP2_ERROR_CODES` order
    /// (8), after the TLS counters.
    pub const HTTP2_GOAWAYS: usize = TLS_FAILED + crate::metrics::region::TLS_FAILURES.len();
}

/// The `network_protocol_version` label values, in counter order.
pub const HTTP_VERSIONS: [&str; 3] = ["1.0", "1.1", "2"];

/// The `error_code` label of HTTP/2 resets and GOAWAYs, in counter order: RFC 9113's names of
/// the codes a limit or a protocol error gives; the rest count as `other`. NO_ERROR and CANCEL
/// (ordinary ends of a stream) are not counted.
pub const HTTP2_ERROR_CODES: [&str; 8] = [
    "protocol_error",
    "internal_error",
    "flow_control_error",
    "frame_size_error",
    "refused_stream",
    "compression_error",
    "enhance_your_calm",
    "other",
];

/// Counter offset (in `HTTP2_ERROR_CODES`) of an HTTP/2 error code; None for NO_ERROR and CANCEL.
pub fn http2_error_index(code: u32) -> Option<usize> {
    Some(match code {
        0 | 8 => return None,
        1 => 0,
        2 => 1,
        3 => 2,
        6 => 3,
        7 => 4,
        9 => 5,
        11 => 6,
        _ => 7,
    })
}

/// The cipher suites rustls offers (aws-lc-rs provider), as `cipher` labels; then "other".
pub const TLS_SUITES: [&str; 10] = [
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "other",
];

/// Why a TLS handshake failed: plain HTTP sent to the TLS port, no handshake within
/// `header_timeout`, the client closed mid-way, a name `unknown_name = "reject"` refused, any
/// other protocol error (no common version or cipher, a bad message, an alert).
pub const TLS_FAILURES: [&str; 5] = ["plaintext", "timeout", "eof", "unknown_name", "protocol"];

const _: () = assert!(
    cell_counter::HTTP2_STREAM_RESETS + HTTP2_ERROR_CODES.len() <= cell_counter::TLS_HANDSHAKES
);
const _: () = assert!(cell_counter::HTTP2_GOAWAYS + HTTP2_ERROR_CODES.len() <= COUNTERS_PER_CELL);

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
/// Route block 0 counts requests no route matched; configuration route i uses block i + 1.
pub const ROUTE_BLOCKS: usize = MAX_ROUTES + 1;

/// Offsets inside one route's block.
pub mod route_counter {
    use crate::metrics::region::{CLASSES, HIST_LEN, METHODS};
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

/// Most upstream servers (over every `[[upstream]]`, in configuration order) with metrics.
pub const MAX_UPSTREAM_SERVERS: usize = 64;

/// Offsets inside one upstream server's block (one per cell).
pub mod upstream_counter {
    use crate::metrics::region::{CLASSES, HIST_LEN};
    /// Responses by status class.
    pub const RESPONSES: usize = 0;
    pub const CONNECT_ERRORS: usize = RESPONSES + CLASSES.len();
    /// Requests sent again to the next server, after an error or a timeout.
    pub const RETRIES_ERROR: usize = CONNECT_ERRORS + 1;
    pub const RETRIES_TIMEOUT: usize = RETRIES_ERROR + 1;
    /// Gauges: 1 while this cell takes the server as up; pooled idle connections; requests in
    /// flight.
    pub const DOWN: usize = RETRIES_TIMEOUT + 1;
    pub const IDLE: usize = DOWN + 1;
    pub const IN_FLIGHT: usize = IDLE + 1;
    /// Time from sending a request to its response head.
    pub const HEADER_HIST: usize = IN_FLIGHT + 1;
    /// Tunnels (proxied upgrades) to this server: open now (gauge), bytes each way (added
    /// when a tunnel closes), tunnels by relay in `TUNNEL_RELAYS` order, and `sockmap` tunnels
    /// relayed by `copy` instead, by reason in `TUNNEL_FALLBACKS` order.
    pub const TUNNELS_ACTIVE: usize = HEADER_HIST + HIST_LEN;
    pub const TUNNEL_BYTES_UP: usize = TUNNELS_ACTIVE + 1;
    pub const TUNNEL_BYTES_DOWN: usize = TUNNEL_BYTES_UP + 1;
    pub const TUNNELS: usize = TUNNEL_BYTES_DOWN + 1;
    pub const TUNNEL_FALLBACKS: usize = TUNNELS + TUNNEL_RELAYS.len();
    pub const LEN: usize = TUNNEL_FALLBACKS + TUNNEL_FALLBACK_REASONS.len();

    /// The `relay` label values, in counter order (the configuration's names).
    pub const TUNNEL_RELAYS: [&str; 3] = ["copy", "splice", "sockmap"];
    /// The `reason` label values of relay fallbacks, in counter order: the master could not
    /// load the tunnel_relay program, a side is a Unix socket (the program relays TCP), or
    /// putting the sockets in the map failed.
    pub const TUNNEL_FALLBACK_REASONS: [&str; 3] = ["unavailable", "unix_socket", "map_update"];
}

const CELL_AREA: usize = lb_common::MAX_CELLS as usize * COUNTERS_PER_CELL;
const ROUTE_AREA_PER_CELL: usize = ROUTE_BLOCKS * route_counter::LEN;
const UPSTREAM_AREA_PER_CELL: usize = MAX_UPSTREAM_SERVERS * upstream_counter::LEN;
const ROUTE_AREA: usize = lb_common::MAX_CELLS as usize * ROUTE_AREA_PER_CELL;
const TOTAL_COUNTERS: usize =
    CELL_AREA + ROUTE_AREA + lb_common::MAX_CELLS as usize * UPSTREAM_AREA_PER_CELL;

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
        file.set_len((TOTAL_COUNTERS * 8) as u64)
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
        let counters = SharedCounters::map(&file, TOTAL_COUNTERS)?;
        Ok(Self { counters, file })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Counter `at` of upstream server `k`, summed over the first `cells` cells.
    pub fn upstream_sum(&self, cells: usize, k: usize, at: usize) -> u64 {
        (0..cells)
            .map(|c| self.cell(c).upstream(k)[at].load(Relaxed))
            .sum()
    }

    /// Upstream server `k`'s response-head histogram, summed over the first `cells` cells.
    pub fn upstream_hist(&self, cells: usize, k: usize) -> [u64; HIST_LEN] {
        std::array::from_fn(|j| self.upstream_sum(cells, k, upstream_counter::HEADER_HIST + j))
    }

    /// Whether a live cell has upstream server `k` out of its group.
    pub fn upstream_down(&self, cells: usize, k: usize) -> bool {
        (0..cells).any(|c| {
            let cell = self.cell(c);
            cell.get(cell_counter::UP) == 1
                && cell.upstream(k)[upstream_counter::DOWN].load(Relaxed) == 1
        })
    }

    /// One cell's block.
    pub fn cell(&self, index: usize) -> CellStats<'_> {
        let all = self.counters.all();
        let start = index * COUNTERS_PER_CELL;
        let rstart = CELL_AREA + index * ROUTE_AREA_PER_CELL;
        let ustart = CELL_AREA + ROUTE_AREA + index * UPSTREAM_AREA_PER_CELL;
        CellStats {
            s: &all[start..start + COUNTERS_PER_CELL],
            routes: &all[rstart..rstart + ROUTE_AREA_PER_CELL],
            upstreams: &all[ustart..ustart + UPSTREAM_AREA_PER_CELL],
        }
    }
}

/// A view of one cell's counters.
#[derive(Clone, Copy)]
pub struct CellStats<'a> {
    s: &'a [AtomicU64],
    routes: &'a [AtomicU64],
    upstreams: &'a [AtomicU64],
}

impl std::fmt::Debug for CellStats<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CellStats")
    }
}

impl<'a> CellStats<'a> {
    pub fn get(&self, counter: usize) -> u64 {
        self.s[counter].load(Relaxed)
    }
    pub fn set(&self, counter: usize, v: u64) {
        self.s[counter].store(v, Relaxed);
    }
    pub fn add(&self, counter: usize, v: u64) {
        self.s[counter].fetch_add(v, Relaxed);
    }
    pub fn connection_opened(&self) {
        self.add(cell_counter::CONNECTIONS_ACCEPTED, 1);
        self.add(cell_counter::CONNECTIONS_ACTIVE, 1);
    }
    pub fn connection_closed(&self) {
        self.s[cell_counter::CONNECTIONS_ACTIVE].fetch_sub(1, Relaxed);
    }
    /// An idle connection parked (`true`) or woken (`false`).
    pub fn connection_parked(&self, parked: bool) {
        if parked {
            self.add(cell_counter::CONNECTIONS_PARKED, 1);
        } else {
            self.s[cell_counter::CONNECTIONS_PARKED].fetch_sub(1, Relaxed);
        }
    }
    /// One route's block (`route`: 0 = no route, else config index + 1).
    pub fn route(&self, route: usize) -> &[AtomicU64] {
        let r = route.min(ROUTE_BLOCKS - 1) * route_counter::LEN;
        &self.routes[r..r + route_counter::LEN]
    }
    /// One upstream server's block (`server`: its index over every upstream's servers).
    pub fn upstream(&self, server: usize) -> &'a [AtomicU64] {
        let r = server.min(MAX_UPSTREAM_SERVERS - 1) * upstream_counter::LEN;
        let all: &'a [AtomicU64] = self.upstreams;
        &all[r..r + upstream_counter::LEN]
    }
    /// A response head from an upstream server, after `ns`.
    pub fn observe_upstream(&self, server: usize, status: u16, ns: u64) {
        let u = self.upstream(server);
        let class = (status / 100).clamp(1, 5) as usize - 1;
        u[upstream_counter::RESPONSES + class].fetch_add(1, Relaxed);
        let h = upstream_counter::HEADER_HIST;
        hist_observe(&u[h..h + HIST_LEN], ns);
    }
    /// A finished request (its body handed to the socket): duration and body bytes by route.
    pub fn observe_request(&self, route: usize, method: usize, status: u16, ns: u64, body: u64) {
        let r = self.route(route);
        let class = (status / 100).clamp(1, 5) as usize - 1;
        let h = route_counter::REQUEST_HIST + (method * CLASSES.len() + class) * HIST_LEN;
        hist_observe(&r[h..h + HIST_LEN], ns);
        r[route_counter::BODY_BYTES].fetch_add(body, Relaxed);
    }
    pub fn observe_queue_wait(&self, route: usize, ns: u64) {
        let h = route_counter::QUEUE_WAIT_HIST;
        hist_observe(&self.route(route)[h..h + HIST_LEN], ns);
    }
    pub fn observe_app(&self, route: usize, ns: u64, raised: bool) {
        let r = self.route(route);
        hist_observe(
            &r[route_counter::APP_HIST..route_counter::APP_HIST + HIST_LEN],
            ns,
        );
        if raised {
            r[route_counter::APP_EXCEPTIONS].fetch_add(1, Relaxed);
        }
    }
    /// One finished request: status class and body bytes.
    pub fn request(&self, status: u16, body_bytes: u64) {
        self.add(cell_counter::REQUESTS, 1);
        let class = (status / 100).clamp(1, 5) as usize;
        self.add(cell_counter::STATUS_1XX + class - 1, 1);
        self.add(cell_counter::RESPONSE_BODY_BYTES, body_bytes);
    }
    /// A request answered over HTTP `version` (a 408 for a head that never finished has none).
    pub fn request_version(&self, version: http::Version) {
        let i = match version {
            http::Version::HTTP_10 => 0,
            http::Version::HTTP_2 => 2,
            _ => 1,
        };
        self.add(cell_counter::REQUESTS_BY_VERSION + i, 1);
    }
}
