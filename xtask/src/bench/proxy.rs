//! `bench proxy`: the reverse proxy, Portico against nginx `proxy_pass`, same workers (per core
//! by default: one each on CPU 0), in front of the same native backend (`bench-backend`), which
//! shares the load CPUs with the load generator (oha, `ws-load`). Proxy CPU per request counts
//! the proxies' processes only.

use anyhow::{Context as _, bail};

use super::measure::{Ctx, Load};
use super::results::Family;
use super::runner::{Row, run_rows};
use super::{BenchOpts, Server, free_port, portico_serve, spawn_server};
use crate::process::which;

pub(super) const SCENARIOS: [Row; 4] = [
    ("1k", "1 KiB keep-alive", Load::get("/1k")),
    (
        "1k-new-conn",
        "1 KiB new connection per request",
        Load::get_close("/1k"),
    ),
    ("1m", "1 MiB keep-alive", Load::get("/1m")),
    (
        "ws-64",
        "WebSocket echo (64 B messages)",
        Load::WebSocket { size: 64 },
    ),
];

/// The native backend (HTTP and WebSocket echo), on the load CPUs.
pub(super) fn start_backend(ctx: &Ctx) -> anyhow::Result<Server> {
    let port = free_port()?;
    let mut cmd = ctx
        .layout
        .load(ctx.root.join("target/release/bench-backend"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
    spawn_server("bench-backend", cmd, port)
}

pub(super) fn start_portico(ctx: &Ctx, backend: u16, conns: usize) -> anyhow::Result<Server> {
    let port = free_port()?;
    let cfg = ctx.scratch.join("portico-proxy.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[upstream]]\nname = \"backend\"\nservers = [\"127.0.0.1:{backend}\"]\nkeepalive = {conns}\n\n\
             [[route]]\nprefix = \"/\"\nproxy = {{ upstream = \"backend\", websocket = true }}\n"
        ),
    )?;
    let cmd = portico_serve(ctx, &ctx.layout, &cfg, port, None);
    spawn_server("portico", cmd, port)
}

fn start_nginx(ctx: &Ctx, backend: u16, conns: usize) -> anyhow::Result<Server> {
    let dir = &ctx.scratch;
    // The request headers Portico sets by default, so both send the backend the same request.
    let forwarded = "proxy_set_header Host $http_host;\n      \
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      \
        proxy_set_header X-Forwarded-Proto $scheme;\n      \
        proxy_set_header X-Real-IP $remote_addr;";
    super::start_nginx(ctx, dir, |port| {
        format!(
            "  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               proxy_max_temp_file_size 0;\n\
               upstream backend {{\n    server 127.0.0.1:{backend};\n    keepalive {conns};\n\
                 keepalive_requests 1000000;\n    keepalive_timeout 60s;\n  }}\n\
               server {{\n    listen 127.0.0.1:{port};\n\
                 location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      \
                   proxy_set_header Connection \"\";\n      {forwarded}\n    }}\n\
                 location /ws {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      \
                   proxy_set_header Upgrade $http_upgrade;\n      \
                   proxy_set_header Connection \"upgrade\";\n      {forwarded}\n      \
                   proxy_read_timeout 3600s;\n    }}\n  }}\n",
            d = dir.display(),
        )
    })
}

/// The status and body length of one GET, so a misconfigured proxy fails before it is timed.
fn check_get(port: u16, path: &str, want_len: usize) -> anyhow::Result<()> {
    let resp = super::get_close(port, path)?;
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no response head")?;
    let status = String::from_utf8_lossy(&resp[..head_end.min(12)]).into_owned();
    let body = resp.len() - head_end - 4;
    if !status.ends_with(" 200") || body != want_len {
        bail!("GET {path} through :{port}: {status:?} with {body} bytes (want 200, {want_len})");
    }
    Ok(())
}

pub(super) fn bench_proxy(ctx: &Ctx, o: &BenchOpts) -> anyhow::Result<Family> {
    let conns = o.conns;
    which("nginx").context("nginx not installed")?;
    let backend = start_backend(ctx)?;
    let proxies = [
        start_portico(ctx, backend.port, conns)?,
        start_nginx(ctx, backend.port, conns)?,
    ];
    for p in &proxies {
        check_get(p.port, "/1k", 1024).with_context(|| p.name)?;
        check_get(p.port, "/1m", 1 << 20).with_context(|| p.name)?;
    }
    let mut family = o.family(
        "proxy",
        ctx,
        format!(
            "bench proxy: portico and nginx proxy_pass, {}; bench-backend on the load CPUs too; \
             {conns} connections (oha / ws-load), upstream keepalive {conns}",
            ctx.layout.describe()
        ),
    );
    let refs: Vec<&Server> = proxies.iter().collect();
    run_rows(ctx, &mut family, &refs, &SCENARIOS, conns);
    Ok(family)
}
