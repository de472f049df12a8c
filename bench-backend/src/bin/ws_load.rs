//! WebSocket echo load for `cargo xtask bench proxy`: C connections, each sending one message
//! and waiting for its echo before the next, for a fixed time; prints messages/s and latency.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    name = "ws-load",
    about = "WebSocket echo load: messages/s and p50 to p99.99 latency"
)]
struct Args {
    /// ws://host:port/path of an echo endpoint.
    url: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of load once every connection is open.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Bytes per (binary) message.
    #[arg(long, default_value_t = 64)]
    size: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bench_backend::runtime()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut conns = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (ws, resp) = tokio_tungstenite::connect_async_with_config(&args.url, None, true)
            .await
            .with_context(|| format!("connection {i} to {}", args.url))?;
        if resp.status() != 101 {
            bail!("connection {i}: status {}", resp.status());
        }
        conns.push(ws);
    }
    let payload = Bytes::from(vec![b'm'; args.size]);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let mut tasks = tokio::task::JoinSet::new();
    for mut ws in conns {
        let payload = payload.clone();
        tasks.spawn(async move {
            let mut lat_us: Vec<u32> = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                ws.send(Message::Binary(payload.clone())).await?;
                loop {
                    match ws.next().await.context("closed before the echo")?? {
                        Message::Binary(b) if b.len() == payload.len() => break,
                        Message::Ping(_) | Message::Pong(_) => {}
                        other => bail!("unexpected echo {other:?}"),
                    }
                }
                lat_us.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            ws.close(None).await.ok();
            anyhow::Ok(lat_us)
        });
    }
    let mut lat: Vec<u32> = Vec::new();
    let mut errors = 0usize;
    while let Some(r) = tasks.join_next().await {
        match r.context("load task panicked")? {
            Ok(v) => lat.extend(v),
            Err(e) => {
                errors += 1;
                eprintln!("ws-load: {e:#}");
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if errors > 0 {
        bail!("{errors} of {} connections failed", args.connections);
    }
    if lat.is_empty() {
        bail!("no message echoed in {secs:.1}s");
    }
    bench_backend::print_report("messages", &mut lat, secs, None);
    Ok(())
}
