//! The live status page: the master samples every cell's counters once a second and keeps a
//! minute of history, so `/status.json` can give request rates and p50/p99 of the last minute
//! per cell, and `/status` draws them (one self-contained page, refreshing itself).
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Serialize;

use crate::master::state::MasterState;
use crate::metrics::{
    BOUNDS_NS, CLASSES, HIST_LEN, MAX_UPSTREAM_SERVERS, METHODS, ROUTE_BLOCKS, cell_counter,
    route_counter, upstream_counter,
};

/// Seconds of history kept (the window of the page's latency numbers and sparklines).
pub const WINDOW: usize = 60;

/// One cell's cumulative numbers at one instant.
#[derive(Clone, Default)]
struct CellSample {
    requests: u64,
    /// Request-duration buckets summed over routes, methods and classes (last: +Inf).
    buckets: [u64; HIST_LEN - 1],
    steered: u64,
}

#[derive(Default)]
pub struct History {
    /// Oldest first; one entry per second.
    samples: VecDeque<Vec<CellSample>>,
}

fn sample_cell(shared: &MasterState, cell: usize, steered: u64) -> CellSample {
    let c = shared.metrics.cell(cell);
    let mut s = CellSample {
        requests: c.get(cell_counter::REQUESTS),
        steered,
        ..Default::default()
    };
    let routes = shared.routes.borrow().len().min(ROUTE_BLOCKS - 1);
    for r in 0..=routes {
        let block = c.route(r);
        for h in 0..METHODS.len() * CLASSES.len() {
            let at = route_counter::REQUEST_HIST + h * HIST_LEN;
            for (k, b) in s.buckets.iter_mut().enumerate() {
                *b += block[at + k].load(Relaxed);
            }
        }
    }
    s
}

/// Samples every second, forever (spawned by the master next to the admin endpoint).
pub async fn sample(shared: Rc<MasterState>, history: Rc<RefCell<History>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let cells = shared.cells();
        let steering = shared.steering.borrow().as_ref().map(|s| s.snapshot(cells));
        let row: Vec<CellSample> = (0..cells)
            .map(|i| {
                let steered = steering
                    .as_ref()
                    .and_then(|s| s.per_cell.get(i))
                    .map_or(0, |r| r.iter().sum());
                sample_cell(&shared, i, steered)
            })
            .collect();
        let mut h = history.borrow_mut();
        h.samples.push_back(row);
        while h.samples.len() > WINDOW + 1 {
            h.samples.pop_front();
        }
    }
}

/// The `q` quantile (0..1) of a histogram given per-bucket counts, interpolated linearly inside
/// its bucket like Prometheus' histogram_quantile. None without observations.
pub fn quantile(buckets: &[u64; HIST_LEN - 1], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        if *n > 0 && (seen + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { BOUNDS_NS[i - 1] as f64 };
            // The +Inf bucket reports its lower bound, as Prometheus does.
            let Some(&upper) = BOUNDS_NS.get(i) else {
                return Some(lower / 1e9);
            };
            let frac = (rank - seen as f64) / *n as f64;
            return Some((lower + (upper as f64 - lower) * frac) / 1e9);
        }
        seen += n;
    }
    Some(BOUNDS_NS[BOUNDS_NS.len() - 1] as f64 / 1e9)
}

#[derive(Serialize)]
pub struct CellStatus {
    pub cell: usize,
    pub up: bool,
    pub pid: u64,
    /// Requests per second over the last second.
    pub rps: f64,
    /// Requests per second, one value per second of the window (oldest first).
    pub rps_history: Vec<f64>,
    pub connections_active: u64,
    /// ASGI WebSockets open now (`portico_websocket_connections_active`).
    pub websockets_active: u64,
    pub wsgi_queue_depth: u64,
    pub wsgi_threads_busy: u64,
    pub wsgi_threads: u64,
    /// Request-duration quantiles over the window, in milliseconds.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// New connections the steering program sent to this cell over the window.
    pub steered: u64,
    pub rss_bytes: Option<u64>,
}

#[derive(Serialize)]
pub struct XdpStatus {
    pub interface: String,
    pub mode: &'static str,
    pub packets: Vec<(&'static str, u64)>,
}

/// One upstream server of the proxy routes, totals since start over every cell.
#[derive(Serialize)]
pub struct UpstreamStatus {
    pub upstream: String,
    pub server: String,
    /// False while a live cell has it out after `max_fails` failures.
    pub up: bool,
    /// Responses by status class (1xx..5xx).
    pub responses: [u64; 5],
    pub connect_errors: u64,
    pub retries: u64,
    pub in_flight: u64,
    pub idle: u64,
    /// Tunnels (proxied upgrades) to the server open now.
    pub tunnels: u64,
    /// Time to the response head, p99 since start, in milliseconds.
    pub p99_ms: Option<f64>,
}

#[derive(Serialize)]
pub struct Status {
    pub version: &'static str,
    pub window_seconds: usize,
    pub ebpf_enabled: bool,
    /// The steering policy (`kernel` when no program is attached).
    pub steering_policy: &'static str,
    /// Steering decisions by result, since start.
    pub steering: Vec<(&'static str, u64)>,
    /// XDP guard: interface and mode, and packets by action since start.
    pub xdp: Option<XdpStatus>,
    pub cells: Vec<CellStatus>,
    pub upstreams: Vec<UpstreamStatus>,
}

pub fn status(shared: &MasterState, history: &History) -> Status {
    let s = &history.samples;
    let procs = shared.proc_snapshot();
    let cells = (0..shared.cells())
        .map(|i| {
            let c = shared.metrics.cell(i);
            let at = |k: usize| s.get(k).and_then(|row| row.get(i));
            let (first, last) = (at(0), s.len().checked_sub(1).and_then(at));
            let prev = s.len().checked_sub(2).and_then(at);
            let rps = match (prev, last) {
                (Some(a), Some(b)) => b.requests.saturating_sub(a.requests) as f64,
                _ => 0.0,
            };
            let rps_history = (1..s.len())
                .filter_map(|k| Some(at(k)?.requests.saturating_sub(at(k - 1)?.requests) as f64))
                .collect();
            let window = match (first, last) {
                (Some(a), Some(b)) => {
                    let mut d = [0u64; HIST_LEN - 1];
                    for (k, v) in d.iter_mut().enumerate() {
                        *v = b.buckets[k].saturating_sub(a.buckets[k]);
                    }
                    d
                }
                _ => [0; HIST_LEN - 1],
            };
            CellStatus {
                cell: i,
                up: c.get(cell_counter::UP) == 1,
                pid: c.get(cell_counter::PID),
                rps,
                rps_history,
                connections_active: c.get(cell_counter::CONNECTIONS_ACTIVE),
                websockets_active: c.get(cell_counter::WEBSOCKETS_ACTIVE),
                wsgi_queue_depth: c.get(cell_counter::WSGI_QUEUE_DEPTH),
                wsgi_threads_busy: c.get(cell_counter::WSGI_THREADS_BUSY),
                wsgi_threads: c.get(cell_counter::WSGI_THREADS),
                p50_ms: quantile(&window, 0.5).map(|v| v * 1e3),
                p99_ms: quantile(&window, 0.99).map(|v| v * 1e3),
                steered: match (first, last) {
                    (Some(a), Some(b)) => b.steered.saturating_sub(a.steered),
                    _ => 0,
                },
                rss_bytes: procs.cells.get(i).copied().flatten().map(|(rss, _)| rss),
            }
        })
        .collect();
    // Counters only: the map sizes /metrics also reads are not shown here.
    let snap = shared
        .steering
        .borrow()
        .as_ref()
        .map(|s| s.snapshot(shared.cells()));
    let mut steering: Vec<(&'static str, u64)> = Vec::new();
    if let Some(snap) = &snap {
        for (k, l) in lb_common::steering::LABELS.iter().enumerate() {
            steering.push((l, snap.per_cell.iter().map(|r| r[k]).sum()));
        }
        steering.push(("no_live_cell", snap.no_live_cell));
    }
    let xdp = shared.xdp.borrow().as_ref().map(|x| {
        let counts = x.snapshot();
        XdpStatus {
            interface: x.interface().to_string(),
            mode: x.mode(),
            packets: lb_common::xdp::LABELS
                .iter()
                .enumerate()
                .map(|(a, l)| (*l, counts.packets[a]))
                .collect(),
        }
    });
    let upstreams = upstream_status(shared);
    Status {
        version: env!("CARGO_PKG_VERSION"),
        window_seconds: WINDOW,
        ebpf_enabled: snap.is_some() || xdp.is_some(),
        steering_policy: shared.policy,
        steering,
        xdp,
        cells,
        upstreams,
    }
}

fn upstream_status(shared: &MasterState) -> Vec<UpstreamStatus> {
    let cells = shared.cells();
    shared
        .upstream_servers
        .borrow()
        .iter()
        .enumerate()
        .take(MAX_UPSTREAM_SERVERS)
        .map(|(k, (upstream, server))| {
            let sum = |at: usize| shared.metrics.upstream_sum(cells, k, at);
            let mut responses = [0u64; 5];
            for (c, r) in responses.iter_mut().enumerate() {
                *r = sum(upstream_counter::RESPONSES + c);
            }
            let hist = shared.metrics.upstream_hist(cells, k);
            let mut buckets = [0u64; HIST_LEN - 1];
            buckets.copy_from_slice(&hist[..HIST_LEN - 1]);
            let down = shared.metrics.upstream_down(cells, k);
            UpstreamStatus {
                upstream: upstream.clone(),
                server: server.clone(),
                up: !down,
                responses,
                connect_errors: sum(upstream_counter::CONNECT_ERRORS),
                retries: sum(upstream_counter::RETRIES_ERROR)
                    + sum(upstream_counter::RETRIES_TIMEOUT),
                in_flight: sum(upstream_counter::IN_FLIGHT),
                idle: sum(upstream_counter::IDLE),
                tunnels: sum(upstream_counter::TUNNELS_ACTIVE),
                p99_ms: quantile(&buckets, 0.99).map(|v| v * 1e3),
            }
        })
        .collect()
}

/// The page: no external assets; it polls /status.json every second and redraws.
pub const PAGE: &str = include_str!("status.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let mut b = [0u64; HIST_LEN - 1];
        assert_eq!(quantile(&b, 0.5), None);
        // 100 observations in (100 us, 250 us].
        b[1] = 100;
        let p50 = quantile(&b, 0.5).unwrap();
        assert!((p50 - 0.000175).abs() < 1e-9, "{p50}");
        // One slow outlier above 10 s lands in +Inf: p99 stays in the fast bucket.
        b[HIST_LEN - 2] = 1;
        assert!(quantile(&b, 0.99).unwrap() < 0.00025);
        assert_eq!(quantile(&b, 1.0).unwrap(), 10.0);
    }
}
