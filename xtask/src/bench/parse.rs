//! What the load generators print, read into one shape: oha's JSON, the project's own tools
//! (`ws-load`, `tls-load`) and h2load's summary.
use std::collections::BTreeMap;

use anyhow::Context as _;

use super::results::Percentile;

pub(super) struct Parsed {
    /// Successful requests (2xx and 3xx) or echoed messages.
    pub count: f64,
    pub errors: f64,
    /// The generator's own measured duration, when it reports one.
    pub secs: Option<f64>,
    pub latency_ms: Vec<Percentile>,
}

pub(super) fn parse_oha(text: &str) -> anyhow::Result<Parsed> {
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("oha printed no JSON:\n{text}"))?;
    let mut count = 0.0;
    let mut errors = 0.0;
    if let Some(codes) = v["statusCodeDistribution"].as_object() {
        for (code, n) in codes {
            let n = n.as_f64().unwrap_or(0.0);
            if code.starts_with('2') || code.starts_with('3') {
                count += n;
            } else {
                errors += n;
            }
        }
    }
    if let Some(errs) = v["errorDistribution"].as_object() {
        errors += errs
            .values()
            .filter_map(serde_json::Value::as_f64)
            .sum::<f64>();
    }
    let latency_ms = v["latencyPercentiles"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, s)| {
            Some(Percentile {
                p: k.strip_prefix('p')?.parse().ok()?,
                ms: s.as_f64()? * 1e3,
            })
        })
        .collect::<Vec<_>>();
    Ok(Parsed {
        count,
        errors,
        secs: v["summary"]["total"].as_f64().filter(|s| *s > 0.0),
        latency_ms: sorted(latency_ms),
    })
}

/// The output of the project's own load tools (`ws-load`, `tls-load`): `<unit>: N`,
/// `<unit>/s: R`, optionally `errors: E`, and `pXX_us` latencies.
pub(super) fn parse_own(text: &str, unit: &str) -> anyhow::Result<Parsed> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    let count = field(unit).with_context(|| format!("no {unit} count in the output:\n{text}"))?;
    let rate = field(&format!("{unit}/s")).with_context(|| format!("no {unit}/s in the output"))?;
    let latency_ms = ["50", "90", "99", "99.9", "99.99"]
        .iter()
        .filter_map(|p| {
            Some(Percentile {
                p: p.parse().ok()?,
                ms: field(&format!("p{p}_us"))? / 1e3,
            })
        })
        .collect();
    Ok(Parsed {
        count,
        errors: field("errors").unwrap_or(0.0),
        secs: (rate > 0.0).then(|| count / rate),
        latency_ms: sorted(latency_ms),
    })
}

/// h2load's summary: `finished in 5.00s, 1234.5 req/s, ...` and `requests: N total, N started,
/// N done, N succeeded, N failed, N errored, N timeout`. It prints no percentiles.
pub(super) fn parse_h2load(text: &str) -> anyhow::Result<Parsed> {
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .with_context(|| format!("no {prefix:?} line in h2load's output:\n{text}"))
    };
    let secs = line("finished in ")?
        .split(',')
        .next()
        .and_then(|s| s.trim().strip_suffix('s')?.parse::<f64>().ok())
        .context("h2load's duration")?;
    let mut counts = BTreeMap::new();
    for part in line("requests: ")?.split(',') {
        let mut words = part.split_whitespace();
        if let (Some(n), Some(what)) = (words.next(), words.next()) {
            counts.insert(what, n.parse::<f64>().context("an h2load count")?);
        }
    }
    let n = |what: &str| counts.get(what).copied().unwrap_or(0.0);
    Ok(Parsed {
        count: n("succeeded"),
        errors: n("failed") + n("errored") + n("timeout"),
        secs: Some(secs).filter(|s| *s > 0.0),
        latency_ms: Vec::new(),
    })
}

fn sorted(mut v: Vec<Percentile>) -> Vec<Percentile> {
    v.sort_by(|a, b| a.p.total_cmp(&b.p));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oha_json_counts_successes_errors_and_percentiles() {
        let p = parse_oha(
            r#"{"summary":{"total":2.0},"latencyPercentiles":{"p50":0.001,"p99.9":0.004},
               "statusCodeDistribution":{"200":90,"503":4},"errorDistribution":{"reset":6}}"#,
        )
        .unwrap();
        assert_eq!((p.count, p.errors, p.secs), (90.0, 10.0, Some(2.0)));
        assert_eq!(p.latency_ms.len(), 2);
        assert_eq!(p.latency_ms[1].p, 99.9);
        assert!((p.latency_ms[1].ms - 4.0).abs() < 1e-9);
    }

    #[test]
    fn ws_load_output_parses() {
        let p = parse_own(
            "messages: 500\nmessages/s: 250\np50_us: 100\np99.9_us: 900\n",
            "messages",
        )
        .unwrap();
        assert_eq!((p.count, p.secs, p.errors), (500.0, Some(2.0), 0.0));
        assert_eq!(p.latency_ms.len(), 2);
    }

    #[test]
    fn h2load_summary_parses() {
        let text = "finished in 5.00s, 20000.00 req/s, 21.50MB/s\n\
            requests: 100010 total, 100020 started, 100010 done, 100000 succeeded, 10 failed, 0 errored, 0 timeout\n\
            status codes: 100000 2xx, 0 3xx, 10 4xx, 0 5xx\n";
        let p = parse_h2load(text).unwrap();
        assert_eq!((p.count, p.errors, p.secs), (100000.0, 10.0, Some(5.0)));
        assert!(parse_h2load("nothing").is_err());
    }

    #[test]
    fn tls_load_output_parses_with_its_errors() {
        let p = parse_own(
            "requests: 300\nrequests/s: 100\nerrors: 2\np50_us: 800\n",
            "requests",
        )
        .unwrap();
        assert_eq!((p.count, p.secs, p.errors), (300.0, Some(3.0), 2.0));
        assert!(parse_own("messages: 3\n", "requests").is_err());
    }
}
