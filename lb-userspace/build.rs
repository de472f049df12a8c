//! Builds the eBPF programs of `lb-ebpf` for the BPF target (nightly + bpf-linker); the loader
//! includes the object from OUT_DIR.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    // The embedded interpreter: run against the libpython pyo3 linked (pyenv keeps it outside
    // the loader's default paths, and a system libpython of another patch level may be there).
    // Every linked target: the binary and the library's unit tests.
    let py = pyo3_build_config::get();
    if let Some(dir) = &py.lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!(
        "cargo:rustc-env=PORTICO_PYTHON_VERSION={}.{}",
        py.version.major, py.version.minor
    );
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest).join("../lb-ebpf");
    let root = root
        .canonicalize()
        .context("lb-ebpf crate not found next to lb-userspace")?;
    if which("bpf-linker").is_none() {
        return Err(anyhow!(
            "bpf-linker not found on PATH: run `cargo xtask setup` once (installs bpf-linker 0.10.4 and nightly rust-src)"
        ));
    }
    let root = root.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: "lb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
    .context("building the eBPF programs failed; `cargo xtask setup` installs what they need")
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}
