//! `bench tunnel`: the tunnel relays (`relay = "copy" | "splice" | "sockmap"`) side by side in
//! one run: three Porticos with the same workers on the server CPUs, in front of the same
//! WebSocket echo (`bench-backend`, on the load CPUs), driven by `ws-load` in interleaved rounds.

use anyhow::{Context as _, bail};

use super::measure::{Ctx, Load};
use super::proxy::start_backend;
use super::results::Family;
use super::runner::{NoProbe, ScenarioDef, run_scenario};
use super::{BenchOpts, Server, free_port, portico_serve, spawn_server, wait_port};

const RELAYS: [&str; 3] = ["copy", "splice", "sockmap"];
/// The spawned servers' names (the `Server` type keeps a static name).
const NAMES: [&str; 3] = [
    "portico relay=copy",
    "portico relay=splice",
    "portico relay=sockmap",
];

/// Small messages (the per-message cost) and bulk ones (throughput): (id, label, size, bulk).
const CASES: [(&str, &str, usize, bool); 2] = [
    ("ws-64", "echo 64 B messages", 64, false),
    ("ws-256k", "echo 256 KiB messages (bulk)", 256 << 10, true),
];

/// Connections of a bulk case: enough to keep the relay busy, few enough that each message
/// is a real transfer.
const BULK_CONNS: usize = 4;

pub(super) fn start_portico(ctx: &Ctx, i: usize, backend: u16) -> anyhow::Result<(Server, u16)> {
    let relay = RELAYS[i];
    let (port, admin) = (free_port()?, free_port()?);
    let cfg = ctx.scratch.join(format!("portico-{relay}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[[upstream]]\nname = \"backend\"\nservers = [\"127.0.0.1:{backend}\"]\n\n\
             [[route]]\nprefix = \"/\"\nproxy = {{ upstream = \"backend\", websocket = true, relay = \"{relay}\" }}\n"
        ),
    )?;
    let cmd = portico_serve(ctx, &ctx.layout, &cfg, port, Some(admin));
    let server = spawn_server(NAMES[i], cmd, port)?;
    wait_port(admin).with_context(|| format!("{}: admin endpoint", NAMES[i]))?;
    Ok((server, admin))
}

/// `portico_tunnel_sockmap_available` of a running Portico.
fn sockmap_available(admin: u16) -> anyhow::Result<bool> {
    let text = super::scrape(admin)?;
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("portico_tunnel_sockmap_available "))
        .context("no portico_tunnel_sockmap_available in /metrics")?;
    Ok(value.trim() == "1")
}

/// Tunnels each relay opened, from its /metrics: proves the row measured that relay.
fn tunnels_by(admin: u16, relay: &str) -> anyhow::Result<f64> {
    let text = super::scrape(admin)?;
    let series = format!("portico_tunnels_total{{relay=\"{relay}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
        .with_context(|| format!("no {series}in /metrics"))
}

pub(super) fn bench_tunnel(ctx: &Ctx, o: &BenchOpts) -> anyhow::Result<Family> {
    let backend = start_backend(ctx)?;
    let mut proxies = Vec::new();
    for i in 0..RELAYS.len() {
        proxies.push(start_portico(ctx, i, backend.port)?);
    }
    let mut family = o.family(
        "tunnel",
        ctx,
        format!(
            "bench tunnel: one portico per relay, {}; bench-backend (WebSocket echo) on the load \
             CPUs too; {} connections for small messages, {BULK_CONNS} for bulk",
            ctx.layout.describe(),
            o.conns
        ),
    );
    let sockmap = sockmap_available(proxies[2].1)?;
    if !sockmap {
        family
            .notes
            .push("sockmap relay unavailable (needs root and kernel support): not measured".into());
    }
    let measured: Vec<usize> = (0..RELAYS.len())
        .filter(|&i| RELAYS[i] != "sockmap" || sockmap)
        .collect();
    let refs: Vec<&Server> = measured.iter().map(|&i| &proxies[i].0).collect();
    for (id, label, size, bulk) in CASES {
        let def = ScenarioDef {
            id,
            label,
            load: Load::WebSocket { size },
            conns: if bulk { BULK_CONNS } else { o.conns },
        };
        let sc = run_scenario(ctx, &family, &refs, &def, &mut NoProbe);
        family.scenarios.push(sc);
    }
    for &i in &measured {
        let n = tunnels_by(proxies[i].1, RELAYS[i])?;
        if n < 1.0 {
            bail!("{}: no tunnel was relayed by {}", NAMES[i], RELAYS[i]);
        }
    }
    Ok(family)
}
