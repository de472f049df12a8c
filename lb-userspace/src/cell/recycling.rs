//! The recycling limits a cell watches itself (`max_requests` with jitter, `max_rss`,
//! `lifetime`, `inactivity_timeout`, changed sources) for its WSGI and ASGI routes alike, and
//! the WSGI gauges it publishes.
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use crate::cell::context::CellCtx;
use crate::config::{Config, Recycling};
use crate::proto::Recycle;

/// The recycling limits of every app route (WSGI and ASGI) of the configuration.
fn limits(cfg: &Config) -> Vec<Recycling> {
    cfg.routes
        .iter()
        .filter_map(crate::config::RouteConfig::recycling)
        .collect()
}

/// This cell's `max_requests`: the configured value plus up to `max_requests_jitter`, chosen
/// per process so cells do not all recycle at once.
pub fn max_requests(cfg: &Config) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let Some(w) = limits(cfg)
        .into_iter()
        .filter(|w| w.max_requests > 0)
        .min_by_key(|w| w.max_requests)
    else {
        return 0;
    };
    if w.max_requests_jitter == 0 {
        return w.max_requests;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    w.max_requests + h.finish() % (w.max_requests_jitter + 1)
}

/// Resident memory of this process in bytes.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

fn mtimes(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Five times a second: the WSGI queue depth and busy threads, for `/metrics` and `/status`.
pub async fn publish_wsgi_gauges(ctx: Rc<CellCtx>) {
    use crate::metrics::cell_counter;
    if ctx.router.wsgi_routes().next().is_none() {
        return;
    }
    let threads: usize = ctx.router.wsgi_routes().map(|w| w.pool.threads()).sum();
    ctx.stats.set(cell_counter::WSGI_THREADS, threads as u64);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let (mut queued, mut busy) = (0, 0);
        for w in ctx.router.wsgi_routes() {
            queued += w.pool.queued();
            busy += w
                .pool
                .stats()
                .busy_threads
                .load(std::sync::atomic::Ordering::Relaxed);
        }
        ctx.stats.set(cell_counter::WSGI_QUEUE_DEPTH, queued as u64);
        ctx.stats.set(cell_counter::WSGI_THREADS_BUSY, busy as u64);
    }
}

/// Once a second: the recycling limits that are not per request.
pub async fn watch(ctx: Rc<CellCtx>, cfg: Config) {
    let apps = limits(&cfg);
    if apps.is_empty() {
        return;
    }
    let lifetime = apps.iter().filter_map(|w| w.lifetime).map(|d| d.0).min();
    let inactivity = apps
        .iter()
        .filter_map(|w| w.inactivity_timeout)
        .map(|d| d.0)
        .min();
    let max_rss = apps
        .iter()
        .map(|w| w.max_rss)
        .filter(|m| *m > 0)
        .min()
        .map(|m| m << 20);
    let reload = cfg.routes.iter().any(|r| {
        r.wsgi.as_ref().is_some_and(|w| w.reload) || r.asgi.as_ref().is_some_and(|a| a.reload)
    });
    let sources: Vec<PathBuf> = if reload {
        let wsgi = ctx.router.wsgi_routes().flat_map(|w| w.pool.sources());
        let asgi = ctx.router.asgi_routes().flat_map(|a| a.app.sources());
        let mut all: Vec<PathBuf> = wsgi.chain(asgi).cloned().collect();
        all.sort();
        all.dedup();
        all
    } else {
        Vec::new()
    };
    let seen = mtimes(&sources);
    let born = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if ctx.recycling.get() {
            return;
        }
        if lifetime.is_some_and(|l| born.elapsed() >= l) {
            ctx.recycle(Recycle::Lifetime);
        } else if inactivity.is_some_and(|i| ctx.last_app_request.get().elapsed() >= i) {
            ctx.recycle(Recycle::Inactivity);
        } else if let Some(limit) = max_rss
            && rss_bytes().is_some_and(|r| r > limit)
        {
            tracing::warn!("resident memory above max_rss ({} MiB)", limit >> 20);
            ctx.recycle(Recycle::MaxRss);
        } else if !sources.is_empty() && mtimes(&sources) != seen {
            tracing::info!("a Python source file of the app changed");
            ctx.recycle(Recycle::SourceChange);
        }
    }
}
