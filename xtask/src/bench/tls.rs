//! `bench tls`: static files over TLS, Portico (rustls) against nginx (OpenSSL) with the same
//! ECDSA P-256 or RSA 2048 certificate and the same workers (per core by default). Handshakes
//! come from `tls-load` (full, or each client resuming its own last session), keep-alive rows
//! from oha, HTTP/2 from h2load.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use super::measure::{Ctx, Load};
use super::results::Family;
use super::runner::{Row, run_rows};
use super::{BenchOpts, Server, free_port, spawn_server};
use crate::process::which;

/// Rows with the ECDSA certificate (the one the README advises).
pub(super) const SCENARIOS: [Row; 5] = [
    (
        "full-ecdsa",
        "full handshake + 1 KiB, new connection per request (ECDSA P-256)",
        Load::NewTls {
            path: "/1k.bin",
            cert: "ecdsa",
            resume: false,
        },
    ),
    (
        "resumed-ecdsa",
        "resumed handshake + 1 KiB, new connection per request (ECDSA)",
        Load::NewTls {
            path: "/1k.bin",
            cert: "ecdsa",
            resume: true,
        },
    ),
    (
        "1k-tls",
        "1 KiB keep-alive over TLS 1.3",
        Load::get("/1k.bin").over_tls(),
    ),
    (
        "1k-h2",
        "1 KiB over HTTP/2 on TLS 1.3 (h2load, 10 streams per connection)",
        Load::Http2 { path: "/1k.bin" },
    ),
    (
        "1m-tls",
        "1 MiB keep-alive over TLS 1.3",
        Load::get("/1m.bin").over_tls(),
    ),
];

/// The new-connection rows with the RSA certificate.
const RSA_SCENARIOS: [Row; 2] = [
    (
        "full-rsa",
        "full handshake + 1 KiB, new connection per request (RSA 2048)",
        Load::NewTls {
            path: "/1k.bin",
            cert: "rsa",
            resume: false,
        },
    ),
    (
        "resumed-rsa",
        "resumed handshake + 1 KiB, new connection per request (RSA 2048)",
        Load::NewTls {
            path: "/1k.bin",
            cert: "rsa",
            resume: true,
        },
    ),
];

/// A self-signed certificate for 127.0.0.1 made with the openssl command (not a CA: `tls-load`
/// trusts it directly, and webpki refuses a CA certificate as a server's own).
fn make_cert(dir: &Path, name: &str, key_args: &[&str]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let status = Command::new(which("openssl").context("openssl not installed")?)
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(key_args)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("openssl req failed for the {name} certificate");
    }
    Ok((cert, key))
}

fn start_portico(ctx: &Ctx, docroot: &Path, cert: &Path, key: &Path) -> anyhow::Result<Server> {
    let port = free_port()?;
    let mut cmd = ctx.layout.server(ctx.root.join("target/release/portico"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", "off", "--access-log", "off"])
        .args(["--workers", &ctx.layout.workers.to_string(), "--static"])
        .arg(format!("/={}", docroot.display()))
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key);
    spawn_server("portico", cmd, port)
}

/// Portico's server order of suites (lb-userspace/src/tls/server_config.rs) in OpenSSL's names.
const NGINX_TLS13_SUITES: &str =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
const NGINX_TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
    ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:\
    ECDHE-RSA-CHACHA20-POLY1305";

fn start_nginx(
    ctx: &Ctx,
    dir: &Path,
    docroot: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<Server> {
    // A shared session cache and tickets (nginx shares and rotates the ticket keys with it),
    // and Portico's cipher choice: AES-128-GCM first unless the client lists ChaCha20 first.
    super::start_nginx(ctx, dir, |port| {
        format!(
            "  sendfile on;\n  tcp_nopush on;\n  open_file_cache max=10000 inactive=60s;\n\
             ssl_protocols TLSv1.2 TLSv1.3;\n  ssl_session_cache shared:SSL:10m;\n\
             ssl_session_tickets on;\n  ssl_prefer_server_ciphers on;\n\
             ssl_ciphers {NGINX_TLS12_CIPHERS};\n\
             ssl_conf_command Ciphersuites {NGINX_TLS13_SUITES};\n\
             ssl_conf_command Options PrioritizeChaCha;\n\
             types {{ application/octet-stream bin; }}\n\
             server {{\n    listen 127.0.0.1:{port} ssl http2 reuseport;\n    root {root};\n\
               ssl_certificate {cert};\n    ssl_certificate_key {key};\n  }}\n",
            root = docroot.display(),
            cert = cert.display(),
            key = key.display(),
        )
    })
}

pub(super) fn bench_tls(ctx: &Ctx, o: &BenchOpts) -> anyhow::Result<Family> {
    let docroot = super::static_files::docroot(&ctx.scratch)?;
    let ecdsa = make_cert(
        &ctx.scratch,
        "ecdsa",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    )?;
    let rsa = make_cert(&ctx.scratch, "rsa", &["-newkey", "rsa:2048"])?;
    let mut family = o.family(
        "tls",
        ctx,
        format!(
            "bench tls: portico (rustls, aws-lc-rs) and nginx (OpenSSL, shared session cache), \
             same certificate, {}; -c{}: tls-load (handshakes), oha (keep-alive), h2load",
            ctx.layout.describe(),
            o.conns
        ),
    );
    let runs: [(&(PathBuf, PathBuf), &[Row]); 2] = [(&ecdsa, &SCENARIOS), (&rsa, &RSA_SCENARIOS)];
    for (i, ((cert, key), rows)) in runs.into_iter().enumerate() {
        let servers = [
            start_portico(ctx, &docroot, cert, key)?,
            start_nginx(
                ctx,
                &ctx.scratch.join(format!("nginx{i}")),
                &docroot,
                cert,
                key,
            )?,
        ];
        let refs: Vec<&Server> = servers.iter().collect();
        run_rows(ctx, &mut family, &refs, rows, o.conns);
    }
    Ok(family)
}
