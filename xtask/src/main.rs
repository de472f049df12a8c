//! Project tasks: `setup` (toolchain parts and packages, idempotent), `run` (the demo), `test`
//! (lints and the whole suite), `bench` (Portico against its peers, side by side), `profile`
//! (a flame graph of one bench scenario), `soak` (the mixed load for minutes), `stress`
//! (abusive clients), `fuzz` (the parsers under libFuzzer).
//!
//! This file is the command line only; each task lives in its own module.
#![forbid(unsafe_code)]

mod bench;
mod compile;
mod fuzz;
mod layout;
mod process;
mod run;
mod setup;
mod soak;
mod stress;
mod test;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need (nightly rust-src, bpf-linker, apt packages).
    Setup,
    /// Build everything and serve the demo site on http://127.0.0.1:8080 (admin 127.0.0.1:9090).
    Run {
        /// Extra arguments for `portico serve`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the layout check, clippy and the whole test suite (unit and end-to-end), then
    /// print the counts.
    Test,
    /// Fuzz the parsers (cargo-fuzz on nightly, installed when missing): one target or all,
    /// for `--time` seconds each; prints executions and any crash file.
    Fuzz {
        /// One target of fuzz/fuzz_targets (default: every one).
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
    },
    /// Check lb-userspace's module graph (no import cycle, master and cell apart) and that no
    /// source file passes 600 lines.
    Layout,
    /// The mixed load at half its measured capacity for a while, sampling memory and
    /// descriptors of the master and cells: passes when neither grows and nothing fails
    /// (`target/soak/<timestamp>/soak.csv` and `soak.svg`). Not part of `test`.
    Soak {
        /// How long to run the load.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// Portico under abusive clients, next to a normal client: `idle` (10,000 keep-alive
    /// connections: memory per connection), `slowloris`, `slowread`, `flood` (header,
    /// pipelining, tiny chunks) or `all`; results in bench-results/stress-*.txt.
    Stress {
        #[arg(default_value = "all")]
        which: String,
        /// Cells (default: usable CPUs).
        #[arg(long)]
        workers: Option<usize>,
        /// Passed to the scenario of `stress-load` (e.g. `--conns 500 --secs 20`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks against peers, started side by side in the same run, per core by default;
    /// writes target/bench/<timestamp>/results.json and report.html (see README, Benchmarks).
    Bench {
        /// Which bench: `static` (nginx), `wsgi` (granian, gunicorn, uWSGI, bjoern), `asgi`
        /// (uvicorn, granian, hypercorn, daphne), `proxy` (nginx `proxy_pass`, same backend),
        /// `tls` (nginx with OpenSSL: handshakes, keep-alive, HTTP/2), `tunnel` (the relays
        /// copy, splice and sockmap), `metrics` (the cost of the
        /// per-request metrics, and scrape time), `steering` (the policies side by side, and
        /// the XDP guard's cost per packet), `idle` (memory per idle keep-alive connection at
        /// 10,000 and 100,000, nginx beside), or `all` of them into one report.
        #[arg(default_value = "static")]
        which: String,
        /// Seconds per measured run.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Interleaved rounds per scenario (the median and the min-max spread are reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Load generator connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Workers per server, pinned to CPUs 0..N-1 with the load on the others (default 1:
        /// per core; `steering` defaults to every CPU, shared with the load).
        #[arg(long)]
        workers: Option<usize>,
        /// A previous results.json: print ratios against it and fail (exit 1) when a rate
        /// fell or a CPU per request rose beyond both runs' spread and the tolerance.
        #[arg(long, value_name = "PREVIOUS.json")]
        compare: Option<PathBuf>,
        /// With --compare: compare this results.json instead of running a bench; alone: draw
        /// its report.html and charts/ again, beside it, without running anything.
        #[arg(long, value_name = "RESULTS.json")]
        results: Option<PathBuf>,
        /// With --compare: the relative change, beyond the spread, that counts (percent).
        #[arg(long, default_value_t = 3.0)]
        tolerance: f64,
    },
    /// Run one bench scenario (FAMILY/ID, e.g. `static/1k`) against Portico alone under
    /// `perf record`, attached to its cells only, and write a flame graph to
    /// target/bench/profile-FAMILY-ID-<timestamp>.svg.
    Profile {
        scenario: String,
        /// Seconds of recorded load.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Load generator connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// perf's call-graph mode (`dwarf` unwinds code built without frame pointers; `fp`).
        #[arg(long, default_value = "dwarf")]
        call_graph: String,
        /// Samples per second.
        #[arg(long, default_value_t = 499)]
        frequency: u32,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)
        .with_context(|| format!("changing to the workspace root {}", root.display()))?;
    match cli.cmd {
        Cmd::Setup => setup::setup(setup::TEST_PACKAGES),
        Cmd::Run { args } => run::run(&root, &args),
        Cmd::Test => test::test(&root),
        Cmd::Layout => layout::check(&root),
        Cmd::Soak { minutes } => soak::soak(&root, minutes),
        Cmd::Stress {
            which,
            workers,
            args,
        } => stress::stress(&root, &which, workers, &args),
        Cmd::Fuzz { target, time } => fuzz::fuzz(&root, target.as_deref(), time),
        Cmd::Bench {
            which,
            duration,
            repeats,
            connections,
            workers,
            compare,
            results,
            tolerance,
        } => bench::bench(
            &root,
            &which,
            bench::BenchOpts {
                secs: duration,
                repeats,
                conns: connections,
                workers,
                compare,
                results,
                tolerance: tolerance / 100.0,
            },
        ),
        Cmd::Profile {
            scenario,
            duration,
            connections,
            call_graph,
            frequency,
        } => bench::profile::profile(
            &root,
            &bench::profile::ProfileOpts {
                scenario,
                secs: duration,
                conns: connections,
                call_graph,
                frequency,
            },
        ),
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(dir
        .parent()
        .context("xtask has no parent dir")?
        .to_path_buf())
}
