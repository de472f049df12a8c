//! `build`: the release server (lb-userspace builds the eBPF programs in its build script), and
//! the proxy bench's backend.

use std::process::Command;

use crate::process::run;

/// `cargo build --release -p lb-userspace`: target/release/portico.
pub fn build() -> anyhow::Result<()> {
    run(Command::new("cargo").args(["build", "--release", "-p", "lb-userspace"]))
}

/// `cargo build --release -p bench-backend`: the proxy bench's upstream and WebSocket load client.
pub fn build_bench_backend() -> anyhow::Result<()> {
    run(Command::new("cargo").args(["build", "--release", "-p", "bench-backend"]))
}
