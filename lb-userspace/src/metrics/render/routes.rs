//! The per-route families: request durations, counts and bytes, WSGI queue and app times.
use std::sync::atomic::Ordering::Relaxed;

use prometheus::proto::MetricFamily;

use super::build::{family, histogram_metric, scalar_metric, sum_hist};
use crate::metrics::region::{
    CLASSES, HIST_LEN, MAX_ROUTES, METHODS, MetricsRegion, route_counter,
};

/// Per-route series, summed over cells. Series that never saw a request are left out, so the
/// exposition grows with what is served, not with routes x methods x classes.
pub fn route_families(
    region: &MetricsRegion,
    cells: usize,
    routes: &[String],
) -> Vec<MetricFamily> {
    use prometheus::proto::MetricType;
    let (mut durations, mut requests, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut waits, mut runs, mut raised) = (Vec::new(), Vec::new(), Vec::new());
    for index in 0..=routes.len().min(MAX_ROUTES) {
        let route = if index == 0 {
            "none"
        } else {
            routes[index - 1].as_str()
        };
        let mut by_class = [0u64; CLASSES.len()];
        let mut seen = false;
        for (m, method) in METHODS.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let at = route_counter::REQUEST_HIST + (m * CLASSES.len() + c) * HIST_LEN;
                let h = sum_hist(region, cells, index, at);
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
                .map(|c| region.cell(c).route(index)[route_counter::BODY_BYTES].load(Relaxed))
                .sum();
            bytes.push(scalar_metric(&[("route", route)], b as f64));
        }
        let wait = sum_hist(region, cells, index, route_counter::QUEUE_WAIT_HIST);
        if wait[..HIST_LEN - 1].iter().any(|n| *n > 0) {
            waits.push(histogram_metric(&[("route", route)], &wait));
            let run = sum_hist(region, cells, index, route_counter::APP_HIST);
            runs.push(histogram_metric(&[("route", route)], &run));
            let e: u64 = (0..cells)
                .map(|c| region.cell(c).route(index)[route_counter::APP_EXCEPTIONS].load(Relaxed))
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
            "Time from a WSGI or ASGI request being ready to the app being called (mod_wsgi's queue_time).",
            MetricType::HISTOGRAM,
            waits,
        ));
        out.push(family(
            "portico_wsgi_app_duration_seconds",
            "Time the WSGI or ASGI app ran for a request, until its response was handed over.",
            MetricType::HISTOGRAM,
            runs,
        ));
        out.push(family(
            "portico_wsgi_app_exceptions_total",
            "WSGI and ASGI requests whose app raised (500 or aborted response).",
            MetricType::COUNTER,
            raised,
        ));
    }
    out.retain(|f| !f.get_metric().is_empty());
    out
}
