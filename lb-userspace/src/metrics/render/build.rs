//! The pieces every family builder uses: metric values with their labels, histograms from the
//! shared buckets, and the list of families that have series.
use std::sync::atomic::Ordering::Relaxed;

use prometheus::proto::{Metric, MetricFamily, MetricType};

use crate::metrics::region::{BOUNDS_NS, HIST_LEN, MetricsRegion};

/// Families with at least one series.
pub struct Families(pub Vec<MetricFamily>);

impl Families {
    pub fn add(&mut self, name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) {
        if !metrics.is_empty() {
            self.0.push(family(name, help, kind, metrics));
        }
    }
}

pub fn gauge_metric(pairs: &[(&str, &str)], v: f64) -> Metric {
    let mut g = prometheus::proto::Gauge::default();
    g.set_value(v);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// Sums one histogram over every cell.
pub fn sum_hist(region: &MetricsRegion, cells: usize, route: usize, at: usize) -> [u64; HIST_LEN] {
    let mut h = [0u64; HIST_LEN];
    for c in 0..cells {
        let r = region.cell(c);
        let r = r.route(route);
        for (k, v) in h.iter_mut().enumerate() {
            *v += r[at + k].load(Relaxed);
        }
    }
    h
}

pub fn labels(pairs: &[(&str, &str)]) -> Vec<prometheus::proto::LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = prometheus::proto::LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

pub fn histogram_metric(pairs: &[(&str, &str)], h: &[u64; HIST_LEN]) -> Metric {
    use prometheus::proto::{Bucket, Histogram, Metric};
    let mut buckets = Vec::with_capacity(BOUNDS_NS.len());
    let mut cumulative = 0;
    for (i, b) in BOUNDS_NS.iter().enumerate() {
        cumulative += h[i];
        let mut bucket = Bucket::default();
        bucket.set_upper_bound(*b as f64 / 1e9);
        bucket.set_cumulative_count(cumulative);
        buckets.push(bucket);
    }
    let mut hist = Histogram::default();
    hist.set_bucket(buckets);
    hist.set_sample_count(h[..HIST_LEN - 1].iter().sum());
    hist.set_sample_sum(h[HIST_LEN - 1] as f64 / 1e9);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_histogram(hist);
    m
}

pub fn scalar_metric(pairs: &[(&str, &str)], v: f64) -> Metric {
    let mut c = prometheus::proto::Counter::default();
    c.set_value(v);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    m
}

pub fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}
