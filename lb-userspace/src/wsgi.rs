//! WSGI routes in a cell: the bridge between hyper (this thread) and the route's pool of Python
//! threads. The request body is pumped from the socket only when the app reads it; the response
//! comes back as a whole body, a stream, or a file the cell maps itself.
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};
use wsgi_worker::{AppError, BodyOut, BodySource, ConnInfo, Head, Job, Pool, Reply, SubmitError};

use crate::body::{Body, Stream, status_page};
use crate::config::{Config, WsgiConfig};
use crate::http::CellCtx;
use crate::metrics::CellStats;
use crate::static_files::{RangeOutcome, parse_ranges};

/// One WSGI route as a cell runs it.
pub struct WsgiRoute {
    pub pool: Pool,
    pub request_timeout: Duration,
    pub grace: Duration,
    pub queue_timeout: Duration,
    pub allow_ranges: bool,
}

/// Records a route's queue wait and app time into the cell's shared metrics.
#[derive(Debug)]
struct RouteObserver {
    stats: CellStats<'static>,
    slot: usize,
}

impl wsgi_worker::Observer for RouteObserver {
    fn started(&self, wait: Duration) {
        self.stats
            .observe_queue_wait(self.slot, wait.as_nanos() as u64);
    }
    fn finished(&self, run: Duration, raised: bool) {
        self.stats
            .observe_app(self.slot, run.as_nanos() as u64, raised);
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
                        Arc::new(RouteObserver { stats, slot: i + 1 })
                            as Arc<dyn wsgi_worker::Observer>
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

/// Why a cell asks the master to replace it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recycle {
    MaxRequests,
    MaxRss,
    Lifetime,
    Inactivity,
    RequestTimeout,
    SourceChange,
}

impl Recycle {
    pub const ALL: [Recycle; 6] = [
        Recycle::MaxRequests,
        Recycle::MaxRss,
        Recycle::Lifetime,
        Recycle::Inactivity,
        Recycle::RequestTimeout,
        Recycle::SourceChange,
    ];
    /// The byte on the cell -> master pipe.
    pub fn byte(self) -> u8 {
        match self {
            Recycle::MaxRequests => b'm',
            Recycle::MaxRss => b'r',
            Recycle::Lifetime => b'l',
            Recycle::Inactivity => b'i',
            Recycle::RequestTimeout => b't',
            Recycle::SourceChange => b's',
        }
    }
    pub fn from_byte(b: u8) -> Option<Recycle> {
        Recycle::ALL.into_iter().find(|r| r.byte() == b)
    }
    /// The `reason` label of `portico_cell_restarts_total`.
    pub fn label(self) -> &'static str {
        match self {
            Recycle::MaxRequests => "max_requests",
            Recycle::MaxRss => "max_rss",
            Recycle::Lifetime => "lifetime",
            Recycle::Inactivity => "inactivity",
            Recycle::RequestTimeout => "timeout",
            Recycle::SourceChange => "source_change",
        }
    }
}

/// Request bodies up to this size (with Content-Length, without 100-continue) are read before
/// the app runs.
const PREREAD_LIMIT: u64 = 64 * 1024;

/// Upper bound on a request body the app did not read that the cell still reads and discards to
/// keep the connection; beyond it the connection is closed instead.
const DRAIN_LIMIT: u64 = 1 << 20;

/// Moves the request body from hyper to the app's thread, starting only when the app reads it
/// (so `Expect: 100-continue` is answered only then).
async fn pump(
    mut body: Incoming,
    want: oneshot::Receiver<()>,
    tx: mpsc::Sender<Result<Bytes, String>>,
    max: u64,
    expects_continue: bool,
) {
    let wanted = want.await.is_ok();
    if !wanted && expects_continue {
        // The client has not sent the body; dropping it makes hyper close instead of asking.
        return;
    }
    let mut forward = wanted;
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Err(e) => {
                if forward {
                    let _ = tx.send(Err(e.to_string())).await;
                }
                return;
            }
            Ok(f) => {
                let Ok(data) = f.into_data() else { continue };
                total += data.len() as u64;
                if total > max {
                    if forward {
                        let _ = tx
                            .send(Err("request body exceeds limits.max_body_size".into()))
                            .await;
                    }
                    return;
                }
                if !forward && total > DRAIN_LIMIT {
                    return;
                }
                if forward && tx.send(Ok(data)).await.is_err() {
                    // The request finished without reading everything: drain, keep the connection.
                    forward = false;
                }
            }
        }
    }
}

/// Takes a WSGI request out of the cell's steering load when its call ends, however it ends.
struct InFlight<'a>(&'a crate::cell_load::CellLoadSlot, u64);

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
    let has_body = parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let expects_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let small = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .filter(|n| *n > 0 && *n <= PREREAD_LIMIT);
    let source = if let (Some(_), false) = (small, expects_continue) {
        // Small bodies are read here first (nginx's client_body_buffer_size): the app's thread
        // then finds the whole body ready instead of waiting on this thread for each chunk.
        match body.collect().await {
            Ok(all) => Some(BodySource::ready(all.to_bytes())),
            Err(e) => {
                tracing::debug!("reading a request body: {e}");
                return (status_page(StatusCode::BAD_REQUEST), true);
            }
        }
    } else if has_body {
        let (want_tx, want_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_local(pump(
            body,
            want_rx,
            tx,
            ctx.limits.max_body_size.0,
            expects_continue,
        ));
        Some(BodySource {
            want: Some(want_tx),
            rx,
            ready: None,
        })
    } else {
        drop(body);
        None
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
    ctx.wsgi_request();
    // Counted in the cell's steering load until the response head is ready (or fails).
    let _in_flight = ctx.load.as_ref().map(|l| InFlight(l, l.wsgi_started()));
    let id = match w.pool.submit(job) {
        Ok(id) => id,
        Err(SubmitError::QueueFull) => {
            ctx.stats.add(crate::metrics::slot::WSGI_QUEUE_FULL, 1);
            return (unavailable(), false);
        }
        Err(SubmitError::Closed) => return (status_page(StatusCode::SERVICE_UNAVAILABLE), true),
    };
    // The deadline covers the run, not the wait in the queue (that has queue_timeout).
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
    match reply {
        Err(_) => (status_page(StatusCode::INTERNAL_SERVER_ERROR), false),
        Ok(Reply::Error {
            status,
            retry_after,
        }) => {
            if retry_after {
                ctx.stats.add(crate::metrics::slot::WSGI_QUEUE_TIMEOUTS, 1);
                (unavailable(), false)
            } else {
                (status_page(status), false)
            }
        }
        Ok(Reply::Response(head, out)) => {
            let stream_deadline = deadline;
            let c = ctx.clone();
            build(
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

/// A request ran past request_timeout: interrupt it, and recycle the cell if it does not return
/// within the grace period.
/// Names a request in log lines.
struct Request {
    method: http::Method,
    uri: http::Uri,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        write!(f, "{} {target}", self.method)
    }
}

fn timed_out(ctx: &Rc<CellCtx>, route: usize, id: u64, what: Request) {
    let Some(w) = ctx.router.wsgi(route) else {
        return;
    };
    ctx.stats
        .add(crate::metrics::slot::WSGI_REQUEST_TIMEOUTS, 1);
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

fn build(
    ctx: &CellCtx,
    head: Head,
    out: BodyOut,
    is_head: bool,
    range: Option<&str>,
    deadline: tokio::time::Instant,
    on_timeout: Box<dyn FnOnce()>,
) -> (Response<Body>, bool) {
    let Head {
        status,
        reason,
        headers,
        content_length,
    } = head;
    let mut status = status;
    let mut extra: Vec<(header::HeaderName, HeaderValue)> = Vec::new();
    let mut keep_app_length = true;
    let body = match out {
        BodyOut::Full(chunks) => {
            let b = Body::many(chunks);
            if let Some(cl) = content_length
                && cl != b.len()
                && !(is_head && b.is_empty())
            {
                tracing::warn!(
                    "WSGI app declared Content-Length {cl} but returned {} bytes; sending what it returned",
                    b.len()
                );
                keep_app_length = false;
            }
            if is_head && b.is_empty() && content_length.is_some() {
                Body::empty()
            } else {
                b
            }
        }
        BodyOut::Stream { first, rx } => Body::stream(
            first,
            Stream {
                rx,
                declared: if is_head { None } else { content_length },
                sent: 0,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                on_timeout: Some(on_timeout),
                stats: ctx.stats,
            },
        ),
        BodyOut::File { file, offset, len } => {
            let mut start = offset;
            let mut len = content_length.map_or(len, |cl| cl.min(len));
            if let Some(r) = range
                && status == StatusCode::OK
            {
                match parse_ranges(r, len) {
                    RangeOutcome::Ranges(rs) if rs.len() == 1 => {
                        let (first, last) = rs[0];
                        status = StatusCode::PARTIAL_CONTENT;
                        extra.push((
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes {first}-{last}/{len}"))
                                .expect("ascii"),
                        ));
                        start += first;
                        len = last - first + 1;
                        keep_app_length = false;
                    }
                    RangeOutcome::Unsatisfiable => {
                        let mut r = status_page(StatusCode::RANGE_NOT_SATISFIABLE);
                        r.headers_mut().insert(
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
                        );
                        return (r, false);
                    }
                    _ => {}
                }
                extra.push((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
            }
            match map_region(&file, start, len) {
                Ok(b) => Body::file(b, Arc::new(file), start),
                Err(e) => {
                    tracing::error!("wsgi.file_wrapper: {e}");
                    return (status_page(StatusCode::INTERNAL_SERVER_ERROR), false);
                }
            }
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Some(reason) = reason
        && let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason)
    {
        resp.extensions_mut().insert(r);
    }
    let h = resp.headers_mut();
    for (n, v) in headers {
        if n == header::CONTENT_LENGTH && !keep_app_length {
            continue;
        }
        h.append(n, v);
    }
    for (n, v) in extra {
        h.insert(n, v);
    }
    if !keep_app_length && !resp.body().is_stream() {
        let len = resp.body().len();
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    (resp, false)
}

/// A file region as `Bytes` backed by a private mapping (no copy through userspace buffers).
fn map_region(file: &std::fs::File, start: u64, len: u64) -> std::io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let end = start + len;
    let map = crate::sys::map_file(file, end as usize).map_err(std::io::Error::other)?;
    Ok(Bytes::from_owner(map).slice(start as usize..end as usize))
}
