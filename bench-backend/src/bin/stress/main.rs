//! `stress-load`: the abusive clients of `cargo xtask stress`, against a running Portico
//! (`--addr`, its admin endpoint `--admin`, its master's pid `--master` for the cells' memory
//! and CPU), each scenario next to a normal client whose latencies it reports.
#![forbid(unsafe_code)]

mod clients;
mod measure;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use clients::End;
use measure::{
    NormalClient, Peaks, cells, cells_cpu, cells_pss, cells_rss, metric_sum, mib, tcp_mem,
};

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    admin: SocketAddr,
    #[arg(long)]
    master: i32,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Idle keep-alive connections held open while the normal client runs.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// Slowloris clients: one header byte every `interval` seconds.
    Slowloris {
        #[arg(long, default_value_t = 2000)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        interval: u64,
        #[arg(long, default_value_t = 45)]
        secs: u64,
    },
    /// Slow readers: a large file asked for, nothing read.
    Slowread {
        #[arg(long, default_value_t = 2000)]
        conns: usize,
        #[arg(long, default_value_t = 75)]
        secs: u64,
    },
    /// Header, pipelining and tiny-chunk floods, one after the other.
    Flood {
        #[arg(long, default_value_t = 64)]
        conns: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    raise_nofile();
    let rt = bench_backend::runtime()?;
    let before_cells = cells(cli.master);
    rt.block_on(async {
        match cli.scenario {
            Scenario::Idle { conns, secs } => idle(&cli, conns, secs).await,
            Scenario::Slowloris {
                conns,
                interval,
                secs,
            } => slowloris(&cli, conns, interval, secs).await,
            Scenario::Slowread { conns, secs } => slowread(&cli, conns, secs).await,
            Scenario::Flood { conns, secs } => flood(&cli, conns, secs).await,
        }
    })?;
    let after_cells = cells(cli.master);
    println!(
        "cells: {before_cells:?} before, {after_cells:?} after ({})",
        if before_cells == after_cells {
            "none replaced"
        } else {
            "REPLACED"
        }
    );
    Ok(())
}

/// Many connections need many descriptors: the soft limit goes up to the hard one.
fn raise_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: l.maximum,
            maximum: l.maximum,
        },
    );
}

/// Counts of how the abusive connections ended.
fn tally(ends: impl IntoIterator<Item = End>) -> String {
    let mut m: BTreeMap<End, usize> = BTreeMap::new();
    for e in ends {
        *m.entry(e).or_default() += 1;
    }
    m.iter()
        .map(|(e, n)| format!("{e:?}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn idle(cli: &Cli, conns: usize, secs: u64) -> anyhow::Result<()> {
    let addr = cli.addr;
    let baseline = NormalClient::start(addr, "/a.txt");
    tokio::time::sleep(Duration::from_secs(secs.min(5))).await;
    println!("normal client, alone: {}", baseline.finish());
    let (pss0, rss0, tcp0) = (cells_pss(cli.master), cells_rss(cli.master), tcp_mem());
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..conns {
        let permit = sem.clone().acquire_owned().await?;
        set.spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), clients::idle(addr, i, "/a.txt"))
                .await;
            let r = r.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
            drop(permit);
            r
        });
    }
    let mut held = Vec::with_capacity(conns);
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    println!(
        "opened {} idle keep-alive connections in {:.1} s ({failed} failed)",
        held.len(),
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (pss1, rss1, tcp1) = (cells_pss(cli.master), cells_rss(cli.master), tcp_mem());
    let n = held.len().max(1) as f64;
    println!(
        "cells' memory: PSS {} -> {} ({:.0} bytes per connection), RSS {} -> {} ({:.0} bytes per connection)",
        mib(pss0),
        mib(pss1),
        pss1.saturating_sub(pss0) as f64 / n,
        mib(rss0),
        mib(rss1),
        rss1.saturating_sub(rss0) as f64 / n
    );
    println!(
        "kernel TCP memory (both ends): {} -> {}; open per cell: {}",
        mib(tcp0),
        mib(tcp1),
        per_cell(
            cli.admin,
            cells(cli.master).len(),
            "portico_connections_active"
        )
    );
    let normal = NormalClient::start(addr, "/a.txt");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    println!(
        "normal client, {} idle connections open: {}",
        held.len(),
        normal.finish()
    );
    let open = bench_backend::conn::still_open(&held);
    println!(
        "idle connections still open at the end: {open} of {}",
        held.len()
    );
    Ok(())
}

/// "cell=value" for each cell's series of `name`.
fn per_cell(admin: SocketAddr, cells: usize, name: &str) -> String {
    (0..cells)
        .map(|c| {
            format!(
                "{c}={}",
                metric_sum(admin, &format!("{name}{{cell=\"{c}\"}}"))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn slowloris(cli: &Cli, conns: usize, interval: u64, secs: u64) -> anyhow::Result<()> {
    let addr = cli.addr;
    let pss0 = cells_pss(cli.master);
    let peaks = Peaks::start(cli.master);
    let until = Instant::now() + Duration::from_secs(secs);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..conns {
        set.spawn(clients::slowloris(
            addr,
            i,
            Duration::from_secs(interval),
            until,
        ));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let normal = NormalClient::start(addr, "/a.txt");
    let mut ends = Vec::new();
    let mut times = Vec::new();
    while let Some(r) = set.join_next().await {
        let (end, after) = r?;
        if end != End::Open {
            times.push(after);
        }
        ends.push(end);
    }
    println!(
        "normal client during {conns} slowloris clients: {}",
        normal.finish()
    );
    times.sort();
    let at = |q: f64| {
        times
            .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
            .map_or(f64::NAN, Duration::as_secs_f64)
    };
    println!(
        "slowloris clients: {} (closed after {:.1} s median, {:.1} s max)",
        tally(ends),
        at(0.5),
        at(1.0)
    );
    let (pss, tcp) = peaks.finish();
    println!(
        "cells' PSS: {} before, {} at most; kernel TCP memory at most {}",
        mib(pss0),
        mib(pss),
        mib(tcp)
    );
    Ok(())
}

async fn slowread(cli: &Cli, conns: usize, secs: u64) -> anyhow::Result<()> {
    let addr = cli.addr;
    let pss0 = cells_pss(cli.master);
    let peaks = Peaks::start(cli.master);
    let until = Instant::now() + Duration::from_secs(secs);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..conns {
        set.spawn(clients::slow_reader(addr, i, "/big.bin", until));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let normal = NormalClient::start(addr, "/a.txt");
    // The send timeouts as they come, once a second.
    let mut timeline = Vec::new();
    let start = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        timeline.push((
            start.elapsed().as_secs(),
            metric_sum(cli.admin, "portico_send_timeouts_total"),
        ));
    }
    println!(
        "normal client during {conns} slow readers: {}",
        normal.finish()
    );
    let first = timeline.iter().find(|(_, n)| *n > 0.0).map(|(t, _)| *t);
    let all = timeline
        .iter()
        .find(|(_, n)| *n >= conns as f64)
        .map(|(t, _)| *t);
    println!(
        "send timeouts: {} (first after ~{}s, all {} after ~{}s)",
        timeline.last().map_or(0.0, |(_, n)| *n),
        first.map_or("-".into(), |t| (t + 2).to_string()),
        conns,
        all.map_or("-".into(), |t| (t + 2).to_string())
    );
    let mut ends = Vec::new();
    let mut got = 0;
    while let Some(r) = set.join_next().await {
        let (end, n) = r?;
        ends.push(end);
        got += n;
    }
    println!(
        "slow readers: {} ({} read in all after the wait)",
        tally(ends),
        mib(got)
    );
    let (pss, tcp) = peaks.finish();
    println!(
        "cells' PSS: {} before, {} at most; kernel TCP memory at most {}",
        mib(pss0),
        mib(pss),
        mib(tcp)
    );
    Ok(())
}

async fn flood(cli: &Cli, conns: usize, secs: u64) -> anyhow::Result<()> {
    let floods: [(&str, Vec<Vec<u8>>, usize); 3] = [
        (
            "header flood (5000 fields or one 1 MiB field)",
            vec![
                clients::header_flood_request(0),
                clients::header_flood_request(1),
            ],
            1,
        ),
        (
            "pipelining flood (1000 GETs a connection)",
            vec![clients::pipeline_request(1000)],
            1000,
        ),
        (
            "tiny-chunk flood (100000 one-byte chunks a POST)",
            vec![clients::tiny_chunk_request(100_000)],
            1,
        ),
    ];
    for (what, reqs, answers) in floods {
        let reqs: Vec<Arc<Vec<u8>>> = reqs.into_iter().map(Arc::new).collect();
        let (cpu0, pss0) = (cells_cpu(cli.master), cells_pss(cli.master));
        let peaks = Peaks::start(cli.master);
        let normal = NormalClient::start(cli.addr, "/a.txt");
        let t = Instant::now();
        let until = t + Duration::from_secs(secs);
        let mut set = tokio::task::JoinSet::new();
        for c in 0..conns {
            let (addr, reqs) = (cli.addr, reqs.clone());
            set.spawn(async move {
                let mut ends = Vec::new();
                let mut k = c;
                while Instant::now() < until {
                    ends.extend(
                        clients::flood_once(addr, k, reqs[k % reqs.len()].clone(), answers).await,
                    );
                    k += conns;
                }
                ends
            });
        }
        let mut ends = Vec::new();
        while let Some(r) = set.join_next().await {
            ends.extend(r?);
        }
        let wall = t.elapsed().as_secs_f64();
        let cpu = cells_cpu(cli.master) - cpu0;
        let (pss, _) = peaks.finish();
        println!("{what}, {conns} connections for {secs} s:");
        println!("  answers: {}", tally(ends));
        println!(
            "  cells' CPU {:.2} s over {:.1} s ({:.0}% of one core); PSS {} before, {} at most",
            cpu,
            wall,
            100.0 * cpu / wall,
            mib(pss0),
            mib(pss)
        );
        println!("  normal client: {}", normal.finish());
    }
    Ok(())
}
