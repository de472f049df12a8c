//! The soak's chart: resident memory (MiB) and open descriptors of the master and the cells
//! against time, two panels in one SVG (plotters' SVG backend: no fonts or image crates).
use std::path::Path;

use plotters::prelude::*;

use super::Sample;

pub fn draw(path: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(360);
    let t_max = samples.last().map_or(1.0, |s| s.t_secs).max(1.0);
    let mib = |kib: u64| kib as f64 / 1024.0;
    panel(
        &top,
        "resident memory (MiB)",
        t_max,
        &[
            (
                "master",
                samples
                    .iter()
                    .map(|s| (s.t_secs, mib(s.master_rss_kib)))
                    .collect(),
            ),
            (
                "cells",
                samples
                    .iter()
                    .map(|s| (s.t_secs, mib(s.cells_rss_kib)))
                    .collect(),
            ),
        ],
    )?;
    panel(
        &bottom,
        "open descriptors",
        t_max,
        &[
            (
                "master",
                samples
                    .iter()
                    .map(|s| (s.t_secs, s.master_fds as f64))
                    .collect(),
            ),
            (
                "cells",
                samples
                    .iter()
                    .map(|s| (s.t_secs, s.cells_fds as f64))
                    .collect(),
            ),
        ],
    )?;
    root.present()?;
    Ok(())
}

type Series<'a> = (&'a str, Vec<(f64, f64)>);

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    t_max: f64,
    series: &[Series<'_>],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let y_max = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
