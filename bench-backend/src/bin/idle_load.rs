//! Idle keep-alive connections for `cargo xtask bench idle`: opens C connections, each served
//! one GET and then left idle, says how many it holds, and keeps them until its stdin closes;
//! then it says how many the server still had open. One process holds at most what
//! RLIMIT_NOFILE allows, so the xtask starts several for large counts.
#![forbid(unsafe_code)]

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "idle-load",
    about = "Holds idle keep-alive connections until stdin closes"
)]
struct Args {
    /// host:port of the server.
    addr: SocketAddr,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Number of this process's first connection among all the load processes: it picks the
    /// source addresses (127.0.0.(2 + n % 200)), so processes spread over all of them.
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// The path each connection GETs once before it idles.
    #[arg(long, default_value = "/1k.bin")]
    path: String,
}

/// Connections being opened at once.
const OPENING: usize = 128;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bench_backend::runtime()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let t = Instant::now();
    let path: Arc<str> = args.path.into();
    let sem = Arc::new(tokio::sync::Semaphore::new(OPENING));
    let mut set = tokio::task::JoinSet::new();
    for i in args.first..args.first + args.connections {
        let permit = sem.clone().acquire_owned().await?;
        let path = path.clone();
        set.spawn(async move {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                bench_backend::conn::idle(args.addr, i, &path),
            )
            .await;
            drop(permit);
            r.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        });
    }
    let mut held = Vec::with_capacity(args.connections);
    let (mut failed, mut first_error) = (0usize, None);
    while let Some(r) = set.join_next().await {
        match r.context("an opening task panicked")? {
            Ok(s) => held.push(s),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    println!("opened: {}", held.len());
    println!("failed: {failed}");
    if let Some(e) = first_error {
        println!("first error: {e}");
    }
    println!("open_s: {:.3}", t.elapsed().as_secs_f64());
    println!("ready");
    // Held until the xtask has measured the server and closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await
    .context("waiting for stdin to close")?;
    println!("still_open: {}", bench_backend::conn::still_open(&held));
    Ok(())
}
