//! `results.json`: every figure of every round, server and scenario of one `cargo xtask bench`
//! run, with the machine it ran on, so a later run can be compared with it (`--compare`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::process::output;

/// Bumped when a field changes meaning; `--compare` refuses other formats.
pub const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Results {
    pub format: u32,
    /// UTC start time, also the name of the run's directory under target/bench/.
    pub started: String,
    pub command: String,
    pub machine: Machine,
    pub families: Vec<Family>,
    /// The issues' targets, judged on this run (filled in when the run ends).
    #[serde(default)]
    pub targets: Vec<super::targets::Verdict>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Machine {
    pub cpu_model: String,
    /// CPUs this run could use, and online in all.
    pub cpus: usize,
    pub cpus_online: usize,
    pub memory_kib: u64,
    pub kernel: String,
    pub os: String,
    pub commit: String,
    /// Uncommitted changes in the work tree when the run started.
    pub dirty: bool,
}

/// One bench family's run (`static`, `wsgi`, ...).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Family {
    pub family: String,
    /// The setup in words: servers, workers, CPUs, load, durations.
    pub setup: String,
    pub server_cpus: Option<String>,
    pub load_cpus: Option<String>,
    pub workers: usize,
    pub secs: u64,
    pub repeats: usize,
    pub scenarios: Vec<Scenario>,
    /// Servers skipped and other remarks.
    pub notes: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Scenario {
    /// Stable short name: `--compare` and `xtask profile FAMILY/ID` match on it.
    pub id: String,
    pub label: String,
    /// What one counted unit is: "req" or "msg".
    pub unit: String,
    pub conns: usize,
    pub servers: Vec<ServerRuns>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ServerRuns {
    pub server: String,
    pub rounds: Vec<Round>,
    /// Why this server has no (or fewer) rounds: it failed under this load.
    pub failed: Option<String>,
}

/// One measured load run against one server.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Round {
    /// Successful requests (or echoed messages) per second.
    pub rate: f64,
    pub count: f64,
    /// Failed requests: connection errors and non-2xx/3xx answers.
    pub errors: f64,
    pub wall_s: f64,
    /// Latency percentiles from the load generator, no coordinated-omission correction.
    pub latency_ms: Vec<Percentile>,
    /// utime + stime of all the server's processes over the window, per request.
    pub cpu_us: f64,
    /// The part of `cpu_us` spent by the server's first process (a master, where it has one).
    pub root_cpu_us: f64,
    /// Server CPU time over wall time (1.0 = one CPU busy all the time).
    pub server_busy: f64,
    /// The load generator's CPU time over wall time and its CPUs: near 1.0 it set the pace.
    pub load_busy: f64,
    /// Peak of the sampled sum of the server processes' RSS.
    pub peak_rss_kib: f64,
    /// Family-specific figures (e.g. steering's busiest-cell share); JSON has no NaN or
    /// infinity, so such a value is written as null and read back as NaN.
    #[serde(default, deserialize_with = "nan_for_null")]
    pub extra: BTreeMap<String, f64>,
}

fn nan_for_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let m: BTreeMap<String, Option<f64>> = Deserialize::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub struct Percentile {
    pub p: f64,
    pub ms: f64,
}

impl Round {
    /// The latency at percentile `p` (NaN when the generator did not report it).
    pub fn latency(&self, p: f64) -> f64 {
        self.latency_ms
            .iter()
            .find(|x| (x.p - p).abs() < 1e-9)
            .map_or(f64::NAN, |x| x.ms)
    }
}

/// The median of a figure over rounds, with its spread.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        // An even count takes the mean of the middle two: with two rounds, not the larger.
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

#[cfg(test)]
#[test]
fn stat_median_spread_and_nan() {
    let s = Stat::of([3.0, f64::NAN, 1.0, 2.0, 10.0]).unwrap();
    assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
    assert_eq!(Stat::of([4.0, 1.0, 2.0]).unwrap().median, 2.0);
    assert!(Stat::of([f64::NAN]).is_none());
}

impl ServerRuns {
    pub fn stat(&self, f: impl Fn(&Round) -> f64) -> Option<Stat> {
        Stat::of(self.rounds.iter().map(f))
    }
}

impl Scenario {
    pub fn server(&self, name: &str) -> Option<&ServerRuns> {
        self.servers.iter().find(|s| s.server == name)
    }
}

impl Results {
    pub fn new(command: String) -> Self {
        Results {
            format: FORMAT,
            started: timestamp(),
            command,
            machine: Machine::read(),
            families: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// target/bench/<started>/
    pub fn dir(&self, root: &Path) -> PathBuf {
        root.join("target/bench").join(&self.started)
    }

    /// Writes results.json and report.html; returns the directory.
    pub fn write(&mut self, root: &Path) -> anyhow::Result<PathBuf> {
        self.targets = super::targets::judge(self);
        let dir = self.dir(root);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        self.write_report(&dir)?;
        Ok(dir)
    }

    /// `report.html` and `charts/` in `dir`.
    pub fn write_report(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("report.html"), super::report::html(self))?;
        let charts = dir.join("charts");
        std::fs::create_dir_all(&charts)?;
        for (name, svg) in super::report::chart_files(self) {
            std::fs::write(charts.join(name), svg)?;
        }
        Ok(())
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let r: Results = serde_json::from_str(&text)
            .with_context(|| format!("{} is no bench results.json", path.display()))?;
        anyhow::ensure!(
            r.format == FORMAT,
            "{}: results format {} (this xtask reads {FORMAT})",
            path.display(),
            r.format
        );
        Ok(r)
    }
}

/// UTC now as 20261207T113435Z (sortable, no characters a path dislikes).
pub fn timestamp() -> String {
    output(Command::new("date").args(["-u", "+%Y%m%dT%H%M%SZ"]))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("unix{secs}")
        })
}

impl Machine {
    fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once([':', '='])?;
                    (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
                })
                .unwrap_or_default()
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let git = |args: &[&str]| output(Command::new("git").args(args)).unwrap_or_default();
        Machine {
            cpu_model: field(&cpuinfo, "model name"),
            cpus: super::measure::usable_cpus(),
            cpus_online: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            memory_kib: field(&meminfo, "MemTotal")
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0),
            kernel: output(Command::new("uname").arg("-r"))
                .unwrap_or_default()
                .trim()
                .to_string(),
            os: field(&os, "PRETTY_NAME"),
            commit: git(&["rev-parse", "HEAD"]).trim().to_string(),
            dirty: !git(&["status", "--porcelain", "--untracked-files=no"])
                .trim()
                .is_empty(),
        }
    }

    /// One line for tables and the page.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} of {} CPUs usable, {:.0} GiB), {}, kernel {}, commit {}{}",
            self.cpu_model,
            self.cpus,
            self.cpus_online,
            self.memory_kib as f64 / (1 << 20) as f64,
            self.os,
            self.kernel,
            self.commit.get(..12).unwrap_or(&self.commit),
            if self.dirty {
                " (with local changes)"
            } else {
                ""
            }
        )
    }
}
