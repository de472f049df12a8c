//! Interleaved rounds: every server of a scenario is warmed, then measured in turn (A B A B A B)
//! so drift on a shared machine spreads over all of them; the rounds go into the results and
//! the family's Markdown table (bench-results/FAMILY.md).

use anyhow::Context as _;

use super::Server;
use super::measure::{Ctx, Load, measure};
use super::results::{Family, Round, Scenario, ServerRuns};
use super::row::{extras, figures};

/// A family's scenario table entry: (id, label, load).
pub type Row = (&'static str, &'static str, Load);

/// One scenario of a family: what load, how many connections.
#[derive(Clone, Copy, Debug)]
pub struct ScenarioDef {
    pub id: &'static str,
    pub label: &'static str,
    pub load: Load,
    pub conns: usize,
}

/// Extra figures around each measured round (steering's per-cell shares).
pub trait Probe {
    fn before(&mut self, _server: usize) -> anyhow::Result<()> {
        Ok(())
    }
    fn after(&mut self, _server: usize, _round: &mut Round) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A probe that adds nothing.
#[derive(Debug)]
pub struct NoProbe;
impl Probe for NoProbe {}

/// Seconds of the unmeasured warm-up run per server and scenario.
const WARM_SECS: u64 = 1;

/// Runs each of `rows` against `servers` with `conns` connections (no probe) and adds the
/// scenarios to `family`: the loop every family without a probe shares.
pub fn run_rows(ctx: &Ctx, family: &mut Family, servers: &[&Server], rows: &[Row], conns: usize) {
    for &(id, label, load) in rows {
        let def = ScenarioDef {
            id,
            label,
            load,
            conns,
        };
        let sc = run_scenario(ctx, family, servers, &def, &mut NoProbe);
        family.scenarios.push(sc);
    }
}

/// Runs `def` against every server in `repeats` interleaved rounds. A server that fails keeps
/// the rounds it had and the reason; the others go on.
pub fn run_scenario(
    ctx: &Ctx,
    family: &Family,
    servers: &[&Server],
    def: &ScenarioDef,
    probe: &mut dyn Probe,
) -> Scenario {
    let mut runs: Vec<ServerRuns> = servers
        .iter()
        .map(|s| ServerRuns {
            server: s.name.to_string(),
            rounds: Vec::new(),
            failed: None,
        })
        .collect();
    for (s, r) in servers.iter().zip(&mut runs) {
        if let Err(e) = measure(ctx, s, def.load, def.conns, WARM_SECS) {
            r.failed = Some(format!("warm-up: {e:#}"));
        }
    }
    for round in 0..family.repeats.max(1) {
        for (i, (s, r)) in servers.iter().zip(&mut runs).enumerate() {
            if r.failed.is_some() {
                continue;
            }
            let one = probe.before(i).and_then(|()| {
                let mut m = measure(ctx, s, def.load, def.conns, family.secs)?;
                probe.after(i, &mut m)?;
                Ok(m)
            });
            match one.with_context(|| format!("round {}", round + 1)) {
                Ok(m) => r.rounds.push(m),
                Err(e) => r.failed = Some(format!("{e:#}")),
            }
        }
    }
    let sc = Scenario {
        id: def.id.to_string(),
        label: def.label.to_string(),
        unit: def.load.unit().to_string(),
        conns: def.conns,
        servers: runs,
    };
    print!("{}", rows(&sc));
    sc
}

/// The Markdown table of a family: one row per scenario and server, medians with min-max.
pub fn markdown(family: &Family, machine: &str) -> String {
    let mut t = format!("{}\n\nMachine: {machine}\n\n{HEADER}", family.setup);
    for sc in &family.scenarios {
        t.push_str(&rows(sc));
    }
    t.push_str(LEGEND);
    for n in &family.notes {
        t.push_str(&format!("- {}\n", n.lines().next().unwrap_or_default()));
    }
    t
}

pub const HEADER: &str = "| scenario | server | rate /s (min-max) | p50 / p99 / p99.9 ms | errors | CPU µs/req (min-max) | server busy | load busy | peak RSS MiB | portico / server |\n\
     |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";

const LEGEND: &str = "\nMedians over the rounds, min-max in brackets. rate: successful requests (WebSocket: \
    echoed messages) per second; latency from oha / ws-load / tls-load without coordinated-omission \
    correction (h2load prints none: n/a); CPU: utime + stime of all the server's processes over the window, per request; \
    server busy: that CPU time over wall time; load busy near 100% means the load generator set \
    the pace (judge by CPU per request then); peak RSS: sampled sum over the server's processes.\n\n";

/// The table rows of one scenario.
pub fn rows(sc: &Scenario) -> String {
    let mut out = String::new();
    for s in &sc.servers {
        let Some(f) = figures(sc, s) else {
            let why = s.failed.as_deref().unwrap_or("no round");
            let why = why.lines().next().unwrap_or_default().replace('|', "/");
            out.push_str(&format!(
                "| {} | {} | failed: {why} | | | | | | | |\n",
                sc.label, s.server
            ));
            continue;
        };
        // Family-specific figures go beside the server's name.
        let mut name = s.server.clone();
        for (k, x) in extras(s) {
            name.push_str(&format!(" ({k} {x:.2})"));
        }
        if let Some(f) = &s.failed {
            let f = f.lines().next().unwrap_or_default().replace('|', "/");
            name.push_str(&format!(" (then failed: {f})"));
        }
        let [p50, p99, p999] = &f.latency;
        out.push_str(&format!(
            "| {} | {name} | {} ({}) | {p50} / {p99} / {p999} | {} | {} ({}) | {} | {} | {} | {} |\n",
            sc.label,
            f.rate,
            f.rate_range,
            f.errors,
            f.cpu,
            f.cpu_range,
            f.server_busy,
            f.load_busy,
            f.rss_mib,
            f.ratio,
        ));
    }
    out
}
