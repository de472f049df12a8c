//! `/metrics` exposition: Prometheus text 0.0.4 by default, OpenMetrics 1.0 when the scraper's
//! Accept header prefers it. The families are gathered once (`prometheus` protobuf types) and
//! handed to each crate's own encoder: `prometheus`'s TextEncoder, `prometheus-client`'s
//! OpenMetrics text encoder (through a collector that replays the families).

use prometheus::proto::{MetricFamily, MetricType as ProtoType};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

/// The exposition format of one scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// Picks the format from an Accept header: OpenMetrics when it is offered with a q-value
    /// at least that of `text/plain` (Prometheus sends
    /// `application/openmetrics-text;version=1.0.0,...,text/plain;version=0.0.4;q=0.5`).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let (mut om, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut version = None;
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "q" => q = v.trim().parse().unwrap_or(0.0),
                        "version" => version = Some(v.trim().to_owned()),
                        _ => {}
                    }
                }
            }
            match media.as_str() {
                // 0.0.1 and 1.0.0 share the text syntax this encoder writes.
                "application/openmetrics-text"
                    if version
                        .as_deref()
                        .is_none_or(|v| v == "1.0.0" || v == "0.0.1") =>
                {
                    om = om.max(q);
                }
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Encodes `families` (sorted by name) in `format`.
pub fn encode(families: Vec<MetricFamily>, format: Format) -> anyhow::Result<String> {
    match format {
        Format::Prometheus => {
            use prometheus::Encoder as _;
            let mut out = Vec::with_capacity(16384);
            prometheus::TextEncoder::new().encode(&families, &mut out)?;
            Ok(String::from_utf8(out)?)
        }
        Format::OpenMetrics => {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(Replay(families)));
            let mut out = String::with_capacity(16384);
            prometheus_client::encoding::text::encode(&mut out, &registry)
                .map_err(|_| anyhow::anyhow!("OpenMetrics encoding failed"))?;
            Ok(out)
        }
    }
}

/// Already gathered families, replayed to prometheus-client's encoder.
#[derive(Debug)]
struct Replay(Vec<MetricFamily>);

type Labels<'a> = Vec<(&'a str, &'a str)>;
type NoExemplar<'a> = prometheus_client::metrics::exemplar::Exemplar<Labels<'a>, f64>;

impl prometheus_client::collector::Collector for Replay {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let name = f.name();
            let help = f.help();
            let kind = f.get_field_type();
            // OpenMetrics names the family without the sample suffix the encoder adds:
            // `_total` for counters, `_info` for an info (a gauge named *_info, always 1).
            let is_info = kind == ProtoType::GAUGE
                && name.ends_with("_info")
                && f.get_metric()
                    .iter()
                    .all(|m| m.get_gauge().get_value() == 1.0);
            let (family, ty) = match kind {
                ProtoType::COUNTER => (
                    name.strip_suffix("_total").unwrap_or(name),
                    MetricType::Counter,
                ),
                ProtoType::GAUGE if is_info => (&name[..name.len() - 5], MetricType::Info),
                ProtoType::GAUGE => (name, MetricType::Gauge),
                ProtoType::HISTOGRAM => (name, MetricType::Histogram),
                // Portico exports neither (and prometheus-client has no summary type).
                ProtoType::UNTYPED | ProtoType::SUMMARY => return Err(std::fmt::Error),
            };
            let mut metric = encoder.encode_descriptor(family, help, None, ty)?;
            for m in f.get_metric() {
                let labels: Labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if is_info {
                    // An info's labels are its value.
                    metric.encode_info(&labels)?;
                    continue;
                }
                if labels.is_empty() {
                    sample(&mut metric, m, kind)?;
                } else {
                    sample(&mut metric.encode_family(&labels)?, m, kind)?;
                }
            }
        }
        Ok(())
    }
}

/// One counter, gauge or histogram sample.
fn sample(
    e: &mut prometheus_client::encoding::MetricEncoder,
    m: &prometheus::proto::Metric,
    kind: ProtoType,
) -> Result<(), std::fmt::Error> {
    match kind {
        ProtoType::COUNTER => {
            let v = m.get_counter().get_value();
            // Whole counts print as integers, as in the 0.0.4 text.
            if v.fract() == 0.0 && (0.0..9.0e15).contains(&v) {
                e.encode_counter::<Labels, u64, f64>(&(v as u64), None)
            } else {
                e.encode_counter::<Labels, f64, f64>(&v, None)
            }
        }
        ProtoType::GAUGE => e.encode_gauge(&m.get_gauge().get_value()),
        ProtoType::HISTOGRAM => {
            let h = m.get_histogram();
            // The protobuf buckets are cumulative and stop before +Inf; the encoder takes
            // per-bucket counts and wants +Inf last.
            let mut buckets = Vec::with_capacity(h.get_bucket().len() + 1);
            let mut below = 0;
            for b in h.get_bucket() {
                let c = b.cumulative_count();
                buckets.push((b.upper_bound(), c.saturating_sub(below)));
                below = c;
            }
            if buckets.last().is_none_or(|(ub, _)| *ub != f64::INFINITY) {
                buckets.push((f64::INFINITY, h.get_sample_count().saturating_sub(below)));
            }
            e.encode_histogram::<Labels>(
                h.get_sample_sum(),
                h.get_sample_count(),
                &buckets,
                None::<&std::collections::HashMap<usize, NoExemplar>>,
            )
        }
        // Refused by the caller.
        ProtoType::UNTYPED | ProtoType::SUMMARY => Err(std::fmt::Error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

    fn families() -> Vec<MetricFamily> {
        let reg = Registry::new();
        let c =
            IntCounterVec::new(Opts::new("demo_requests_total", "Requests."), &["route"]).unwrap();
        c.with_label_values(&["/a\"b"]).inc_by(3);
        let info = IntGaugeVec::new(Opts::new("demo_build_info", "Build."), &["version"]).unwrap();
        info.with_label_values(&["1.2"]).set(1);
        let h = Histogram::with_opts(
            HistogramOpts::new("demo_duration_seconds", "Time.").buckets(vec![0.1, 1.0]),
        )
        .unwrap();
        for v in [0.05, 0.5, 0.7, 5.0] {
            h.observe(v);
        }
        reg.register(Box::new(c)).unwrap();
        reg.register(Box::new(info)).unwrap();
        reg.register(Box::new(h)).unwrap();
        reg.gather()
    }

    #[test]
    fn accept_header_picks_the_format() {
        use Format::*;
        let prometheus_3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        let prometheus_2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, want) in [
            (None, Prometheus),
            (Some("*/*"), Prometheus),
            (Some("text/plain"), Prometheus),
            (Some(prometheus_2), OpenMetrics),
            (Some(prometheus_3), OpenMetrics),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("application/openmetrics-text;q=0.2,text/plain"),
                Prometheus,
            ),
            (
                Some("application/openmetrics-text;version=2.0.0"),
                Prometheus,
            ),
            (Some("application/openmetrics-text;q=0"), Prometheus),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn openmetrics_names_families_without_sample_suffixes_and_ends_with_eof() {
        let text = encode(families(), Format::OpenMetrics).unwrap();
        for want in [
            "# TYPE demo_requests counter\n",
            "demo_requests_total{route=\"/a\\\"b\"} 3",
            "# TYPE demo_build info\n",
            "demo_build_info{version=\"1.2\"} 1\n",
            "# TYPE demo_duration_seconds histogram\n",
            "demo_duration_seconds_bucket{le=\"0.1\"} 1\n",
            "demo_duration_seconds_bucket{le=\"1.0\"} 3\n",
            "demo_duration_seconds_bucket{le=\"+Inf\"} 4\n",
            "demo_duration_seconds_count 4\n",
        ] {
            assert!(text.contains(want), "{want:?} missing:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // The 0.0.4 text keeps the full names and has no EOF marker.
        let text = encode(families(), Format::Prometheus).unwrap();
        assert!(
            text.contains("# TYPE demo_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("demo_duration_seconds_bucket{le=\"+Inf\"} 4"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
}
