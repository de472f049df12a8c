//! One request on a connection: head checks, routing to a static route, a WSGI or ASGI app or
//! an upstream, then
//! the common response headers, metrics and the access log line.
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use wsgi_worker::ConnInfo;

use crate::cell::access_log::Entry;
use crate::cell::body::{Body, status_page};
use crate::cell::conn_state::{ConnState, Mark};
use crate::cell::context::CellCtx;
use crate::cell::framing::HeadFraming;
use crate::cell::head;
use crate::cell::router::{Handler, Match};
use crate::cell::static_files::FileRequest;

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// What the access log needs of a request, owned (a WSGI request outlives its borrowed head).
struct LogMeta {
    method: http::Method,
    target: String,
    version: Version,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
}

impl LogMeta {
    fn of<B>(req: &Request<B>) -> Self {
        let h = req.headers();
        LogMeta {
            method: req.method().clone(),
            target: req
                .uri()
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str)
                .to_owned(),
            version: req.version(),
            referer: h.get(header::REFERER).cloned(),
            user_agent: h.get(header::USER_AGENT).cloned(),
        }
    }
}

type Reply = Result<Response<Body>, std::convert::Infallible>;

/// Static answers are ready at once; WSGI answers come from a Python thread, proxied ones
/// from an upstream.
#[expect(
    clippy::large_enum_variant,
    reason = "unboxed on purpose: the static path stays free of allocations"
)]
pub enum Handled {
    Ready(Option<Reply>),
    Later(Pin<Box<dyn Future<Output = Reply>>>),
}

impl Future for Handled {
    type Output = Reply;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        match &mut *self {
            Handled::Ready(r) => Poll::Ready(r.take().expect("polled after completion")),
            Handled::Later(f) => f.as_mut().poll(cx),
        }
    }
}

pub fn handle(
    ctx: &Rc<CellCtx>,
    state: &Rc<ConnState>,
    conn: &Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Handled {
    let start = Instant::now();
    let framing = state.begin_request();
    head::use_target_authority(&mut req);
    let method = crate::metrics::method_index(req.method());
    let version = req.version();
    match route(ctx, &req, framing, conn) {
        Routed::Ready(resp, close, metrics_route) => {
            let mark = Mark {
                route: metrics_route as u16,
                method: method as u8,
                version,
                start,
            };
            let resp = finish(ctx, state, &conn.remote_addr, mark, resp, close, || {
                LogMeta::of(&req)
            });
            Handled::Ready(Some(Ok(resp)))
        }
        Routed::Wsgi(id, path_info, metrics_route) => {
            let meta = ctx.log.enabled().then(|| LogMeta::of(&req));
            let (parts, body) = req.into_parts();
            let mark = Mark {
                route: metrics_route as u16,
                method: method as u8,
                version,
                start,
            };
            let answer =
                crate::cell::wsgi::call(ctx.clone(), id, parts, body, path_info, conn.clone());
            later(ctx, state, conn, mark, meta, answer)
        }
        Routed::Asgi(id, metrics_route) => {
            let meta = ctx.log.enabled().then(|| LogMeta::of(&req));
            let (parts, body) = req.into_parts();
            let mark = Mark {
                route: metrics_route as u16,
                method: method as u8,
                version,
                start,
            };
            use crate::cell::asgi::handshake::{self, Handshake};
            match handshake::check(&parts) {
                Handshake::No => {
                    let answer =
                        crate::cell::asgi::call(ctx.clone(), id, parts, body, conn.clone());
                    later(ctx, state, conn, mark, meta, answer)
                }
                Handshake::Yes(key) => {
                    let answer = handshake::handshake(
                        ctx.clone(),
                        id,
                        parts,
                        key,
                        conn.clone(),
                        state.clone(),
                    );
                    later(ctx, state, conn, mark, meta, answer)
                }
                Handshake::Bad(resp) => {
                    later(ctx, state, conn, mark, meta, async { (*resp, true) })
                }
            }
        }
        Routed::Proxy(id, metrics_route) => {
            let meta = ctx.log.enabled().then(|| LogMeta::of(&req));
            let mark = Mark {
                route: metrics_route as u16,
                method: method as u8,
                version,
                start,
            };
            let answer =
                crate::cell::proxy::call(ctx.clone(), id, req, conn.clone(), state.clone());
            later(ctx, state, conn, mark, meta, answer)
        }
    }
}

/// `301` to the same target over https (nginx's `return 301 https://$host$request_uri`).
fn to_https(req: &Request<Incoming>, conn: &ConnInfo, port: u16) -> Response<Body> {
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let host = authority
        .as_ref()
        .map_or(conn.local_addr.as_str(), |a| a.host());
    let mut loc = format!("https://{host}");
    if port != 443 {
        loc.push_str(&format!(":{port}"));
    }
    loc.push_str(req.uri().path_and_query().map_or("/", |p| p.as_str()));
    let mut resp = status_page(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&loc) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A response that comes later (from a Python thread, or an upstream), finished like the
/// others once it is there.
fn later(
    ctx: &Rc<CellCtx>,
    state: &Rc<ConnState>,
    conn: &Arc<ConnInfo>,
    mark: Mark,
    mut meta: Option<LogMeta>,
    answer: impl Future<Output = (Response<Body>, bool)> + 'static,
) -> Handled {
    use futures_util::FutureExt as _;
    let (ctx, state, conn) = (ctx.clone(), state.clone(), conn.clone());
    // `map` polls `answer` where it lies: an async block would move the (kilobytes large)
    // future once more on its first poll.
    Handled::Later(Box::pin(answer.map(move |(resp, close)| {
        Ok(finish(
            &ctx,
            &state,
            &conn.remote_addr,
            mark,
            resp,
            close,
            || meta.take().expect("logged once"),
        ))
    })))
}

/// Common response headers, metrics and the access log line.
fn finish(
    ctx: &Rc<CellCtx>,
    state: &Rc<ConnState>,
    remote: &str,
    mark: Mark,
    mut resp: Response<Body>,
    close: bool,
    meta: impl FnOnce() -> LogMeta,
) -> Response<Body> {
    // A 101's `Connection: upgrade` stays: the connection becomes a tunnel, not a keep-alive.
    if (close || ctx.draining.get()) && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("portico"));
    let start = mark.start;
    let status = resp.status().as_u16();
    let sent = resp.body().len();
    ctx.stats.request(status, sent);
    ctx.stats.request_version(mark.version);
    if ctx.histograms {
        state.mark.set(Some((mark, status, sent)));
    }
    if ctx.log.enabled() {
        let m = meta();
        let log = move |ctx: &CellCtx, remote: &str, body_bytes: u64| {
            ctx.log.log(&Entry {
                remote,
                method: m.method.as_str(),
                target: &m.target,
                version: version_str(m.version),
                status,
                body_bytes,
                referer: m.referer.as_ref().and_then(|v| v.to_str().ok()),
                user_agent: m.user_agent.as_ref().and_then(|v| v.to_str().ok()),
                duration_s: start.elapsed().as_secs_f64(),
            });
        };
        if resp.body().is_stream() {
            // A streamed body's size is known at its end: log then, like nginx.
            let (ctx, remote) = (ctx.clone(), remote.to_owned());
            resp.body_mut()
                .set_on_end(Box::new(move |bytes| log(&ctx, &remote, bytes)));
        } else {
            log(ctx, remote, sent);
        }
    }
    if let Some(r) = resp.body_mut().take_file_region() {
        state.regions.borrow_mut().push(r);
    }
    resp.body_mut().set_hooks(state.clone());
    resp
}

#[expect(
    clippy::large_enum_variant,
    reason = "built once per request and matched at once; boxing would allocate"
)]
enum Routed {
    /// The response, whether to close, and the route's metrics index.
    Ready(Response<Body>, bool, usize),
    /// A WSGI route id, the raw PATH_INFO below its mount point, and the route's metrics index.
    Wsgi(usize, String, usize),
    /// An ASGI route id and the route's metrics index.
    Asgi(usize, usize),
    /// A proxy route id and the route's metrics index.
    Proxy(usize, usize),
}

/// Applies the head checks, then routes. Returns the response and whether to close after it.
fn route(ctx: &CellCtx, req: &Request<Incoming>, framing: HeadFraming, conn: &ConnInfo) -> Routed {
    if let Err(refused) = head::check(req, framing, &ctx.limits) {
        return Routed::Ready(status_page(refused.status), refused.close, 0);
    }
    if let Some(port) = ctx.https_redirect(conn) {
        return Routed::Ready(to_https(req, conn, port), head::has_body(req), 0);
    }
    let path = req.uri().path();
    // A request body we will not read must not be parsed as the next request.
    let unread_body = head::has_body(req);
    let mut metrics_route = 0;
    let resp = match ctx.router.find(path) {
        Match::Route(id, r, rest) => match &r.handler {
            Handler::Wsgi(_) => {
                let path_info = if r.prefix.ends_with('/') {
                    format!("/{rest}")
                } else {
                    rest.to_owned()
                };
                return Routed::Wsgi(id, path_info, r.metrics_index);
            }
            Handler::Asgi(_) => return Routed::Asgi(id, r.metrics_index),
            Handler::Proxy(_) => return Routed::Proxy(id, r.metrics_index),
            Handler::Static(route) => {
                metrics_route = r.metrics_index;
                crate::cell::static_files::serve(
                    &ctx.cache,
                    id,
                    route,
                    FileRequest {
                        method: req.method(),
                        headers: req.headers(),
                        path,
                        query: req.uri().query(),
                        rel_raw: rest,
                    },
                )
            }
        },
        Match::AddSlash(r) => {
            metrics_route = r.metrics_index;
            let mut resp = status_page(StatusCode::MOVED_PERMANENTLY);
            let mut loc = r.prefix.clone();
            if let Some(q) = req.uri().query() {
                loc.push('?');
                loc.push_str(q);
            }
            if let Ok(v) = HeaderValue::from_str(&loc) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        Match::None => status_page(StatusCode::NOT_FOUND),
    };
    Routed::Ready(resp, unread_body, metrics_route)
}
