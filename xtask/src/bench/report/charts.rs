//! The report's SVG charts, drawn with plotters' SVG backend into strings for inlining: grouped
//! bars per family (a figure per scenario, one bar per server, min-max whiskers) and latency
//! percentile curves per scenario.

use plotters::prelude::*;

use crate::bench::results::{Family, Round, Scenario};

/// Server colours, Portico's first; the same server keeps its colour across a family's charts.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Every server of a family in first-seen order (Portico first where it runs).
pub fn servers(family: &Family) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for s in family.scenarios.iter().flat_map(|sc| &sc.servers) {
        if !names.contains(&s.server) {
            names.push(s.server.clone());
        }
    }
    names
}

fn color(names: &[String], name: &str) -> RGBColor {
    let i = names.iter().position(|n| n == name).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

/// The label of a group at integer positions; nothing between them.
fn at_integer(labels: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() > 0.01 || i < 0.0 {
        return String::new();
    }
    labels.get(i as usize).cloned().unwrap_or_default()
}

/// Grouped bars of `figure` (median, min-max whisker) per scenario on a log axis.
pub fn grouped_bars(
    family: &Family,
    title: &str,
    y_desc: &str,
    figure: fn(&Round) -> f64,
) -> anyhow::Result<String> {
    let names = servers(family);
    let labels: Vec<String> = family.scenarios.iter().map(|s| s.label.clone()).collect();
    // (group, server index, median, min, max)
    let mut bars = Vec::new();
    for (g, sc) in family.scenarios.iter().enumerate() {
        for s in &sc.servers {
            if let Some(st) = s.stat(figure).filter(|st| st.median > 0.0) {
                let i = names.iter().position(|n| *n == s.server).unwrap_or(0);
                bars.push((g, i, st.median, st.min.max(st.median / 1e3), st.max));
            }
        }
    }
    let hi = bars.iter().map(|b| b.4).fold(0.0, f64::max);
    let lo = bars.iter().map(|b| b.3).fold(f64::INFINITY, f64::min);
    let (lo, hi) = if bars.is_empty() {
        (1.0, 10.0)
    } else {
        (lo / 2.0, hi * 2.0)
    };
    let width = 120 + 60 * u32::try_from(labels.len().max(2) * names.len().max(1)).unwrap_or(20);
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (width.clamp(520, 1100), 380))
            .into_drawing_area();
        area.fill(&WHITE)?;
        let n = labels.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..n - 0.5, (lo..hi).log_scale())?;
        let fmt = |x: &f64| at_integer(&labels, *x);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len() + 1)
            .x_label_formatter(&fmt)
            .y_desc(y_desc)
            .draw()?;
        let slot = 0.8 / names.len().max(1) as f64;
        for (i, name) in names.iter().enumerate() {
            let c = color(&names, name);
            let mine: Vec<_> = bars.iter().filter(|b| b.1 == i).copied().collect();
            let left = |g: usize| g as f64 - 0.4 + slot * i as f64;
            chart
                .draw_series(mine.iter().map(|&(g, _, med, _, _)| {
                    Rectangle::new([(left(g), lo), (left(g) + slot * 0.9, med)], c.filled())
                }))?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
            chart.draw_series(mine.iter().map(|&(g, _, _, min, max)| {
                let mid = left(g) + slot * 0.45;
                PathElement::new(vec![(mid, min), (mid, max)], BLACK.stroke_width(1))
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        area.present()?;
    }
    Ok(svg)
}

/// Latency at each percentile every server's rounds report (medians over rounds), log axis.
pub fn latency_curves(family: &Family, sc: &Scenario) -> anyhow::Result<String> {
    let names = servers(family);
    let mut ps: Vec<f64> = sc
        .servers
        .iter()
        .flat_map(|s| &s.rounds)
        .flat_map(|r| r.latency_ms.iter().map(|x| x.p))
        .filter(|p| *p >= 50.0)
        .collect();
    ps.sort_by(f64::total_cmp);
    ps.dedup();
    let labels: Vec<String> = ps.iter().map(|p| format!("p{p}")).collect();
    let lines: Vec<(String, Vec<(f64, f64)>)> = sc
        .servers
        .iter()
        .map(|s| {
            let pts = ps
                .iter()
                .enumerate()
                .filter_map(|(i, &p)| {
                    let m = s.stat(|r| r.latency(p))?.median;
                    (m > 0.0).then_some((i as f64, m))
                })
                .collect();
            (s.server.clone(), pts)
        })
        .collect();
    let all = lines.iter().flat_map(|l| l.1.iter().map(|p| p.1));
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if hi > 0.0 {
        (lo / 1.5, hi * 1.5)
    } else {
        (0.01, 1.0)
    };
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (520, 320)).into_drawing_area();
        area.fill(&WHITE)?;
        let n = labels.len().max(2) as f64;
        let mut chart = ChartBuilder::on(&area)
            .caption(&sc.label, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.2..n - 0.8, (lo..hi).log_scale())?;
        let fmt = |x: &f64| at_integer(&labels, *x);
        chart
            .configure_mesh()
            .x_labels(labels.len() + 1)
            .x_label_formatter(&fmt)
            .y_desc("latency ms")
            .draw()?;
        for (name, pts) in &lines {
            let c = color(&names, name);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], c));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        area.present()?;
    }
    Ok(svg)
}
