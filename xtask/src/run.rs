//! `cargo xtask run`: build, then serve the demo site.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{compile, setup};

pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    setup::setup(setup::TEST_PACKAGES)?;
    compile::build()?;
    let mut cmd = Command::new(root.join("target/release/portico"));
    cmd.args(["serve", "-c", "examples/demo/portico.toml"])
        .args(args);
    let st = cmd.status().context("running portico")?;
    if !st.success() {
        bail!("portico exited with {st}");
    }
    Ok(())
}
