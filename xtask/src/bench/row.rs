//! One server's row of a scenario, formatted once for the Markdown tables (`runner`) and the
//! HTML report (`report`).
use super::results::{Round, Scenario, ServerRuns};

/// Family-specific figures (e.g. steering's busiest-cell share): name and median.
pub fn extras(s: &ServerRuns) -> Vec<(String, f64)> {
    s.rounds
        .first()
        .map(|r| r.extra.keys())
        .into_iter()
        .flatten()
        .filter_map(|k| {
            let x = s.stat(|r| r.extra.get(k).copied().unwrap_or(f64::NAN))?;
            Some((k.clone(), x.median))
        })
        .collect()
}

/// The figures of a row, formatted: medians, min-max ranges, and the ratio to Portico.
pub struct Figures {
    pub rate: String,
    pub rate_range: String,
    /// p50, p99, p99.9 in ms ("n/a" where the generator printed none, as h2load).
    pub latency: [String; 3],
    pub errors: String,
    pub cpu: String,
    pub cpu_range: String,
    pub server_busy: String,
    pub load_busy: String,
    pub rss_mib: String,
    /// Portico's rate over this server's ("-" without Portico).
    pub ratio: String,
}

/// `s`'s figures in `sc`; None when it has no round (it failed).
pub fn figures(sc: &Scenario, s: &ServerRuns) -> Option<Figures> {
    let (rate, cpu) = (s.stat(|r| r.rate)?, s.stat(|r| r.cpu_us)?);
    let ours = sc
        .server("portico")
        .or_else(|| sc.servers.first())
        .and_then(|s| s.stat(|r| r.rate));
    let med = |f: &dyn Fn(&Round) -> f64| s.stat(f).map_or(f64::NAN, |x| x.median);
    let ms = |p: f64| {
        let x = med(&|r: &Round| r.latency(p));
        if x.is_nan() {
            "n/a".to_string()
        } else {
            format!("{x:.2}")
        }
    };
    Some(Figures {
        rate: format!("{:.0}", rate.median),
        rate_range: format!("{:.0}-{:.0}", rate.min, rate.max),
        latency: [ms(50.0), ms(99.0), ms(99.9)],
        errors: format!("{:.0}", med(&|r: &Round| r.errors)),
        cpu: format!("{:.1}", cpu.median),
        cpu_range: format!("{:.1}-{:.1}", cpu.min, cpu.max),
        server_busy: format!("{:.0}%", med(&|r: &Round| r.server_busy) * 100.0),
        load_busy: format!("{:.0}%", med(&|r: &Round| r.load_busy) * 100.0),
        rss_mib: format!("{:.1}", med(&|r: &Round| r.peak_rss_kib) / 1024.0),
        ratio: ours.map_or("-".into(), |o| format!("{:.2}", o.median / rate.median)),
    })
}
