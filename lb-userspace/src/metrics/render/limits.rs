//! The connection limit and the send timeout: what a cell does to clients that hold
//! connections or leave responses unread.
use prometheus::proto::MetricType;

use super::build::{Families, gauge_metric, scalar_metric};
use crate::metrics::region::{MetricsRegion, cell_counter};

/// `max_connections` per cell, times and seconds at it, and send timeouts.
pub fn limit_families(out: &mut Families, region: &MetricsRegion, cells: usize) {
    let (mut max, mut reached, mut secs, mut send) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let now = crate::sys::monotonic_ns();
    for i in 0..cells {
        let c = region.cell(i);
        let cell = i.to_string();
        let cell = [("cell", cell.as_str())];
        if c.get(cell_counter::CONNECTIONS_MAX) > 0 {
            max.push(gauge_metric(
                &cell,
                c.get(cell_counter::CONNECTIONS_MAX) as f64,
            ));
        }
        reached.push(scalar_metric(
            &cell,
            c.get(cell_counter::CONNECTION_LIMIT_REACHED) as f64,
        ));
        // A stop still going on counts up to now, so the counter moves while a cell is full.
        let since = c.get(cell_counter::CONNECTION_LIMIT_SINCE_NS);
        let ongoing = if since > 0 {
            now.saturating_sub(since)
        } else {
            0
        };
        let ns = c.get(cell_counter::CONNECTION_LIMIT_NS) + ongoing;
        secs.push(scalar_metric(&cell, ns as f64 / 1e9));
        send.push(scalar_metric(
            &cell,
            c.get(cell_counter::SEND_TIMEOUTS) as f64,
        ));
    }
    use MetricType::{COUNTER, GAUGE};
    out.add(
        "portico_connections_max",
        "Open connections the cell allows (max_connections); at the limit it stops accepting.",
        GAUGE,
        max,
    );
    out.add(
        "portico_connection_limit_reached_total",
        "Times the cell reached max_connections and stopped accepting.",
        COUNTER,
        reached,
    );
    out.add(
        "portico_connection_limit_seconds_total",
        "Seconds the cell spent at max_connections, not accepting.",
        COUNTER,
        secs,
    );
    out.add(
        "portico_send_timeouts_total",
        "Connections closed because the client took no response bytes for send_timeout.",
        COUNTER,
        send,
    );
}
