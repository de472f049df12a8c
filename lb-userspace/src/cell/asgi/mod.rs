//! ASGI routes in a cell: each request is handed to the cell's one event loop thread
//! (`wsgi_worker::asgi`), and this thread drives the exchange without the GIL: it reads the
//! request body only when the app's `receive` waits for it, builds the response once the app
//! has sent its head and first body piece, streams the rest with flow control, and tells the
//! app when the client is gone or the response is complete (`http.disconnect`).
pub mod handshake;
pub mod route;
pub mod websocket;

pub use route::AsgiRoute;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use wsgi_worker::asgi::{AsgiApp, AsgiSettings, Exchange, Lifespan, Mount, Out, RequestHead};
use wsgi_worker::{AppError, ConnInfo, Piece};

use crate::cell::body::{Body, Stream, status_page};
use crate::cell::context::CellCtx;
use crate::config::{Config, LifespanMode};
use crate::metrics::CellStats;

/// Longest wait for the app's lifespan startup (and shutdown) to answer.
const LIFESPAN_TIMEOUT: Duration = Duration::from_secs(60);

/// Imports every ASGI route's app and nothing more (`portico app-check`): the lifespan
/// startup runs in the cells only, and a failure there stops `portico serve` (the supervisor).
pub fn import_apps(cfg: &Config) -> Result<(), AppError> {
    for a in cfg.routes.iter().filter_map(|r| r.asgi.as_ref()) {
        wsgi_worker::asgi::import(
            &a.spec().expect("validated"),
            &wsgi_worker::LoadPaths {
                base_dir: a.chdir.as_deref().unwrap_or(std::path::Path::new(".")),
                python_path: &a.python_path,
                venv: a.venv.as_deref(),
            },
        )?;
    }
    Ok(())
}

/// Imports every ASGI route's app, starts the cell's event loop thread for them and runs
/// their lifespan startups; index-aligned with `cfg.routes`. `stats`: the cell's metrics (None
/// with `[metrics] enabled = false`).
pub fn start_apps(
    cfg: &Config,
    stats: Option<CellStats<'static>>,
) -> Result<Vec<Option<AsgiRoute>>, AppError> {
    let routes: Vec<(usize, &str, &crate::config::AsgiConfig)> = cfg
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, r.prefix.as_str(), r.asgi.as_ref()?)))
        .collect();
    // validate() made every ASGI route agree on `loop`.
    let uvloop = routes
        .iter()
        .any(|(_, _, a)| a.event_loop == crate::config::EventLoop::Uvloop);
    let settings = routes
        .iter()
        .map(|&(i, prefix, a)| AsgiSettings {
            spec: a.spec().expect("validated"),
            base_dir: a.chdir.clone().unwrap_or_else(|| ".".into()),
            python_path: a.python_path.clone(),
            venv: a.venv.clone(),
            lifespan: match a.lifespan {
                LifespanMode::Auto => Lifespan::Auto,
                LifespanMode::On => Lifespan::On,
                LifespanMode::Off => Lifespan::Off,
            },
            mount: Mount::new(
                &a.root_path,
                prefix,
                a.trusted_proxies
                    .iter()
                    .filter_map(|p| p.parse().ok())
                    .collect(),
            ),
            lifespan_timeout: LIFESPAN_TIMEOUT,
            observer: stats.map(|stats| {
                Arc::new(crate::cell::wsgi::RouteObserver {
                    stats,
                    route: i + 1,
                }) as Arc<dyn wsgi_worker::Observer>
            }),
        })
        .collect();
    let mut out: Vec<Option<AsgiRoute>> = cfg.routes.iter().map(|_| None).collect();
    for (app, &(i, _, a)) in AsgiApp::start_all(settings, uvloop)?
        .into_iter()
        .zip(&routes)
    {
        out[i] = Some(AsgiRoute {
            app,
            request_timeout: a.request_timeout.0,
            max_concurrency: a.max_concurrency as usize,
            websocket_max_message: a.websocket_max_message.0 as usize,
            websocket_idle_timeout: a.websocket_idle_timeout.map(|d| d.0),
            running: std::cell::Cell::new(0),
        });
    }
    Ok(out)
}

/// Counts a request in its route's `running` until the app's call ends (or the exchange is
/// given up); tells the app the client is gone if the exchange ends before the app does.
struct Running {
    ctx: Rc<CellCtx>,
    route: usize,
    rid: u64,
    app_done: bool,
}

impl Running {
    /// Counts the request in its route's `running`.
    fn new(ctx: Rc<CellCtx>, route: usize, rid: u64) -> Self {
        if let Some(a) = ctx.router.asgi(route) {
            a.running.set(a.running.get() + 1);
        }
        Running {
            ctx,
            route,
            rid,
            app_done: false,
        }
    }
}

/// The route for a request, counted as one; `404` for no such route, `503` when it runs
/// `max_concurrency` requests already.
fn admit(ctx: &CellCtx, route: usize) -> Result<&AsgiRoute, StatusCode> {
    let a = ctx.router.asgi(route).ok_or(StatusCode::NOT_FOUND)?;
    if a.running.get() >= a.max_concurrency {
        ctx.stats
            .add(crate::metrics::cell_counter::WSGI_QUEUE_FULL, 1);
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    ctx.app_request();
    Ok(a)
}

/// The answer to a request `admit` turned away (a 503 says when to come back, and closes).
fn refusal(status: StatusCode) -> (Response<Body>, bool) {
    let mut r = status_page(status);
    if status != StatusCode::SERVICE_UNAVAILABLE {
        return (r, false);
    }
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    (r, true)
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(a) = self.ctx.router.asgi(self.route) {
            a.running.set(a.running.get().saturating_sub(1));
            if !self.app_done {
                a.app.disconnect(self.rid);
            }
        }
    }
}

/// Whether a list-valued header (`Connection`, `Upgrade`, `TE`) has `token`.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// The request body as the app asks for it.
struct BodyIn {
    body: Option<Incoming>,
    total: u64,
    max: u64,
}

impl BodyIn {
    /// The next piece for `receive`: (bytes, more), or the status that ends the request.
    async fn next(&mut self) -> Result<(Bytes, bool), StatusCode> {
        let Some(b) = self.body.as_mut() else {
            // The body was all delivered: `receive` waits for `http.disconnect`.
            return std::future::pending().await;
        };
        loop {
            match b.frame().await {
                None => {
                    self.body = None;
                    return Ok((Bytes::new(), false));
                }
                Some(Err(e)) => {
                    tracing::info!("client error: malformed request body ({e})");
                    self.body = None;
                    return Err(StatusCode::BAD_REQUEST);
                }
                Some(Ok(f)) => {
                    let Ok(data) = f.into_data() else { continue };
                    self.total += data.len() as u64;
                    if self.total > self.max {
                        self.body = None;
                        return Err(StatusCode::PAYLOAD_TOO_LARGE);
                    }
                    let more = !hyper::body::Body::is_end_stream(b);
                    if !more {
                        self.body = None;
                    }
                    return Ok((data, more));
                }
            }
        }
    }
}

/// Runs one request through the route's app. Returns the response and whether to close after it.
pub async fn call(
    ctx: Rc<CellCtx>,
    route: usize,
    parts: Parts,
    body: Incoming,
    conn: Arc<ConnInfo>,
) -> (Response<Body>, bool) {
    let a = match admit(&ctx, route) {
        Ok(a) => a,
        Err(status) => return refusal(status),
    };
    let is_head = parts.method == http::Method::HEAD;
    let te_trailers = has_token(&parts.headers, header::TE, "trailers");
    // For error lines only: formatted when one is written, not per request.
    let what = What(parts.method.clone(), parts.uri.clone());
    let mut x = a.app.submit(RequestHead {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        conn,
        websocket: false,
    });
    let mut running = Running::new(ctx.clone(), route, x.rid);
    let mut input = BodyIn {
        body: Some(body),
        total: 0,
        max: ctx.limits.max_body_size.0,
    };
    let deadline = tokio::time::Instant::now() + a.request_timeout;
    let mut want = false;
    let mut head = None;
    // Until the head and the first body piece: the app may read the body meanwhile.
    loop {
        tokio::select! {
            ev = x.events.recv() => match ev {
                Some(Out::Want) => want = true,
                // WebSocket events (the sink refuses them on an http scope), and trailers
                // (the sink wants the last body first).
                Some(
                    Out::Accept { .. }
                    | Out::Message(_)
                    | Out::Close { .. }
                    | Out::Received
                    | Out::Trailers { .. },
                ) => {}
                Some(Out::Start { status, headers, trailers }) => {
                    head = Some((status, headers, trailers));
                }
                Some(Out::Body { data, more }) => {
                    let Some((status, headers, trailers)) = head.take() else {
                        // The sink refuses body before start; never reached.
                        return (status_page(StatusCode::INTERNAL_SERVER_ERROR), true);
                    };
                    a.app.sent(&x, data.len());
                    let resp = respond(&ctx, status, headers, data, more, is_head, StreamTo {
                        route, x, running, input, want, deadline,
                        trailers: trailers.then_some(te_trailers),
                        trailer_names: Vec::new(),
                    });
                    return (resp, false);
                }
                Some(Out::Finished { error }) => {
                    running.app_done = true;
                    if let Some((status, headers, _)) = head.take()
                        && error.is_none()
                    {
                        // Start without a body: an empty one.
                        a.app.disconnect(x.rid);
                        let resp = head_only(status, headers);
                        return (resp, false);
                    }
                    match error {
                        Some(tb) => tracing::error!(
                            "ASGI app raised before the response started ({what}); 500:\n{}",
                            tb.trim_end()
                        ),
                        None => tracing::error!(
                            "ASGI app returned without sending http.response.start ({what}); 500"
                        ),
                    }
                    return (status_page(StatusCode::INTERNAL_SERVER_ERROR), false);
                }
                None => return (status_page(StatusCode::INTERNAL_SERVER_ERROR), true),
            },
            piece = input.next(), if want => {
                want = false;
                match piece {
                    Ok((data, more)) => a.app.body(x.rid, data, more),
                    Err(status) => {
                        a.app.cancel(x.rid);
                        return (status_page(status), true);
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                timed_out(&ctx, a, &x, &what);
                return (status_page(StatusCode::GATEWAY_TIMEOUT), true);
            }
        }
    }
}

/// A request as error lines name it: method and target.
struct What(http::Method, http::Uri);

impl std::fmt::Display for What {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = self.1.path_and_query().map_or("/", |p| p.as_str());
        write!(f, "{} {target}", self.0)
    }
}

fn timed_out(ctx: &CellCtx, a: &AsgiRoute, x: &Exchange, what: &dyn std::fmt::Display) {
    ctx.stats
        .add(crate::metrics::cell_counter::WSGI_REQUEST_TIMEOUTS, 1);
    tracing::error!(
        "{what} ran past request_timeout ({:?}); cancelling its task",
        a.request_timeout
    );
    a.app.cancel(x.rid);
}

fn head_only(
    status: StatusCode,
    headers: Vec<(header::HeaderName, HeaderValue)>,
) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    for (n, v) in headers {
        resp.headers_mut().append(n, v);
    }
    resp
}

/// What the rest of a streamed response needs.
struct StreamTo {
    route: usize,
    x: Exchange,
    running: Running,
    input: BodyIn,
    want: bool,
    deadline: tokio::time::Instant,
    /// The app said `trailers: True`: its trailers end the response (sent when the client
    /// asked for them with `TE: trailers`, the value here; else dropped, as the spec allows).
    trailers: Option<bool>,
    /// The fields the response's `Trailer` header names: hyper sends only those.
    trailer_names: Vec<header::HeaderName>,
}

/// The response from the head and the first body piece: whole if that was all (and no
/// trailers follow), else a stream fed by a task that keeps driving the exchange.
fn respond(
    ctx: &Rc<CellCtx>,
    status: StatusCode,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    first: Bytes,
    more: bool,
    is_head: bool,
    mut rest: StreamTo,
) -> Response<Body> {
    let more = more || rest.trailers.is_some();
    // Trailers the client gets need a chunked body: an app's Content-Length would make hyper
    // send a fixed-length one and drop them.
    let drop_length = rest.trailers == Some(true) && !is_head;
    rest.trailer_names = headers
        .iter()
        .filter(|(n, _)| n == header::TRAILER)
        .flat_map(|(_, v)| v.to_str().unwrap_or("").split(','))
        .filter_map(|n| header::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let declared = headers
        .iter()
        .find(|(n, _)| n == header::CONTENT_LENGTH)
        .and_then(|(_, v)| v.to_str().ok()?.parse::<u64>().ok());
    let body = if more {
        let (tx, rx) = mpsc::channel(4);
        let c = ctx.clone();
        let (route, rid) = (rest.route, rest.x.rid);
        let stream = Stream {
            rx,
            declared: if is_head || drop_length {
                None
            } else {
                declared
            },
            sent: 0,
            deadline: Box::pin(tokio::time::sleep_until(rest.deadline)),
            on_timeout: Some(Box::new(move || {
                if let Some(a) = c.router.asgi(route) {
                    c.stats
                        .add(crate::metrics::cell_counter::WSGI_REQUEST_TIMEOUTS, 1);
                    tracing::error!(
                        "an ASGI response ran past request_timeout; cancelling its task"
                    );
                    a.app.cancel(rid);
                }
            })),
            stats: ctx.stats,
        };
        tokio::task::spawn_local(stream_rest(ctx.clone(), tx, rest));
        Body::stream(first, stream)
    } else {
        rest_done(ctx, rest);
        Body::one(first)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    for (n, v) in headers {
        if n == header::CONTENT_LENGTH && ((!more && !is_head) || drop_length) {
            // A whole body gets its own, true length (a HEAD answer keeps the app's).
            continue;
        }
        resp.headers_mut().append(n, v);
    }
    if !more && !is_head {
        let len = resp.body().len();
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    resp
}

/// The response is complete with its first piece: `receive` now returns `http.disconnect`,
/// and the app's call is followed to its end (background tasks run in it).
fn rest_done(ctx: &Rc<CellCtx>, mut rest: StreamTo) {
    // Most apps return right after their last body piece, so their end is often queued
    // already: then there is no one left to tell and nothing to follow.
    while let Some(ev) = rest.x.events.try_recv() {
        if let Out::Finished { error } = ev {
            finished_after_response(&mut rest, error);
            return;
        }
    }
    if let Some(a) = ctx.router.asgi(rest.route) {
        a.app.disconnect(rest.x.rid);
    }
    tokio::task::spawn_local(follow(rest));
}

/// The app's call ended after its whole response went out.
fn finished_after_response(rest: &mut StreamTo, error: Option<String>) {
    rest.running.app_done = true;
    if let Some(tb) = error {
        tracing::error!("ASGI app raised after its response:\n{}", tb.trim_end());
    }
}

/// Waits for the app's call to end after its response, logging an exception raised then.
async fn follow(mut rest: StreamTo) {
    while let Some(ev) = rest.x.events.recv().await {
        if let Out::Finished { error } = ev {
            finished_after_response(&mut rest, error);
            return;
        }
    }
}

/// Says once per cell that trailer fields not named in the response's `Trailer` header are
/// dropped (hyper sends only the named ones, as RFC 9110 section 6.6.2 asks).
fn undeclared(fields: &HeaderMap, named: &[header::HeaderName]) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Some(name) = fields.keys().find(|n| !named.contains(n))
        && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!(
            "ASGI trailer field {name} dropped: the response's Trailer header does not name it (said once)"
        );
    }
}

/// Moves the app's further body pieces to the client, reads the request body when asked, and
/// tells the app when the client leaves.
async fn stream_rest(ctx: Rc<CellCtx>, tx: mpsc::Sender<Piece>, mut rest: StreamTo) {
    let route = rest.route;
    let mut tx = Some(tx);
    let mut trailers = HeaderMap::new();
    loop {
        let closed = async {
            match &tx {
                Some(t) => t.closed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rest.x.events.recv() => match ev {
                Some(Out::Body { data, more }) => {
                    let n = data.len();
                    let gone = match &tx {
                        Some(t) => t.send(Piece::Data(data)).await.is_err(),
                        None => false,
                    };
                    // The client left, or the response is complete (unless trailers follow).
                    let end = gone || (!more && rest.trailers.is_none());
                    if let Some(a) = ctx.router.asgi(route).map(|a| &a.app) {
                        a.sent(&rest.x, n);
                        if end {
                            a.disconnect(rest.x.rid);
                        }
                    }
                    if end {
                        tx = None;
                    }
                }
                Some(Out::Trailers { headers, more }) => {
                    trailers.extend(headers);
                    if !more && let Some(t) = tx.take() {
                        // The last trailers complete the response.
                        if rest.trailers == Some(true) {
                            let fields = std::mem::take(&mut trailers);
                            undeclared(&fields, &rest.trailer_names);
                            let _ = t.send(Piece::Trailers(fields)).await;
                        }
                        if let Some(a) = ctx.router.asgi(route).map(|a| &a.app) {
                            a.disconnect(rest.x.rid);
                        }
                    }
                }
                Some(Out::Want) => rest.want = true,
                Some(
                    Out::Start { .. }
                    | Out::Accept { .. }
                    | Out::Message(_)
                    | Out::Close { .. }
                    | Out::Received,
                ) => {}
                Some(Out::Finished { error }) => {
                    rest.running.app_done = true;
                    if let Some(tb) = error {
                        tracing::error!(
                            "ASGI app raised after the response started; closing the connection:\n{}",
                            tb.trim_end()
                        );
                        if let Some(t) = tx.take() {
                            let _ = t.send(Piece::Abort).await;
                        }
                    }
                    // A response left open when the app returned ends here.
                    return;
                }
                None => return,
            },
            piece = rest.input.next(), if rest.want => {
                rest.want = false;
                let Some(a) = ctx.router.asgi(route).map(|a| &a.app) else { return };
                match piece {
                    Ok((data, more)) => a.body(rest.x.rid, data, more),
                    Err(_) => a.disconnect(rest.x.rid),
                }
            }
            _ = closed => {
                if let Some(a) = ctx.router.asgi(route).map(|a| &a.app) {
                    a.disconnect(rest.x.rid);
                }
                tx = None;
            }
        }
    }
}
