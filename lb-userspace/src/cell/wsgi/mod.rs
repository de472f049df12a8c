//! WSGI routes in a cell: the bridge between hyper (this thread) and the route's pool of Python
//! threads. A request body up to 64 KiB is read before the app runs; a larger one, or one sent
//! with `Expect: 100-continue`, is pumped from the socket as the app reads it. The response
//! comes back as a whole body, a stream, or a file the cell maps itself.
mod request_body;
mod response;
pub mod route;

pub use route::WsgiRoute;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use wsgi_worker::{AppError, ConnInfo, Job, Pool, Reply, SubmitError};

use crate::cell::body::{Body, status_page};
use crate::cell::context::CellCtx;
use crate::config::{Config, WsgiConfig};
use crate::metrics::CellStats;
use crate::proto::Recycle;

/// Records a route's queue wait and app time into the cell's shared metrics.
#[derive(Debug)]
pub(crate) struct RouteObserver {
    pub(crate) stats: CellStats<'static>,
    /// The route's index in the metrics region.
    pub(crate) route: usize,
}

impl wsgi_worker::Observer for RouteObserver {
    fn started(&self, wait: Duration) {
        self.stats
            .observe_queue_wait(self.route, wait.as_nanos() as u64);
    }
    fn finished(&self, run: Duration, raised: bool) {
        self.stats
            .observe_app(self.route, run.as_nanos() as u64, raised);
    }
}

fn settings(w: &WsgiConfig, prefix: &str, multiprocess: bool) -> wsgi_worker::Settings {
    wsgi_worker::Settings {
        spec: w.spec().expect("validated"),
        base_dir: w.chdir.clone().unwrap_or_else(|| ".".into()),
        python_path: w.python_path.clone(),
        venv: w.venv.clone(),
        environ: w
            .environ
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        script_name: prefix.trim_end_matches('/').to_string(),
        threads: w.threads as usize,
        max_queue: w.max_queue as usize,
        queue_timeout: w.queue_timeout.0,
        trusted_proxies: w
            .trusted_proxies
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
        pass_authorization: w.pass_authorization,
        multiprocess,
        observer: None,
    }
}

/// Imports every WSGI route's app and starts its threads; index-aligned with `cfg.routes`.
/// `stats`: the cell's metrics (None in the import check).
pub fn start_pools(
    cfg: &Config,
    cells: usize,
    stats: Option<CellStats<'static>>,
) -> Result<Vec<Option<WsgiRoute>>, AppError> {
    let mut out = Vec::with_capacity(cfg.routes.len());
    for (i, r) in cfg.routes.iter().enumerate() {
        out.push(match &r.wsgi {
            None => None,
            Some(w) => Some(WsgiRoute {
                pool: Pool::start(wsgi_worker::Settings {
                    observer: stats.map(|stats| {
                        Arc::new(RouteObserver {
                            stats,
                            route: i + 1,
                        }) as Arc<dyn wsgi_worker::Observer>
                    }),
                    ..settings(w, &r.prefix, cells > 1)
                })?,
                request_timeout: w.request_timeout.0,
                grace: w.request_timeout_grace.0,
                queue_timeout: w.queue_timeout.0,
                allow_ranges: w.allow_ranges,
            }),
        });
    }
    Ok(out)
}

/// Takes a WSGI request out of the cell's steering load when its call ends, however it ends.
struct InFlight<'a>(&'a crate::ebpf::cell_load::CellLoadEntry, u64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.wsgi_finished(self.1);
    }
}

/// Runs one request through the route's app. Returns the response and whether to close after it.
pub async fn call(
    ctx: Rc<CellCtx>,
    route: usize,
    parts: Parts,
    body: Incoming,
    path_info: String,
    conn: Arc<ConnInfo>,
) -> (Response<Body>, bool) {
    let Some(w) = ctx.router.wsgi(route) else {
        return (status_page(StatusCode::NOT_FOUND), false);
    };
    let is_head = parts.method == http::Method::HEAD;
    let failed: request_body::BodyFailure = Rc::new(Cell::new(None));
    let max = ctx.limits.max_body_size.0;
    let source =
        match request_body::source(&parts.headers, body, max, w.request_timeout, &failed).await {
            Ok(s) => s,
            Err(status) => return (status_page(status), true),
        };
    let range = if w.allow_ranges {
        parts
            .headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    } else {
        None
    };
    // For the timeout log line only; both clones are reference-counted, not copied.
    let what = Request {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    let job = Job {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        conn,
        path_info,
        body: source,
        reply: reply_tx,
        enqueued: std::time::Instant::now(),
        id: 0,
    };
    ctx.app_request();
    // Counted in the cell's steering load until the response head is ready (or fails).
    let _in_flight = ctx.load.as_ref().map(|l| InFlight(l, l.wsgi_started()));
    let id = match w.pool.submit(job) {
        Ok(id) => id,
        Err(SubmitError::QueueFull) => {
            ctx.stats
                .add(crate::metrics::cell_counter::WSGI_QUEUE_FULL, 1);
            return (unavailable(), false);
        }
        Err(SubmitError::Closed) => return (status_page(StatusCode::SERVICE_UNAVAILABLE), true),
    };
    // The deadline counts from submission; it is extended only while the job is still queued
    // (the queue has queue_timeout).
    let started = tokio::time::Instant::now();
    let mut deadline = started + w.request_timeout;
    let queue_deadline = started + w.queue_timeout + Duration::from_millis(50);
    tokio::pin!(reply_rx);
    let reply = loop {
        match tokio::time::timeout_at(deadline, &mut reply_rx).await {
            Ok(r) => break r,
            Err(_) => {
                if !w.pool.running(id) && tokio::time::Instant::now() < queue_deadline {
                    // Still queued: the thread will answer 503 at queue_timeout, or start it.
                    deadline = tokio::time::Instant::now() + w.request_timeout;
                    continue;
                }
                timed_out(&ctx, route, id, what);
                return (status_page(StatusCode::GATEWAY_TIMEOUT), false);
            }
        }
    };
    if let Some(status) = failed.get() {
        // The body broke while the app read it: the client's error, never a 500.
        return (status_page(status), true);
    }
    match reply {
        Err(_) => (status_page(StatusCode::INTERNAL_SERVER_ERROR), false),
        Ok(Reply::Error {
            status,
            retry_after,
        }) => {
            if retry_after {
                ctx.stats
                    .add(crate::metrics::cell_counter::WSGI_QUEUE_TIMEOUTS, 1);
                (unavailable(), false)
            } else {
                (status_page(status), false)
            }
        }
        Ok(Reply::Response(head, out)) => {
            let stream_deadline = deadline;
            let c = ctx.clone();
            response::build(
                &ctx,
                head,
                out,
                is_head,
                range.as_deref(),
                stream_deadline,
                Box::new(move || timed_out(&c, route, id, what)),
            )
        }
    }
}

/// 503 with Retry-After: the queue is full or the wait was too long.
fn unavailable() -> Response<Body> {
    let mut r = status_page(StatusCode::SERVICE_UNAVAILABLE);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Names a request in log lines.
struct Request {
    method: http::Method,
    uri: http::Uri,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = self
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        write!(f, "{} {target}", self.method)
    }
}

/// A request ran past request_timeout: interrupt it, and recycle the cell if it does not return
/// within the grace period.
fn timed_out(ctx: &Rc<CellCtx>, route: usize, id: u64, what: Request) {
    let Some(w) = ctx.router.wsgi(route) else {
        return;
    };
    ctx.stats
        .add(crate::metrics::cell_counter::WSGI_REQUEST_TIMEOUTS, 1);
    w.pool.interrupt(id, what.to_string());
    let ctx = ctx.clone();
    let grace = w.grace;
    tokio::task::spawn_local(async move {
        tokio::time::sleep(grace).await;
        if let Some(w) = ctx.router.wsgi(route)
            && w.pool.running(id)
        {
            tracing::error!(
                "{what} did not return within request_timeout_grace ({grace:?}) after RequestTimeout; recycling this cell"
            );
            ctx.recycle(Recycle::RequestTimeout);
        }
    });
}
