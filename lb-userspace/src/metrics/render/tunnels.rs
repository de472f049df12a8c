//! The tunnel families: upgraded connections a proxy route relays (`cell/tunnel`), summed over
//! cells and upstream servers, and whether the master has the sockmap relay.
use prometheus::proto::MetricType;

use super::build::{Families, gauge_metric, scalar_metric};
use crate::metrics::region::{MAX_UPSTREAM_SERVERS, MetricsRegion, upstream_counter as u};

pub fn tunnel_families(
    out: &mut Families,
    region: &MetricsRegion,
    cells: usize,
    servers: usize,
    sockmap: Option<&[u64; lb_common::tunnel::COUNTERS as usize]>,
) {
    use MetricType::{COUNTER, GAUGE};
    let sum = |at: usize| -> f64 {
        (0..servers.min(MAX_UPSTREAM_SERVERS))
            .map(|k| region.upstream_sum(cells, k, at))
            .sum::<u64>() as f64
    };
    out.add(
        "portico_tunnels_active",
        "Tunnels (proxied upgrades such as WebSocket) open now.",
        GAUGE,
        vec![gauge_metric(&[], sum(u::TUNNELS_ACTIVE))],
    );
    out.add(
        "portico_tunnel_bytes_total",
        "Bytes relayed through tunnels, by direction; counted when a tunnel closes.",
        COUNTER,
        vec![
            scalar_metric(
                &[("direction", "client_to_upstream")],
                sum(u::TUNNEL_BYTES_UP),
            ),
            scalar_metric(
                &[("direction", "upstream_to_client")],
                sum(u::TUNNEL_BYTES_DOWN),
            ),
        ],
    );
    out.add(
        "portico_tunnels_total",
        "Tunnels opened, by the relay that moved their bytes (copy, splice, sockmap).",
        COUNTER,
        u::TUNNEL_RELAYS
            .iter()
            .enumerate()
            .map(|(i, r)| scalar_metric(&[("relay", r)], sum(u::TUNNELS + i)))
            .collect(),
    );
    out.add(
        "portico_tunnel_relay_fallbacks_total",
        "Tunnels of relay = \"sockmap\" routes relayed by copy instead, by reason.",
        COUNTER,
        u::TUNNEL_FALLBACK_REASONS
            .iter()
            .enumerate()
            .map(|(i, r)| scalar_metric(&[("reason", r)], sum(u::TUNNEL_FALLBACKS + i)))
            .collect(),
    );
    out.add(
        "portico_tunnel_sockmap_available",
        "1 when the master loaded the tunnel_relay sk_skb program (relay = \"sockmap\" works).",
        GAUGE,
        vec![gauge_metric(&[], f64::from(u8::from(sockmap.is_some())))],
    );
    let skbs = sockmap.map_or_else(Vec::new, |counts| {
        lb_common::tunnel::LABELS
            .iter()
            .zip(counts)
            .map(|(r, n)| scalar_metric(&[("result", r)], *n as f64))
            .collect()
    });
    out.add(
        "portico_tunnel_sockmap_skbs_total",
        "Socket buffers the tunnel_relay program saw, by result (redirected to the peer, no peer: left to the cell, dropped: the peer had left).",
        COUNTER,
        skbs,
    );
}
