//! `cargo xtask fuzz [TARGET] [--time 60]`: cargo-fuzz (installed when missing) runs one or every
//! target of `fuzz/` under libFuzzer on nightly for the given seconds each, then prints each
//! target's executions and any crash file. New inputs go to `fuzz/work/corpus/<target>/` (not
//! kept); the repository's `fuzz/corpus/<target>/` seeds every run and is only read.
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::process::{output, run};
use crate::setup;

/// What one target's run did, from libFuzzer's final statistics.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    executions: u64,
    per_second: u64,
    peak_rss_mb: u64,
    /// The input that made it fail, as libFuzzer wrote it.
    crash: Option<String>,
}

pub fn fuzz(root: &Path, target: Option<&str>, secs: u64) -> anyhow::Result<()> {
    setup::setup(&[])?;
    if output(Command::new("cargo").args(["+nightly", "fuzz", "--version"])).is_none() {
        eprintln!("xtask fuzz: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let all = targets(root)?;
    let chosen: Vec<String> = match target {
        Some(t) if all.iter().any(|a| a == t) => vec![t.to_string()],
        Some(t) => bail!("no fuzz target {t:?} (targets: {})", all.join(", ")),
        None => all,
    };
    // Safe Rust needs no AddressSanitizer; debug assertions catch overflows.
    let flags = ["-s", "none", "--debug-assertions"];
    run(Command::new("cargo")
        .args(["+nightly", "fuzz", "build"])
        .args(flags)
        .current_dir(root))
    .context("building the fuzz targets")?;
    let mut rows = Vec::new();
    for t in &chosen {
        let work = root.join("fuzz/work");
        let corpus = work.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let log_path = work.join(format!("{t}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        eprintln!("xtask fuzz: {t} for {secs} s (log: {})", log_path.display());
        let st = Command::new("cargo")
            .args(["+nightly", "fuzz", "run"])
            .args(flags)
            .arg(t)
            .arg(&corpus)
            .arg(root.join("fuzz/corpus").join(t))
            .args([
                "--",
                &format!("-max_total_time={secs}"),
                "-print_final_stats=1",
                "-timeout=10",
                "-rss_limit_mb=4096",
            ])
            .current_dir(root)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running cargo fuzz run {t}"))?;
        let text = std::fs::read_to_string(&log_path)?;
        let mut stats = parse(&text);
        if !st.success() && stats.crash.is_none() {
            stats.crash = Some(format!("(failed: {st}; see {})", log_path.display()));
        }
        let found = count_files(&corpus);
        rows.push((t.clone(), stats, found));
    }
    println!(
        "{:<18} {:>6} {:>13} {:>9} {:>8} {:>7}  crash",
        "target", "secs", "executions", "exec/s", "corpus", "rss MB"
    );
    let mut crashed = Vec::new();
    for (t, s, found) in &rows {
        println!(
            "{t:<18} {secs:>6} {:>13} {:>9} {found:>8} {:>7}  {}",
            s.executions,
            s.per_second,
            s.peak_rss_mb,
            s.crash.as_deref().unwrap_or("none")
        );
        if s.crash.is_some() {
            crashed.push(t.as_str());
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzzing found failures in {} (reproduce: cargo +nightly fuzz run -s none TARGET FILE)",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// The targets: `fuzz/fuzz_targets/*.rs`, sorted.
fn targets(root: &Path) -> anyhow::Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    out.sort();
    Ok(out)
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.filter(Result::is_ok).count())
}

/// libFuzzer's `stat::` lines (`-print_final_stats=1`) and the path in `Test unit written to`.
fn parse(log: &str) -> Stats {
    let mut s = Stats::default();
    for line in log.lines() {
        let number = |key: &str| {
            line.strip_prefix(key)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(n) = number("stat::number_of_executed_units:") {
            s.executions = n;
        } else if let Some(n) = number("stat::average_exec_per_sec:") {
            s.per_second = n;
        } else if let Some(n) = number("stat::peak_rss_mb:") {
            s.peak_rss_mb = n;
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            s.crash = Some(path.trim().to_string());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_and_the_crash_file_are_read() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 10\nDone 123 runs in 2 second(s)\n\
                   stat::number_of_executed_units: 123456\nstat::average_exec_per_sec:     2057\n\
                   stat::new_units_added:          12\nstat::slowest_unit_time_sec:    0\n\
                   stat::peak_rss_mb:              61\n";
        assert_eq!(
            parse(log),
            Stats {
                executions: 123456,
                per_second: 2057,
                peak_rss_mb: 61,
                crash: None
            }
        );
        let crash = "==1== ERROR: libFuzzer: deadly signal\nartifact_prefix='/r/fuzz/artifacts/range/'; \
                     Test unit written to /r/fuzz/artifacts/range/crash-0a1b\n";
        assert_eq!(
            parse(crash).crash.as_deref(),
            Some("/r/fuzz/artifacts/range/crash-0a1b")
        );
    }
}
