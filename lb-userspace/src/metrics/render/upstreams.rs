//! The per-upstream-server families of proxy routes.
use prometheus::proto::MetricType;

use super::build::{Families, gauge_metric, histogram_metric, scalar_metric};
use crate::metrics::region::{CLASSES, MAX_UPSTREAM_SERVERS, MetricsRegion, upstream_counter};

/// Per upstream server, summed over cells (up: as every live cell sees it).
pub fn upstream_families(
    out: &mut Families,
    region: &MetricsRegion,
    cells: usize,
    servers: &[(String, String)],
) {
    use MetricType::{COUNTER, GAUGE, HISTOGRAM};
    let (mut responses, mut headers, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    let (mut retries, mut up, mut idle, mut in_flight) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, (upstream, server)) in servers.iter().enumerate().take(MAX_UPSTREAM_SERVERS) {
        let labels = [("upstream", upstream.as_str()), ("server", server.as_str())];
        let sum = |at: usize| region.upstream_sum(cells, k, at);
        for (c, class) in CLASSES.iter().enumerate() {
            let n = sum(upstream_counter::RESPONSES + c);
            if n > 0 {
                responses.push(scalar_metric(
                    &[labels[0], labels[1], ("status_class", class)],
                    n as f64,
                ));
            }
        }
        headers.push(histogram_metric(&labels, &region.upstream_hist(cells, k)));
        errors.push(scalar_metric(
            &labels,
            sum(upstream_counter::CONNECT_ERRORS) as f64,
        ));
        for (reason, at) in [
            ("error", upstream_counter::RETRIES_ERROR),
            ("timeout", upstream_counter::RETRIES_TIMEOUT),
        ] {
            retries.push(scalar_metric(
                &[labels[0], labels[1], ("reason", reason)],
                sum(at) as f64,
            ));
        }
        let down = region.upstream_down(cells, k);
        up.push(gauge_metric(&labels, f64::from(u8::from(!down))));
        idle.push(gauge_metric(&labels, sum(upstream_counter::IDLE) as f64));
        in_flight.push(gauge_metric(
            &labels,
            sum(upstream_counter::IN_FLIGHT) as f64,
        ));
    }
    out.add(
        "portico_upstream_requests_total",
        "Requests an upstream server answered, by the status class of its response.",
        COUNTER,
        responses,
    );
    out.add(
        "portico_upstream_response_header_seconds",
        "Time from sending a request upstream to its response head.",
        HISTOGRAM,
        headers,
    );
    out.add(
        "portico_upstream_connect_errors_total",
        "Connections to an upstream server that failed (refused, unreachable, timed out).",
        COUNTER,
        errors,
    );
    out.add(
        "portico_upstream_retries_total",
        "Requests sent again to the next server after an error or a timeout, by reason.",
        COUNTER,
        retries,
    );
    out.add(
        "portico_upstream_server_up",
        "1 while no live cell has taken the server out after failures (max_fails).",
        GAUGE,
        up,
    );
    out.add(
        "portico_upstream_idle_connections",
        "Pooled idle connections to an upstream server, over every cell.",
        GAUGE,
        idle,
    );
    out.add(
        "portico_upstream_requests_in_flight",
        "Requests sent to an upstream server and waiting for its response head.",
        GAUGE,
        in_flight,
    );
}
