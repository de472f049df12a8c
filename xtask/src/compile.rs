//! `build`: the release server (lb-userspace builds the eBPF programs in its build script).

use std::process::Command;

use crate::process::run;

/// `cargo build --release -p lb-userspace`: target/release/portico.
pub fn build() -> anyhow::Result<()> {
    run(Command::new("cargo").args(["build", "--release", "-p", "lb-userspace"]))
}
