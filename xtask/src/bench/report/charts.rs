//! The report's SVG charts, drawn with plotters' SVG backend into strings for inlining: grouped
//! bars per scenario (rate, CPU per request and peak RSS, one bar per server with a min-max
//! whisker, linear from zero so bar heights compare) and latency percentile curves.

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

/// Compact axis numbers: 1.5k, 2M, 0.25.
fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + ""
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The panels of a scenario's bar chart: title and figure.
pub type Panel = (&'static str, fn(&Round) -> f64);

/// One scenario: a panel per figure (rate, CPU per request, peak RSS), a bar per server from
/// zero to its median with a min-max whisker, the servers in the family's colours.
pub fn scenario_bars(family: &Family, sc: &Scenario, panels: &[Panel]) -> anyhow::Result<String> {
    let names = servers(family);
    let mut svg = String::new();
    {
        let width = 300 * u32::try_from(panels.len()).unwrap_or(3);
        let area = SVGBackend::with_string(&mut svg, (width, 300)).into_drawing_area();
        area.fill(&WHITE)?;
        let (top, body) = area.split_vertically(46);
        let (title, key) = top.split_vertically(24);
        title.titled(&sc.label, ("sans-serif", 16))?;
        legend(&key, &names, sc, width)?;
        let cells = body.split_evenly((1, panels.len()));
        for ((title, figure), cell) in panels.iter().zip(&cells) {
            // (server index, median, min, max)
            let bars: Vec<(usize, f64, f64, f64)> = sc
                .servers
                .iter()
                .filter_map(|s| {
                    let st = s.stat(figure)?;
                    let i = names.iter().position(|n| *n == s.server)?;
                    Some((i, st.median, st.min, st.max))
                })
                .collect();
            let hi = bars.iter().map(|b| b.3).fold(0.0, f64::max);
            let hi = if hi > 0.0 { hi * 1.15 } else { 1.0 };
            let n = sc.servers.len().max(1);
            let mut chart = ChartBuilder::on(cell)
                .caption(*title, ("sans-serif", 13))
                .margin(6)
                .x_label_area_size(8)
                .y_label_area_size(46)
                .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..hi)?;
            let fmt = |y: &f64| human(*y);
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(6)
                .y_label_formatter(&fmt)
                .draw()?;
            for (slot, &(i, med, min, max)) in bars.iter().enumerate() {
                let c = color(&names, &names[i]);
                let x = slot as f64;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.38, 0.0), (x + 0.38, med)],
                    c.filled(),
                )))?;
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(x, min), (x, max)],
                    BLACK.stroke_width(1),
                )))?;
            }
        }
        area.present()?;
    }
    Ok(svg)
}

/// The servers' colours in one centred row under the title, so no key covers a bar.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    names: &[String],
    sc: &Scenario,
    width: u32,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let shown: Vec<&String> = names
        .iter()
        .filter(|n| sc.servers.iter().any(|s| &s.server == *n))
        .collect();
    // Roughly 5.5 px per character at 11 px, a swatch and a gap per entry.
    let entry = |n: &str| 14 + (n.chars().count() as i32 * 11) / 2 + 18;
    let total: i32 = shown.iter().map(|n| entry(n)).sum();
    let mut x = ((width as i32 - total) / 2).max(4);
    for n in shown {
        let c = color(names, n);
        area.draw(&Rectangle::new([(x, 5), (x + 10, 15)], c.filled()))?;
        area.draw(&Text::new(n.clone(), (x + 14, 4), ("sans-serif", 11)))?;
        x += entry(n);
    }
    Ok(())
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
        let yfmt = |y: &f64| human(*y);
        chart
            .configure_mesh()
            .x_labels(labels.len() + 1)
            .x_label_formatter(&fmt)
            .y_labels(10)
            .y_label_formatter(&yfmt)
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
