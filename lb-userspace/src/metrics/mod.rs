//! Per-cell counters in a memfd the master creates and every cell maps: a scrape reads fresh
//! values without asking the cells, and a crashed cell loses nothing it already counted.
pub mod exposition;
mod region;
mod render;
mod snapshot;

pub use region::{
    BOUNDS_NS, CLASSES, CellStats, HIST_LEN, MAX_ROUTES, MAX_UPSTREAM_SERVERS, METHODS,
    MetricsRegion, ROUTE_BLOCKS, TLS_FAILURES, TLS_SUITES, cell_counter, http2_error_index,
    method_index, route_counter, upstream_counter,
};
pub use render::{CertExpiry, Names, render};
pub use snapshot::{EbpfSnapshot, ProcSnapshot, SteeringSnapshot, XdpSnapshot, process_usage};
