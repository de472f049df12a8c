//! Requests by HTTP version, and what HTTP/2's limits refused: a family beside
//! `portico_cell_requests_total`, so the existing families keep their labels.
use prometheus::proto::MetricType;

use super::build::{Families, scalar_metric};
use crate::metrics::region::{HTTP_VERSIONS, HTTP2_ERROR_CODES, MetricsRegion, cell_counter};

/// Requests by `network_protocol_version`; HTTP/2 connections, header timeouts, and the resets
/// and GOAWAYs the cells sent (a code's series appears once it has been sent).
pub fn http2_families(out: &mut Families, region: &MetricsRegion, cells: usize) {
    let mut versions = Vec::with_capacity(cells * HTTP_VERSIONS.len());
    let (mut conns, mut timeouts, mut resets, mut goaways) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..cells {
        let c = region.cell(i);
        let cell = i.to_string();
        let cell = cell.as_str();
        for (k, v) in HTTP_VERSIONS.iter().enumerate() {
            let n = c.get(cell_counter::REQUESTS_BY_VERSION + k);
            versions.push(scalar_metric(
                &[("cell", cell), ("network_protocol_version", v)],
                n as f64,
            ));
        }
        let one = |counter: usize| scalar_metric(&[("cell", cell)], c.get(counter) as f64);
        conns.push(one(cell_counter::HTTP2_CONNECTIONS));
        timeouts.push(one(cell_counter::HTTP2_HEADER_TIMEOUTS));
        for (k, code) in HTTP2_ERROR_CODES.iter().enumerate() {
            for (base, series) in [
                (cell_counter::HTTP2_STREAM_RESETS, &mut resets),
                (cell_counter::HTTP2_GOAWAYS, &mut goaways),
            ] {
                let n = c.get(base + k);
                if n > 0 {
                    series.push(scalar_metric(
                        &[("cell", cell), ("error_code", code)],
                        n as f64,
                    ));
                }
            }
        }
    }
    use MetricType::COUNTER;
    out.add(
        "portico_cell_requests_by_protocol_total",
        "HTTP requests answered by the cell, by HTTP version.",
        COUNTER,
        versions,
    );
    out.add(
        "portico_http2_connections_total",
        "HTTP/2 connections the cell served (h2c prior knowledge or ALPN h2).",
        COUNTER,
        conns,
    );
    out.add(
        "portico_http2_header_timeouts_total",
        "HTTP/2 connections closed because no request came within header_timeout of opening.",
        COUNTER,
        timeouts,
    );
    out.add(
        "portico_http2_stream_resets_total",
        "RST_STREAM frames the cell sent, by error code (refused_stream: over http2_max_concurrent_streams).",
        COUNTER,
        resets,
    );
    out.add(
        "portico_http2_goaways_total",
        "GOAWAY frames with an error the cell sent (connections it closed), by error code.",
        COUNTER,
        goaways,
    );
}

#[cfg(test)]
mod tests {
    use crate::metrics::exposition::Format;
    use crate::metrics::{
        EbpfSnapshot, MetricsRegion, ProcSnapshot, cell_counter, http2_error_index,
    };

    #[test]
    fn requests_by_version_and_http2_refusals_render() {
        let region = MetricsRegion::create().unwrap();
        let c = region.cell(1);
        for v in [
            http::Version::HTTP_2,
            http::Version::HTTP_11,
            http::Version::HTTP_10,
            http::Version::HTTP_2,
        ] {
            c.request_version(v);
        }
        c.add(cell_counter::HTTP2_CONNECTIONS, 2);
        c.add(
            cell_counter::HTTP2_STREAM_RESETS + http2_error_index(7).unwrap(),
            3,
        );
        c.add(
            cell_counter::HTTP2_GOAWAYS + http2_error_index(11).unwrap(),
            1,
        );
        let procs = ProcSnapshot {
            listen_queues: Vec::new(),
            cells: Vec::new(),
        };
        let text = super::super::render(
            &region,
            2,
            &EbpfSnapshot::default(),
            &super::super::Names {
                routes: &[],
                upstreams: &[],
                certs: &[],
            },
            &procs,
            Format::Prometheus,
        )
        .unwrap();
        for line in [
            "portico_cell_requests_by_protocol_total{cell=\"1\",network_protocol_version=\"2\"} 2",
            "portico_cell_requests_by_protocol_total{cell=\"1\",network_protocol_version=\"1.1\"} 1",
            "portico_cell_requests_by_protocol_total{cell=\"1\",network_protocol_version=\"1.0\"} 1",
            "portico_cell_requests_by_protocol_total{cell=\"0\",network_protocol_version=\"2\"} 0",
            "portico_http2_connections_total{cell=\"1\"} 2",
            "portico_http2_header_timeouts_total{cell=\"1\"} 0",
            "portico_http2_stream_resets_total{cell=\"1\",error_code=\"refused_stream\"} 3",
            "portico_http2_goaways_total{cell=\"1\",error_code=\"enhance_your_calm\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // A code never sent has no series.
        assert!(!text.contains("error_code=\"protocol_error\""));
    }
}
