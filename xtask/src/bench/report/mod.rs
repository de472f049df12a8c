//! `report.html`: one self-contained page per run (no script, no external file): the targets
//! with met / not met, then per family its setup, grouped bars of rate and CPU per request,
//! latency percentile curves and the table of every median with its spread.

mod charts;

use std::fmt::Write as _;

use super::results::{Family, Results, Scenario};
use super::row::{extras, figures};

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;max-width:1200px;color:#222}\
table{border-collapse:collapse;margin:0.6em 0;font-size:13px}\
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}\
td:first-child,td:nth-child(2),th,.targets td:nth-child(3){text-align:left}\
.met{background:#d8f5d0}.notmet{background:#f8d6d6}.na{background:#eee}\
.charts{display:flex;flex-wrap:wrap;gap:8px}.note{color:#555;font-size:13px}\
code{background:#f4f4f4;padding:1px 3px}";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The whole page.
pub fn html(r: &Results) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Portico bench {}</title>\
         <style>{STYLE}</style></head><body>\n<h1>Portico bench report</h1>\n\
         <p>Started {} (UTC) with <code>{}</code><br>Machine: {}</p>\n",
        esc(&r.started),
        esc(&r.started),
        esc(&r.command),
        esc(&r.machine.describe()),
    );
    targets(&mut h, r);
    for f in &r.families {
        family(&mut h, f);
    }
    h.push_str(
        "<p class=\"note\">Medians over interleaved rounds; ranges are min-max. CPU per request \
         is utime + stime of all the server's processes over the measured window (from /proc) \
         divided by the successful requests; latency comes from the load generator (oha or \
         ws-load) without coordinated-omission correction. When the load generator is near \
         100% busy it set the pace: judge by CPU per request then.</p>\n</body></html>\n",
    );
    h
}

fn targets(h: &mut String, r: &Results) {
    if r.targets.is_empty() {
        return;
    }
    h.push_str(
        "<h2>Targets</h2>\n<table class=\"targets\"><tr><th>family</th><th>scenario</th><th>target</th>\
         <th>req/s ratio</th><th>CPU/req ratio</th><th>p99 ms portico / peer</th><th>verdict</th>\
         <th>from</th></tr>\n",
    );
    for v in &r.targets {
        let (class, word) = match v.met {
            Some(true) => ("met", "met"),
            Some(false) => ("notmet", "not met"),
            None => ("na", "not measured"),
        };
        let x = |o: Option<f64>| o.map_or("-".into(), |v| format!("{v:.2}x"));
        let _ = writeln!(
            h,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{word}</td><td>{}</td></tr>",
            esc(&v.family),
            esc(&v.label),
            esc(&v.want),
            x(v.ratio),
            x(v.cpu_ratio),
            v.p99_ms
                .map_or("-".into(), |(a, b)| format!("{a:.2} / {b:.2}")),
            esc(&v.source),
        );
    }
    h.push_str("</table>\n");
}

fn family(h: &mut String, f: &Family) {
    let _ = writeln!(h, "<h2>{}</h2>\n<p>{}</p>", esc(&f.family), esc(&f.setup));
    h.push_str("<div class=\"charts\">\n");
    for sc in &f.scenarios {
        chart(h, charts::scenario_bars(f, sc, &panels(sc)));
    }
    h.push_str("</div>\n<h3>Latency percentiles</h3>\n<div class=\"charts\">\n");
    for sc in &f.scenarios {
        chart(h, charts::latency_curves(f, sc));
    }
    h.push_str("</div>\n");
    table(h, f);
    for n in &f.notes {
        let _ = writeln!(h, "<p class=\"note\">{}</p>", esc(n));
    }
}

/// What a scenario's bar chart shows: rate, CPU and peak RSS per request or message; for the
/// idle connections of `bench idle`, the bytes each costs first.
fn panels(sc: &Scenario) -> [charts::Panel; 3] {
    match sc.unit.as_str() {
        "msg" => [
            ("msg/s", |r| r.rate),
            ("server CPU µs/msg", |r| r.cpu_us),
            ("peak RSS MiB", |r| r.peak_rss_kib / 1024.0),
        ],
        "conn" => [
            ("bytes per idle connection", |r| {
                r.extra
                    .get(super::idle::PER_CONN)
                    .copied()
                    .unwrap_or(f64::NAN)
            }),
            ("connections opened/s", |r| r.rate),
            ("server CPU µs/connection", |r| r.cpu_us),
        ],
        _ => [
            ("req/s", |r| r.rate),
            ("server CPU µs/req", |r| r.cpu_us),
            ("peak RSS MiB", |r| r.peak_rss_kib / 1024.0),
        ],
    }
}

/// Every scenario's bar chart as its own SVG file, `FAMILY-SCENARIO.svg`, for pages that
/// cannot inline one (the README).
pub fn chart_files(r: &Results) -> Vec<(String, String)> {
    r.families
        .iter()
        .flat_map(|f| f.scenarios.iter().map(move |sc| (f, sc)))
        .filter_map(|(f, sc)| {
            let svg = charts::scenario_bars(f, sc, &panels(sc)).ok()?;
            Some((format!("{}-{}.svg", f.family, sc.id), svg))
        })
        .collect()
}

/// An inlined chart, or the reason it could not be drawn.
fn chart(h: &mut String, svg: anyhow::Result<String>) {
    match svg {
        Ok(svg) => {
            let _ = writeln!(h, "<div>{svg}</div>");
        }
        Err(e) => {
            let _ = writeln!(
                h,
                "<p class=\"note\">chart not drawn: {}</p>",
                esc(&format!("{e:#}"))
            );
        }
    }
}

fn table(h: &mut String, f: &Family) {
    h.push_str(
        "<table><tr><th>scenario</th><th>server</th><th>rate /s</th><th>min-max</th>\
         <th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>errors</th><th>CPU µs/req</th>\
         <th>min-max</th><th>server busy</th><th>load busy</th><th>peak RSS MiB</th>\
         <th>portico / server</th></tr>\n",
    );
    for sc in &f.scenarios {
        rows(h, sc);
    }
    h.push_str("</table>\n");
}

fn rows(h: &mut String, sc: &Scenario) {
    for s in &sc.servers {
        let mut name = esc(&s.server);
        for (k, x) in extras(s) {
            let _ = write!(name, " ({} {x:.2})", esc(&k));
        }
        if let Some(f) = &s.failed {
            let _ = write!(name, " <span class=\"note\">(failed: {})</span>", esc(f));
        }
        let Some(f) = figures(sc, s) else {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{name}</td><td colspan=\"12\"></td></tr>",
                esc(&sc.label)
            );
            continue;
        };
        let [p50, p99, p999] = &f.latency;
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{name}</td><td>{}</td><td>{}</td><td>{p50}</td><td>{p99}</td>\
             <td>{p999}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td></tr>",
            esc(&sc.label),
            f.rate,
            f.rate_range,
            f.errors,
            f.cpu,
            f.cpu_range,
            f.server_busy,
            f.load_busy,
            f.rss_mib,
            f.ratio,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::results::{Family, Percentile, Round, ServerRuns};

    fn round(rate: f64, cpu: f64) -> Round {
        Round {
            rate,
            cpu_us: cpu,
            latency_ms: [(50.0, 0.5), (99.0, 2.0), (99.9, 4.0)]
                .iter()
                .map(|&(p, ms)| Percentile {
                    p,
                    ms: ms * 1000.0 / rate,
                })
                .collect(),
            peak_rss_kib: 20_000.0,
            ..Round::default()
        }
    }

    /// A run where Portico is ~1.4x nginx on both scenarios, at 0.6x its CPU on 1 KiB (target
    /// met) and 1.2x on 1 MiB (not met); round-tripped through results.json.
    fn sample() -> Results {
        let servers = |scale: f64, cpu: f64| {
            vec![
                ServerRuns {
                    server: "portico".into(),
                    rounds: vec![round(140.0 * scale, cpu), round(150.0 * scale, cpu)],
                    failed: None,
                },
                ServerRuns {
                    server: "nginx".into(),
                    rounds: vec![round(100.0 * scale, 10.0), round(104.0 * scale, 10.5)],
                    failed: Some("round 3: reset <by peer>".into()),
                },
            ]
        };
        let mut r = Results::new("cargo xtask bench static".into());
        r.families.push(Family {
            family: "static".into(),
            setup: "test".into(),
            server_cpus: Some("0".into()),
            load_cpus: Some("1".into()),
            workers: 1,
            secs: 1,
            repeats: 2,
            scenarios: vec![
                Scenario {
                    id: "1k".into(),
                    label: "1 KiB keep-alive".into(),
                    unit: "req".into(),
                    conns: 8,
                    servers: servers(1000.0, 6.0),
                },
                Scenario {
                    id: "1m".into(),
                    label: "1 MiB keep-alive".into(),
                    unit: "req".into(),
                    conns: 8,
                    servers: servers(10.0, 12.0),
                },
            ],
            notes: vec![],
        });
        r.targets = crate::bench::targets::judge(&r);
        let json = serde_json::to_string(&r).unwrap();
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn page_has_charts_targets_and_escaped_failures() {
        let page = html(&sample());
        assert!(!page.contains("chart not drawn"), "{page}");
        // Per scenario: bars (rate, CPU, RSS) and latency curves.
        assert_eq!(page.matches("<svg").count(), 4);
        assert!(page.contains("<tr class=\"met\"><td>static</td><td>1 KiB keep-alive</td>"));
        assert!(page.contains("<tr class=\"notmet\"><td>static</td><td>1 MiB keep-alive</td>"));
        assert!(page.contains("reset &lt;by peer&gt;"));
        assert!(!page.contains("<script"));
    }

    #[test]
    fn each_scenario_has_its_chart_file() {
        let files = chart_files(&sample());
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["static-1k.svg", "static-1m.svg"]);
        assert!(files.iter().all(|(_, svg)| svg.starts_with("<svg")));
    }
}
