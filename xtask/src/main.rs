//! Project tasks: `setup` (toolchain parts and packages, idempotent), `run` (the demo), `test`
//! (lints and the whole suite), `bench` (Portico against its peers, side by side), `fuzz`
//! (the parsers under libFuzzer).
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
    /// Benchmarks against peers, started side by side in the same run.
    Bench {
        /// Which bench: `static` (nginx), `wsgi` (granian, gunicorn, uWSGI, bjoern), `asgi`
        /// (uvicorn, granian, hypercorn, daphne; one worker each on CPU0, load on CPU1),
        /// `metrics` (the cost of the per-request histograms, and scrape time), `steering`
        /// (the steering policies side by side, and the XDP guard's cost per packet), `proxy`
        /// (the reverse proxy against nginx `proxy_pass`, one worker each, same backend) or
        /// `tunnel` (the tunnel relays copy, splice and sockmap side by side).
        #[arg(default_value = "static")]
        which: String,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Interleaved repeats per row (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// wrk connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Workers for both servers (default: usable CPUs).
        #[arg(long)]
        workers: Option<usize>,
        /// wrk threads (default: the worker count, so new connections start on every CPU).
        #[arg(long)]
        threads: Option<usize>,
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
        Cmd::Fuzz { target, time } => fuzz::fuzz(&root, target.as_deref(), time),
        Cmd::Bench {
            which,
            duration,
            repeats,
            connections,
            workers,
            threads,
        } => bench::bench(
            &root,
            &which,
            bench::BenchOpts {
                secs: duration,
                repeats,
                conns: connections,
                workers,
                threads,
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
