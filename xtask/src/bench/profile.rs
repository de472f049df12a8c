//! `cargo xtask profile FAMILY/SCENARIO`: one bench scenario against Portico alone, per core,
//! under `perf record` attached to the cells only (not the master, the backend or the load),
//! folded and drawn as a flame graph SVG with inferno.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::Server;
use super::measure::{Ctx, Layout, Load, Units, children_with_arg, measure};
use crate::{compile, setup};

/// Options of `xtask profile`.
#[derive(Debug)]
pub struct ProfileOpts {
    pub scenario: String,
    pub secs: u64,
    pub conns: usize,
    /// perf's `--call-graph` mode: `dwarf` unwinds Rust code built without frame pointers.
    pub call_graph: String,
    pub frequency: u32,
}

/// Every scenario `profile` can run, as FAMILY/ID.
fn known() -> Vec<String> {
    let mut v = Vec::new();
    let mut add = |f: &str, id: &str| v.push(format!("{f}/{id}"));
    for (id, _, _) in super::static_files::SCENARIOS {
        add("static", id);
    }
    for (_, rows) in super::wsgi::GROUPS {
        rows.iter().for_each(|r| add("wsgi", r.0));
    }
    for (_, _, rows) in super::asgi::GROUPS {
        rows.iter().for_each(|r| add("asgi", r.0));
    }
    for (id, _, _) in super::proxy::SCENARIOS {
        add("proxy", id);
    }
    v
}

/// Portico (and what it needs running beside it) for one scenario, with its load.
fn start(ctx: &Ctx, family: &str, id: &str, conns: usize) -> anyhow::Result<(Vec<Server>, Load)> {
    let venv = || setup::setup_venv(&ctx.root, &[setup::TEST_PY, setup::BENCH_PY].concat());
    match family {
        "static" => {
            let (_, _, load) = *super::static_files::SCENARIOS
                .iter()
                .find(|s| s.0 == id)
                .context("no such static scenario")?;
            let docroot = super::static_files::docroot(&ctx.scratch)?;
            Ok((
                vec![super::static_files::start_portico(ctx, &docroot)?],
                load,
            ))
        }
        "wsgi" => {
            let (app, load) = super::wsgi::GROUPS
                .iter()
                .find_map(|(app, rows)| Some((*app, rows.iter().find(|r| r.0 == id)?.2)))
                .context("no such wsgi scenario")?;
            Ok((vec![super::wsgi::start_portico(ctx, &venv()?, app)?], load))
        }
        "asgi" => {
            let (app, load) = super::asgi::GROUPS
                .iter()
                .find_map(|(app, _, rows)| Some((*app, rows.iter().find(|r| r.0 == id)?.2)))
                .context("no such asgi scenario")?;
            let p = super::asgi::start_peer(super::asgi::Peer::Portico, ctx, &venv()?, app)?;
            Ok((vec![p], load))
        }
        "proxy" => {
            let (_, _, load) = *super::proxy::SCENARIOS
                .iter()
                .find(|s| s.0 == id)
                .context("no such proxy scenario")?;
            let backend = super::proxy::start_backend(ctx)?;
            let portico = super::proxy::start_portico(ctx, backend.port, conns)?;
            // Portico first: the one profiled; the backend is stopped after it.
            Ok((vec![portico, backend], load))
        }
        _ => bail!("no such family"),
    }
}

pub fn profile(root: &Path, o: &ProfileOpts) -> anyhow::Result<()> {
    let names = known();
    let Some((family, id)) = o
        .scenario
        .split_once('/')
        .filter(|_| names.contains(&o.scenario))
    else {
        bail!(
            "unknown scenario {:?}; available: {}",
            o.scenario,
            names.join(", ")
        );
    };
    setup::setup_packages(setup::BENCH_PACKAGES)?;
    setup::setup_packages(setup::PROFILE_PACKAGES)?;
    setup::setup_oha()?;
    compile::build()?;
    compile::build_bench_backend()?;
    let scratch = std::env::temp_dir().join(format!("portico-profile-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let ctx = Ctx {
        root: root.to_path_buf(),
        layout: Layout::new(1),
        scratch: scratch.clone(),
        units: Units::read(),
    };
    let result = run(&ctx, family, id, o);
    let _ = std::fs::remove_dir_all(&scratch);
    let svg = result?;
    println!("flame graph: {}", svg.display());
    Ok(())
}

fn run(ctx: &Ctx, family: &str, id: &str, o: &ProfileOpts) -> anyhow::Result<PathBuf> {
    ctx.layout.pin_self();
    let (servers, load) = start(ctx, family, id, o.conns)?;
    let portico = &servers[0];
    // Warm: caches, pooled upstream connections, the interpreter.
    measure(ctx, portico, load, o.conns, 1)?;
    let cells = children_with_arg(portico.child.id(), "cell");
    if cells.is_empty() {
        bail!("portico (pid {}) has no cell process", portico.child.id());
    }
    let pids: Vec<String> = cells.iter().map(u32::to_string).collect();
    let data = ctx.scratch.join("perf.data");
    let mut perf = ctx.layout.load("perf");
    perf.args(["record", "-q", "-F", &o.frequency.to_string(), "-g"])
        .args(["--call-graph", &o.call_graph, "-o"])
        .arg(&data)
        .args(["-p", &pids.join(",")])
        .args(["--", "sleep", &(o.secs + 1).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let perf = perf
        .spawn()
        .context("starting perf record (is linux-perf installed?)")?;
    // perf needs a moment to attach; the load's window lies inside its recording.
    std::thread::sleep(Duration::from_millis(500));
    let round = measure(ctx, portico, load, o.conns, o.secs);
    finish(perf)?;
    let round = round?;
    println!(
        "{family}/{id}: {:.0} {}/s, {:.1} µs CPU per {}, p99 {:.2} ms (under perf: slower than a bench run)",
        round.rate,
        load.unit(),
        round.cpu_us,
        load.unit(),
        round.latency(99.0)
    );
    drop(servers);
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()
        .context("running perf script")?;
    if !script.status.success() || script.stdout.is_empty() {
        bail!("perf script printed nothing ({})", script.status);
    }
    let mut folded = Vec::new();
    {
        use inferno::collapse::Collapse as _;
        let mut folder =
            inferno::collapse::perf::Folder::from(inferno::collapse::perf::Options::default());
        folder
            .collapse(BufReader::new(&script.stdout[..]), &mut folded)
            .context("folding perf script output")?;
    }
    if folded.is_empty() {
        bail!("no stack samples recorded from the cells");
    }
    let stamp = super::results::timestamp();
    let out_dir = ctx.root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let svg = out_dir.join(format!("profile-{family}-{id}-{stamp}.svg"));
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = format!("portico {family}/{id}: cells only, {} s", o.secs);
    opts.subtitle = Some(format!(
        "{:.0} {}/s, {:.1} µs CPU per {} under perf record -F {} --call-graph {}",
        round.rate,
        load.unit(),
        round.cpu_us,
        load.unit(),
        o.frequency,
        o.call_graph
    ));
    let file =
        std::fs::File::create(&svg).with_context(|| format!("creating {}", svg.display()))?;
    inferno::flamegraph::from_reader(&mut opts, &folded[..], std::io::BufWriter::new(file))
        .context("drawing the flame graph")?;
    Ok(svg)
}

/// Waits for `perf record` and fails with its message when it failed.
fn finish(perf: Child) -> anyhow::Result<()> {
    let out = perf.wait_with_output().context("waiting for perf record")?;
    if !out.status.success() {
        bail!(
            "perf record failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
