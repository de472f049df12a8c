//! The `/metrics` families, built straight from the shared counters (a scrape allocates per
//! series, not per label lookup), one builder per group of families.

mod build;
mod http2;
mod limits;
mod routes;
mod tls;
mod tunnels;
mod upstreams;

use prometheus::proto::{MetricFamily, MetricType};

use super::exposition::Format;
use super::region::{CLASSES, MetricsRegion, cell_counter};
use super::snapshot::{EbpfSnapshot, ProcSnapshot};
use build::{Families, gauge_metric, scalar_metric};
use http2::http2_families;
use limits::limit_families;
use routes::route_families;
pub use tls::CertExpiry;
use tunnels::tunnel_families;
use upstreams::upstream_families;

/// Renders the exposition for `cells` cells in `format`.
pub fn render(
    region: &MetricsRegion,
    cells: usize,
    bpf: &EbpfSnapshot,
    names: &Names<'_>,
    procs: &ProcSnapshot,
    format: Format,
) -> anyhow::Result<String> {
    let Names {
        routes,
        upstreams,
        certs,
    } = *names;
    let mut families = process_families(bpf)?;
    let mut out = Families(Vec::new());
    cell_families(&mut out, region, cells, procs);
    limit_families(&mut out, region, cells);
    http2_families(&mut out, region, cells);
    wsgi_families(&mut out, region, cells);
    ebpf_families(&mut out, bpf, cells);
    listen_families(&mut out, procs);
    upstream_families(&mut out, region, cells, upstreams);
    tls::tls_families(&mut out, region, cells, certs);
    tunnel_families(
        &mut out,
        region,
        cells,
        upstreams.len(),
        bpf.tunnel_relay.as_ref(),
    );
    families.extend(out.0);
    families.extend(route_families(region, cells, routes));
    families.sort_by(|a, b| a.name().cmp(b.name()));
    super::exposition::encode(families, format)
}

/// What the master knows by name: the labels of the route, upstream and certificate series.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    /// Route prefixes in configuration order.
    pub routes: &'a [String],
    /// (upstream, server) in configuration order.
    pub upstreams: &'a [(String, String)],
    /// The TLS listeners' certificates.
    pub certs: &'a [CertExpiry],
}

/// Registered through the `prometheus` registry: build info, the eBPF switch and the master's
/// own process_* series (CPU, memory, file descriptors, start time).
fn process_families(bpf: &EbpfSnapshot) -> anyhow::Result<Vec<MetricFamily>> {
    use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};
    let reg = Registry::new();
    let ebpf = IntGauge::new(
        "portico_ebpf_enabled",
        "1 when an eBPF program (steering or the XDP guard) is attached, 0 when plain SO_REUSEPORT serves.",
    )?;
    reg.register(Box::new(ebpf.clone()))?;
    ebpf.set(i64::from(bpf.steering.enabled || bpf.xdp.enabled));
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
    reg.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(reg.gather())
}

/// Per-cell requests, bytes, connections, restarts and process usage.
fn cell_families(out: &mut Families, region: &MetricsRegion, cells: usize, procs: &ProcSnapshot) {
    let mut up = Vec::with_capacity(cells);
    let mut requests = Vec::with_capacity(cells * CLASSES.len());
    let (mut body_bytes, mut sendfile, mut accepted, mut active, mut parked) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut restarts, mut rss, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..cells {
        let c = region.cell(i);
        let cell = i.to_string();
        let cell = cell.as_str();
        let value = |counter: usize| c.get(counter) as f64;
        up.push(gauge_metric(&[("cell", cell)], value(cell_counter::UP)));
        for (k, class) in CLASSES.iter().enumerate() {
            requests.push(scalar_metric(
                &[("cell", cell), ("status_class", class)],
                value(cell_counter::STATUS_1XX + k),
            ));
        }
        let one = |counter: usize| scalar_metric(&[("cell", cell)], value(counter));
        body_bytes.push(one(cell_counter::RESPONSE_BODY_BYTES));
        sendfile.push(one(cell_counter::SENDFILE_BYTES));
        accepted.push(one(cell_counter::CONNECTIONS_ACCEPTED));
        active.push(gauge_metric(
            &[("cell", cell)],
            value(cell_counter::CONNECTIONS_ACTIVE),
        ));
        parked.push(gauge_metric(
            &[("cell", cell)],
            value(cell_counter::CONNECTIONS_PARKED),
        ));
        for (reason, counter) in [
            ("crash", cell_counter::RESTARTS_CRASH),
            ("reload", cell_counter::RESTARTS_RELOAD),
        ] {
            restarts.push(scalar_metric(
                &[("cell", cell), ("reason", reason)],
                value(counter),
            ));
        }
        for why in crate::proto::Recycle::ALL {
            let n = c.get(cell_counter::RESTARTS_RECYCLE + why.index());
            if n > 0 {
                restarts.push(scalar_metric(
                    &[("cell", cell), ("reason", why.label())],
                    n as f64,
                ));
            }
        }
        if let Some(Some((bytes, secs))) = procs.cells.get(i) {
            rss.push(gauge_metric(&[("cell", cell)], *bytes as f64));
            cpu.push(scalar_metric(&[("cell", cell)], *secs));
        }
    }
    use MetricType::{COUNTER, GAUGE};
    out.add(
        "portico_cell_up",
        "1 when the cell is running and accepting connections.",
        GAUGE,
        up,
    );
    out.add(
        "portico_cell_requests_total",
        "HTTP requests answered by the cell, by status class.",
        COUNTER,
        requests,
    );
    out.add(
        "portico_cell_response_body_bytes_total",
        "Response body bytes sent by the cell.",
        COUNTER,
        body_bytes,
    );
    out.add(
        "portico_cell_sendfile_bytes_total",
        "Response body bytes the cell sent with sendfile(2) straight from the file.",
        COUNTER,
        sendfile,
    );
    out.add(
        "portico_connections_accepted_total",
        "Connections accepted by the cell.",
        COUNTER,
        accepted,
    );
    out.add(
        "portico_connections_active",
        "Connections the cell has open now.",
        GAUGE,
        active,
    );
    out.add(
        "portico_connections_parked",
        "Idle keep-alive connections the cell holds as a bare socket, without HTTP buffers.",
        GAUGE,
        parked,
    );
    out.add(
        "portico_cell_restarts_total",
        "Times the cell was replaced, by reason.",
        COUNTER,
        restarts,
    );
    out.add(
        "portico_cell_rss_bytes",
        "Resident memory of the cell's process.",
        GAUGE,
        rss,
    );
    out.add(
        "portico_cell_cpu_seconds_total",
        "CPU time (user + system) of the cell's current process.",
        COUNTER,
        cpu,
    );
}

/// WSGI refusals, timeouts, and the queue and thread gauges the cells publish.
fn wsgi_families(out: &mut Families, region: &MetricsRegion, cells: usize) {
    let (mut rejected, mut timeouts) = (Vec::new(), Vec::new());
    let (mut queue_depth, mut threads_busy) = (Vec::new(), Vec::new());
    for i in 0..cells {
        let c = region.cell(i);
        let cell = i.to_string();
        let cell = cell.as_str();
        let value = |counter: usize| c.get(counter) as f64;
        timeouts.push(scalar_metric(
            &[("cell", cell)],
            value(cell_counter::WSGI_REQUEST_TIMEOUTS),
        ));
        for (reason, counter) in [
            ("queue_full", cell_counter::WSGI_QUEUE_FULL),
            ("queue_timeout", cell_counter::WSGI_QUEUE_TIMEOUTS),
        ] {
            rejected.push(scalar_metric(
                &[("cell", cell), ("reason", reason)],
                value(counter),
            ));
        }
        if c.get(cell_counter::WSGI_THREADS) > 0 {
            queue_depth.push(gauge_metric(
                &[("cell", cell)],
                value(cell_counter::WSGI_QUEUE_DEPTH),
            ));
            threads_busy.push(gauge_metric(
                &[("cell", cell)],
                value(cell_counter::WSGI_THREADS_BUSY),
            ));
        }
    }
    use MetricType::{COUNTER, GAUGE};
    websocket_families(out, region, cells);
    out.add(
        "portico_wsgi_rejected_total",
        "WSGI requests answered 503 before reaching the app, by reason.",
        COUNTER,
        rejected,
    );
    out.add(
        "portico_wsgi_request_timeouts_total",
        "WSGI requests answered 504 because they ran past request_timeout.",
        COUNTER,
        timeouts,
    );
    out.add(
        "portico_wsgi_queue_depth",
        "WSGI requests waiting for a Python thread in the cell.",
        GAUGE,
        queue_depth,
    );
    out.add(
        "portico_wsgi_threads_busy",
        "Python threads of the cell running a request.",
        GAUGE,
        threads_busy,
    );
}

/// ASGI WebSockets: open now and messages each way, per cell.
fn websocket_families(out: &mut Families, region: &MetricsRegion, cells: usize) {
    let (mut active, mut messages) = (Vec::new(), Vec::new());
    for i in 0..cells {
        let c = region.cell(i);
        let cell = i.to_string();
        let cell = cell.as_str();
        active.push(gauge_metric(
            &[("cell", cell)],
            c.get(cell_counter::WEBSOCKETS_ACTIVE) as f64,
        ));
        for (direction, counter) in [
            ("in", cell_counter::WEBSOCKET_MESSAGES_IN),
            ("out", cell_counter::WEBSOCKET_MESSAGES_OUT),
        ] {
            messages.push(scalar_metric(
                &[("cell", cell), ("direction", direction)],
                c.get(counter) as f64,
            ));
        }
    }
    out.add(
        "portico_websocket_connections_active",
        "WebSocket connections of ASGI routes open now.",
        MetricType::GAUGE,
        active,
    );
    out.add(
        "portico_websocket_messages_total",
        "WebSocket messages of ASGI routes, from the client (in) and to it (out).",
        MetricType::COUNTER,
        messages,
    );
}

/// Steering decisions, XDP guard counters and map sizes.
fn ebpf_families(out: &mut Families, bpf: &EbpfSnapshot, cells: usize) {
    let steering = &bpf.steering;
    let mut steered = Vec::new();
    for (i, results) in steering.per_cell.iter().enumerate().take(cells) {
        let cell = i.to_string();
        for (r, label) in lb_common::steering::LABELS.iter().enumerate() {
            steered.push(scalar_metric(
                &[("cell", cell.as_str()), ("result", label)],
                results[r] as f64,
            ));
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
    use MetricType::{COUNTER, GAUGE};
    out.add(
        "portico_steering_decisions_total",
        "New connections placed by the sk_reuseport steering program, by cell and result.",
        COUNTER,
        steered,
    );
    out.add(
        "portico_xdp_packets_total",
        "Packets seen by the XDP guard, by action.",
        COUNTER,
        xdp_packets,
    );
    out.add(
        "portico_xdp_bytes_total",
        "Bytes of the packets seen by the XDP guard, by action.",
        COUNTER,
        xdp_bytes,
    );
    out.add(
        "portico_bpf_map_entries",
        "Entries in the eBPF maps whose contents change at run time.",
        GAUGE,
        map_entries,
    );
}

/// Accept-queue lengths, read from the kernel at scrape time.
fn listen_families(out: &mut Families, procs: &ProcSnapshot) {
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
    out.add(
        "portico_listen_queue_length",
        "Connections waiting in a listener's accept queue (from the kernel).",
        MetricType::GAUGE,
        listen,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::region::upstream_counter;
    use crate::metrics::{method_index, process_usage};
    use std::sync::atomic::Ordering::Relaxed;

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
        c.observe_upstream(1, 502, 3_000_000);
        c.upstream(1)[upstream_counter::DOWN].store(1, Relaxed);
        region.cell(3).set(cell_counter::UP, 1);
        let procs = ProcSnapshot {
            listen_queues: vec![("127.0.0.1:8080".into(), 0, 3)],
            cells: vec![process_usage(std::process::id())],
        };
        let text = render(
            &region,
            4,
            &EbpfSnapshot::default(),
            &Names {
                routes: &["/".into()],
                upstreams: &[
                    ("app".into(), "127.0.0.1:8001".into()),
                    ("app".into(), "unix:/run/a.sock".into()),
                ],
                certs: &[CertExpiry {
                    listener: "0.0.0.0:443".into(),
                    cert: "/etc/ssl/site.pem".into(),
                    not_after: 1_900_000_000,
                }],
            },
            &procs,
            Format::Prometheus,
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
        assert!(
            text.contains("portico_upstream_requests_total{upstream=\"app\",server=\"unix:/run/a.sock\",status_class=\"5xx\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "portico_upstream_server_up{upstream=\"app\",server=\"unix:/run/a.sock\"} 0"
        ));
        assert!(
            text.contains(
                "portico_upstream_server_up{upstream=\"app\",server=\"127.0.0.1:8001\"} 1"
            )
        );
        assert!(text.contains("portico_upstream_response_header_seconds_count{upstream=\"app\",server=\"unix:/run/a.sock\"} 1"));
    }
}
