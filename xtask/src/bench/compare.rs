//! `cargo xtask bench --compare PREVIOUS.json`: this run's medians over a previous run's, for
//! each scenario and server both have. A regression is a change beyond both runs' measured
//! spread (the min-max ranges do not overlap) and beyond a tolerance: lower rate, or higher
//! CPU per request.

use std::fmt::Write as _;

use super::results::{Results, ServerRuns, Stat};

/// What one figure did between two runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Same,
    Better,
    Worse,
}

/// `higher_is_better`: rate yes, CPU per request no.
pub fn change(old: Stat, new: Stat, higher_is_better: bool, tolerance: f64) -> Change {
    let ratio = new.median / old.median;
    let up = new.min > old.max && ratio > 1.0 + tolerance;
    let down = new.max < old.min && ratio < 1.0 - tolerance;
    match (up, down, higher_is_better) {
        (true, _, true) | (_, true, false) => Change::Better,
        (true, _, false) | (_, true, true) => Change::Worse,
        _ => Change::Same,
    }
}

/// The comparison table and the number of regressions in it.
pub fn compare(old: &Results, new: &Results, tolerance: f64) -> (String, usize) {
    let mut out = format!(
        "Compared with {} (commit {}) — this run {} (commit {}); tolerance {:.0}% beyond the \
         min-max spread of both runs\n",
        old.started,
        short(&old.machine.commit),
        new.started,
        short(&new.machine.commit),
        tolerance * 100.0
    );
    let (om, nm) = (&old.machine, &new.machine);
    if om.cpu_model != nm.cpu_model || om.kernel != nm.kernel || om.cpus != nm.cpus {
        let _ = writeln!(
            out,
            "warning: different machines: {} vs {}",
            om.describe(),
            nm.describe()
        );
    }
    out.push_str(
        "\n| family / scenario | server | rate /s before -> now | ratio | CPU µs/req before -> now | ratio | verdict |\n\
         |---|---|---:|---:|---:|---:|---|\n",
    );
    let mut regressions = 0;
    let mut matched = 0;
    for f in &new.families {
        for sc in &f.scenarios {
            let Some(old_sc) = old
                .families
                .iter()
                .filter(|o| o.family == f.family)
                .flat_map(|o| &o.scenarios)
                .find(|o| o.id == sc.id)
            else {
                continue;
            };
            for s in &sc.servers {
                let Some(o) = old_sc.server(&s.server) else {
                    continue;
                };
                let Some(line) = row(o, s, tolerance) else {
                    continue;
                };
                matched += 1;
                if line.1 {
                    regressions += 1;
                }
                let _ = writeln!(out, "| {}/{} | {} |{}", f.family, sc.id, s.server, line.0);
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{matched} scenario/server pairs compared, {regressions} regression(s)"
    );
    (out, regressions)
}

/// The cells after the server column, and whether it regressed.
fn row(old: &ServerRuns, new: &ServerRuns, tolerance: f64) -> Option<(String, bool)> {
    let (or, nr) = (old.stat(|r| r.rate)?, new.stat(|r| r.rate)?);
    let cpu = old.stat(|r| r.cpu_us).zip(new.stat(|r| r.cpu_us));
    let rate_change = change(or, nr, true, tolerance);
    let cpu_change = cpu.map_or(Change::Same, |(o, n)| change(o, n, false, tolerance));
    let mut verdict: Vec<&str> = Vec::new();
    match rate_change {
        Change::Worse => verdict.push("REGRESSION: rate"),
        Change::Better => verdict.push("faster"),
        Change::Same => {}
    }
    match cpu_change {
        Change::Worse => verdict.push("REGRESSION: CPU/req"),
        Change::Better => verdict.push("cheaper"),
        Change::Same => {}
    }
    if verdict.is_empty() {
        verdict.push("within spread");
    }
    let cpu_cells = cpu.map_or(" - | - |".to_string(), |(o, n)| {
        format!(
            " {:.1} ({:.1}-{:.1}) -> {:.1} ({:.1}-{:.1}) | {:.2} |",
            o.median,
            o.min,
            o.max,
            n.median,
            n.min,
            n.max,
            n.median / o.median
        )
    });
    Some((
        format!(
            " {:.0} ({:.0}-{:.0}) -> {:.0} ({:.0}-{:.0}) | {:.2} |{cpu_cells} {} |",
            or.median,
            or.min,
            or.max,
            nr.median,
            nr.min,
            nr.max,
            nr.median / or.median,
            verdict.join(", ")
        ),
        rate_change == Change::Worse || cpu_change == Change::Worse,
    ))
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(median: f64, min: f64, max: f64) -> Stat {
        Stat { median, min, max }
    }

    #[test]
    fn overlap_is_no_change() {
        assert_eq!(
            change(st(100.0, 95.0, 105.0), st(97.0, 90.0, 99.0), true, 0.02),
            Change::Same
        );
    }

    #[test]
    fn lower_rate_beyond_spread_regresses() {
        assert_eq!(
            change(st(100.0, 98.0, 102.0), st(80.0, 78.0, 82.0), true, 0.02),
            Change::Worse
        );
        assert_eq!(
            change(st(100.0, 98.0, 102.0), st(120.0, 118.0, 122.0), true, 0.02),
            Change::Better
        );
    }

    #[test]
    fn higher_cpu_regresses_and_tolerance_applies() {
        assert_eq!(
            change(st(10.0, 9.9, 10.1), st(12.0, 11.9, 12.1), false, 0.02),
            Change::Worse
        );
        // Beyond the (tiny) spread but within the tolerance.
        assert_eq!(
            change(st(10.0, 10.0, 10.0), st(10.1, 10.1, 10.1), false, 0.02),
            Change::Same
        );
    }
}
