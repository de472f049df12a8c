//! TLS: handshakes by version and cipher, resumptions, failures by reason (cells' counters),
//! and each loaded certificate's expiry (the master's).
use prometheus::proto::MetricType;

use super::build::{Families, gauge_metric, scalar_metric};
use crate::metrics::region::{MetricsRegion, TLS_FAILURES, TLS_SUITES, cell_counter};

/// A certificate the cells serve: the listener, its file, its notAfter (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    pub listener: String,
    pub cert: String,
    pub not_after: i64,
}

fn version_of(suite: &str) -> &'static str {
    match suite {
        "other" => "other",
        s if s.starts_with("TLS13_") => "1.3",
        _ => "1.2",
    }
}

pub fn tls_families(
    out: &mut Families,
    region: &MetricsRegion,
    cells: usize,
    certs: &[CertExpiry],
) {
    let (mut done, mut resumed, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    let mut any = false;
    for i in 0..cells {
        let c = region.cell(i);
        let cell = i.to_string();
        for (k, suite) in TLS_SUITES.iter().enumerate() {
            let n = c.get(cell_counter::TLS_HANDSHAKES + k);
            any |= n > 0;
            if n > 0 {
                done.push(scalar_metric(
                    &[
                        ("cell", &cell),
                        ("version", version_of(suite)),
                        ("cipher", suite),
                    ],
                    n as f64,
                ));
            }
        }
        for (k, version) in ["1.2", "1.3"].iter().enumerate() {
            resumed.push(scalar_metric(
                &[("cell", &cell), ("version", version)],
                c.get(cell_counter::TLS_RESUMED + k) as f64,
            ));
        }
        for (k, reason) in TLS_FAILURES.iter().enumerate() {
            let n = c.get(cell_counter::TLS_FAILED + k);
            any |= n > 0;
            failed.push(scalar_metric(
                &[("cell", &cell), ("reason", reason)],
                n as f64,
            ));
        }
    }
    let expiry: Vec<_> = certs
        .iter()
        .map(|c| {
            gauge_metric(
                &[("listener", &c.listener), ("cert", &c.cert)],
                c.not_after as f64,
            )
        })
        .collect();
    if !any && certs.is_empty() {
        // No TLS listener and never a handshake: no TLS series at all.
        return;
    }
    use MetricType::{COUNTER, GAUGE};
    out.add(
        "portico_tls_handshakes_total",
        "TLS handshakes completed, by protocol version and cipher suite.",
        COUNTER,
        done,
    );
    out.add(
        "portico_tls_resumed_handshakes_total",
        "TLS handshakes that resumed a session (ticket or session ID), by version.",
        COUNTER,
        resumed,
    );
    out.add(
        "portico_tls_handshake_failures_total",
        "TLS handshakes that failed, by reason (plaintext, timeout, eof, unknown_name, protocol).",
        COUNTER,
        failed,
    );
    out.add(
        "portico_tls_certificate_expiry_timestamp_seconds",
        "When each served certificate expires (notAfter), in Unix seconds.",
        GAUGE,
        expiry,
    );
}
