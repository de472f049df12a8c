//! `cargo xtask setup`: toolchain parts (nightly rust-src, bpf-linker), Debian packages and the
//! project's Python virtualenv. Idempotent: each step checks first and does nothing when done.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context as _;

use crate::process::{output, run, which};

const BPF_LINKER_VERSION: &str = "0.10.4";
/// Debian packages the test suite needs: network namespaces for the eBPF tests (and ethtool to
/// turn off a veth's checksum offload), setpriv (starting Portico as the unit file does),
/// promtool (from `prometheus`) for the metrics checks, headless Chromium for the status page,
/// an ext4 image on a loop device for the disk that fails under the fault test (mkfs.ext4;
/// losetup from `mount`).
pub const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("util-linux", "setpriv"),
    ("prometheus", "promtool"),
    ("chromium", "chromium"),
    ("e2fsprogs", "mkfs.ext4"),
    ("mount", "losetup"),
];
/// Debian packages the benchmarks need (libev-dev: bjoern builds against it).
pub const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("libev-dev", "/usr/include/ev.h"),
    // h2load: the HTTP/2 load of `bench tls`.
    ("nghttp2-client", "h2load"),
];
/// Debian packages of `xtask profile`: perf (a wrapper that runs the kernel's own version).
pub const PROFILE_PACKAGES: &[(&str, &str)] = &[("linux-perf", "perf")];
/// The HTTP load generator of the benches: latency percentiles without coordinated omission
/// and JSON output. Pinned: its flags and output are parsed.
const OHA_VERSION: &str = "1.16.0";

/// Python packages the end-to-end tests need, in the project's venv (`.venv`)
/// (prometheus-client: its strict OpenMetrics parser checks the exposition; gunicorn, gevent,
/// channels and daphne: the upstream servers of the reverse-proxy tests; requests: a client
/// with a cookie jar for the Django admin login through the proxy; pyramid and PasteDeploy:
/// the `paste` tests; cryptography: the TLS tests' certificates; httpx with h2: an HTTP/2
/// client, and h2 alone builds the raw frames of the HTTP/2 flood tests).
pub const TEST_PY: &[&str] = &[
    "flask>=3,<4",
    "django>=5,<6",
    "prometheus-client>=0.20,<1",
    "gunicorn>=23",
    "websockets>=13",
    "gevent>=24",
    "requests>=2.31",
    "channels>=4",
    "daphne>=4",
    "pyramid>=2,<3",
    "PasteDeploy>=3",
    "starlette>=0.40",
    "cryptography>=42",
    "httpx[http2]>=0.27",
    "h2>=4.1",
];
/// Python packages for the WSGI and ASGI benches: the peers besides gunicorn and daphne (in
/// `TEST_PY`, which the benches install too); uvicorn's `standard` extra brings httptools and
/// uvloop, which uvicorn, hypercorn and Portico run on there.
pub const BENCH_PY: &[&str] = &[
    "granian>=2,<3",
    "uwsgi>=2.0.28",
    "bjoern>=3.2",
    "uvicorn[standard]>=0.30",
    "hypercorn>=0.17",
];

/// Idempotent: each step checks first and does nothing when already done.
pub fn setup(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask setup: adding rust-src to the nightly toolchain");
        let toolchains =
            output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
        if !toolchains.lines().any(|l| l.starts_with("nightly")) {
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]))?;
        }
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION}");
        run(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ]))?;
    }
    setup_packages(packages)
}

/// The project's virtualenv (`.venv`, from the `python3` on PATH) with `packages` installed;
/// pip runs only when the list changed since the last install.
pub fn setup_venv(root: &Path, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("xtask: creating {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("creating the test virtualenv (python3 -m venv)")?;
    }
    let mut wanted: Vec<&str> = packages.to_vec();
    wanted.sort_unstable();
    let marker = venv.join(format!("portico-{}.txt", short_hash(&wanted.join("\n"))));
    if !marker.exists() {
        eprintln!("xtask: pip install {}", wanted.join(" "));
        run(Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(&wanted))
        .context("installing Python packages into .venv")?;
        std::fs::write(&marker, wanted.join("\n"))?;
    }
    Ok(venv)
}

fn short_hash(s: &str) -> String {
    // FNV-1a: stable across runs (the marker names a package list).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// `oha` at `OHA_VERSION` (cargo install; nothing when that version is already there).
pub fn setup_oha() -> anyhow::Result<()> {
    let have = crate::bench::oha_bin()
        .and_then(|b| output(Command::new(b).arg("--version")))
        .unwrap_or_default();
    if !have.contains(OHA_VERSION) {
        eprintln!("xtask setup: installing oha {OHA_VERSION}");
        run(Command::new("cargo").args([
            "install",
            &format!("oha@{OHA_VERSION}"),
            "--locked",
            "--force",
        ]))?;
    }
    Ok(())
}

pub fn setup_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, bin)| which(bin).is_none())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing Debian packages {missing:?}");
    let sudo = !is_root();
    let apt = |args: &[&str]| {
        let mut c = if sudo {
            Command::new("sudo")
        } else {
            Command::new("apt-get")
        };
        if sudo {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update", "-qq"]))?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    run(&mut install)?;
    if missing.contains(&"prometheus") {
        // Only its tools are wanted: a packaged server started by systemd would hold :9090.
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "prometheus"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    Ok(())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}
