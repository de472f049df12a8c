//! Proxy routes in a cell: the request goes to a server of the route's upstream group over a
//! pooled HTTP/1.1 connection, both bodies stream (hyper's backpressure), and the response
//! comes back with its redirects mapped to the client's URL space.
pub mod balance;
pub mod buffer;
pub mod headers;
pub mod health;
pub mod pool;
pub mod request_body;
pub mod rewrite;
pub mod route;
pub mod send_timeout;

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use wsgi_worker::ConnInfo;

use crate::cell::body::{Body, status_page};
use crate::cell::conn_state::ConnState;
use crate::cell::context::CellCtx;
use crate::cell::tunnel::Pending;
use crate::metrics::{CellStats, upstream_counter};
use balance::Outcome;
use pool::{Sender, Server, UpBody};
use route::ProxyRoute;

/// How an attempt on one connection ended.
enum Attempt {
    Answered(Response<Incoming>, Sender),
    /// Nothing reached the server: the request comes back for the next try (boxed: the
    /// rare path carries the largest payload).
    NotSent(Box<Request<UpBody>>, String),
    /// The request (or part of it) was sent and no response came.
    Failed(String),
    /// No response head within read_timeout, or the upstream stopped taking the request
    /// (send_timeout): why.
    TimedOut(String),
}

async fn attempt(mut sender: Sender, req: Request<UpBody>, read_timeout: Duration) -> Attempt {
    if sender.ready().await.is_err() {
        return Attempt::NotSent(Box::new(req), "connection closed".into());
    }
    match tokio::time::timeout(read_timeout, sender.try_send_request(req)).await {
        Err(_) => Attempt::TimedOut(format!(
            "no response within read_timeout ({read_timeout:?})"
        )),
        // Like a response hyper cannot parse: never passed on, its connection dropped.
        Ok(Ok(resp)) if headers::ambiguous_length(resp.headers()) => {
            Attempt::Failed("invalid response: both Content-Length and Transfer-Encoding".into())
        }
        Ok(Ok(resp)) => Attempt::Answered(resp, sender),
        Ok(Err(mut e)) => match e.take_message() {
            Some(req) => Attempt::NotSent(Box::new(req), e.error().to_string()),
            // The upstream stopped taking the request (send_timeout): a timeout, like a read.
            None => match send_timeout::timeout_in(e.error()) {
                Some(why) => Attempt::TimedOut(why),
                None => Attempt::Failed(e.error().to_string()),
            },
        },
    }
}

/// Runs one request through a proxy route. Returns the response and whether to close after it.
/// An upgrade the upstream accepts leaves its tunnel in `state`.
pub async fn call(
    ctx: Rc<CellCtx>,
    route: usize,
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    state: Rc<ConnState>,
) -> (Response<Body>, bool) {
    let Some(r) = ctx.router.proxy(route) else {
        return (status_page(StatusCode::NOT_FOUND), false);
    };
    let upstream = r.upstream.clone();
    let (mut parts, body) = req.into_parts();
    let target = rewrite::upstream_target(
        parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        &r.prefix,
        r.path.as_deref(),
    );
    // A cheap handle on the client's Host (shared bytes, no copy) for `$host` and redirects.
    let host_value = parts.headers.get(header::HOST).cloned();
    let host = host_value
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let has_body = crate::cell::head::has_body_headers(&parts.headers);
    let upgrade = if r.websocket {
        headers::upgrade_of(&parts.headers)
    } else {
        None
    };
    let trailers = headers::accepts_trailers(&parts.headers);
    match upgrade.clone() {
        Some(u) => headers::remove_hop_by_hop_keep_upgrade(&mut parts.headers, u),
        None => headers::remove_hop_by_hop(&mut parts.headers),
    }
    if trailers {
        // TE is this hop's: the cell passes trailers on, so it says so for itself.
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let trusted = conn
        .remote_ip
        .is_some_and(|ip| r.trusted.iter().any(|c| c.contains(ip)));
    headers::set_forwarded(
        &mut parts.headers,
        conn.remote_ip,
        &conn.remote_addr,
        trusted,
        conn.tls,
    );
    for (name, template) in &r.set_headers {
        let value = headers::expand(template, host, &conn.remote_addr, conn.tls);
        if let Ok(v) = HeaderValue::from_str(&value) {
            parts.headers.insert(name.clone(), v);
        }
    }
    let mut up_body = UpBody::Empty;
    if has_body {
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        up_body = if length.is_some_and(|n| n > request_body::PREREAD_LIMIT as u64) {
            UpBody::Client(body)
        } else {
            match request_body::preread(body).await {
                Ok(b) => b,
                Err(status) => return (status_page(status), true),
            }
        };
        if let UpBody::Ready { data, trailers } = &up_body {
            // The whole body is here: nothing for the upstream to continue, and (without
            // trailers) a Content-Length frames it, whatever framing the client used.
            parts.headers.remove(header::EXPECT);
            if trailers.is_none() {
                let len = data.as_ref().map_or(0, Bytes::len);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
    }
    let Ok(uri) = target.parse::<Uri>() else {
        return (status_page(StatusCode::BAD_REQUEST), false);
    };
    let method = parts.method.clone();
    let headers = parts.headers;
    let build = |body: UpBody, server: &Server| {
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers.clone();
        if !req.headers().contains_key(header::HOST) {
            let fallback = match &server.addr {
                crate::config::ListenAddr::Tcp(a) => a.to_string(),
                crate::config::ListenAddr::Unix(_) => "localhost".into(),
            };
            if let Ok(v) = HeaderValue::from_str(&fallback) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        req
    };
    let mut body = Some(up_body);
    upstream.request();
    let idempotent = method.is_idempotent();
    let mut tried: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
    let mut last_error = std::borrow::Cow::Borrowed("no server is up");
    // The response (or the status to answer) when a try leaves nothing more to do.
    let mut give_up = (StatusCode::BAD_GATEWAY, has_body);
    'servers: loop {
        let now = Instant::now();
        let picked = upstream
            .balancer
            .borrow_mut()
            .pick(now, conn.remote_ip, &tried);
        let Some(i) = picked else { break };
        tried.push(i);
        let server = &upstream.servers[i];
        upstream.balancer.borrow_mut().started(i);
        upstream.publish(i, now);
        let failed = |why: &str| {
            let now = Instant::now();
            let mut b = upstream.balancer.borrow_mut();
            let down = b.finished(i, now, Outcome::Failed);
            drop(b);
            upstream.publish(i, now);
            if down {
                tracing::warn!(
                    "upstream {} server {}: {why}; out of the group for fail_timeout",
                    upstream.name,
                    server.addr
                );
            } else {
                tracing::warn!("upstream {} server {}: {why}", upstream.name, server.addr);
            }
        };
        // A pooled connection first; if it turns out closed before taking the request (the
        // upstream's keep-alive timeout), a fresh connection to the same server.
        let mut pooled = server.take_idle();
        loop {
            let reused = pooled.is_some();
            let sender = match pooled.take() {
                Some(s) => s,
                None => match server
                    .connect(upstream.connect_timeout, upstream.send_timeout)
                    .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        upstream.counters(i)[upstream_counter::CONNECT_ERRORS]
                            .fetch_add(1, Relaxed);
                        last_error = format!("connect failed: {e}").into();
                        failed(&last_error);
                        continue 'servers;
                    }
                },
            };
            let Some(b) = body.take() else {
                break 'servers;
            };
            let replayable = matches!(b, UpBody::Empty);
            let sent_at = Instant::now();
            match attempt(sender, build(b, server), upstream.read_timeout).await {
                Attempt::Answered(resp, sender) => {
                    let now = Instant::now();
                    let took = now.saturating_duration_since(sent_at);
                    upstream
                        .balancer
                        .borrow_mut()
                        .finished(i, now, Outcome::Answered(took));
                    upstream.publish(i, now);
                    upstream.stats.observe_upstream(
                        upstream.base + i,
                        resp.status().as_u16(),
                        u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
                    );
                    if upgrade.is_some() {
                        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                            // The connection becomes the tunnel's: never pooled again.
                            return switch(resp, sender, &state, r, server, &ctx);
                        }
                        // A refused upgrade: relayed, and its connection not reused.
                        drop(sender);
                        let resp = respond(r, resp, host, server, Box::new(|| ()), ctx.stats);
                        return (resp, false);
                    }
                    let give_back = {
                        let upstream = upstream.clone();
                        move || upstream.servers[i].give_back(sender)
                    };
                    let resp = respond(r, resp, host, server, Box::new(give_back), ctx.stats);
                    return (resp, false);
                }
                Attempt::NotSent(req, why) => {
                    body = Some(req.into_body());
                    if !reused {
                        last_error = why.into();
                        failed(&last_error);
                        continue 'servers;
                    }
                }
                Attempt::Failed(why) if reused && replayable => {
                    // A stale pooled connection that died under a bodiless request: again
                    // on a fresh one.
                    tracing::debug!(
                        "upstream {}: pooled connection failed ({why}); retrying",
                        upstream.name
                    );
                    body = Some(UpBody::Empty);
                }
                outcome => {
                    // Sent, and no response: the next server only for a request that can be
                    // sent again, within the retry budget.
                    let (status, why) = match outcome {
                        Attempt::TimedOut(why) => (StatusCode::GATEWAY_TIMEOUT, why),
                        Attempt::Failed(why) => (StatusCode::BAD_GATEWAY, why),
                        _ => (StatusCode::BAD_GATEWAY, "no response".into()),
                    };
                    failed(&why);
                    give_up = (status, true);
                    last_error = why.into();
                    if idempotent && replayable && upstream.may_retry() {
                        let counter = if status == StatusCode::GATEWAY_TIMEOUT {
                            upstream_counter::RETRIES_TIMEOUT
                        } else {
                            upstream_counter::RETRIES_ERROR
                        };
                        upstream.counters(i)[counter].fetch_add(1, Relaxed);
                        body = Some(UpBody::Empty);
                        continue 'servers;
                    }
                    break 'servers;
                }
            }
        }
    }
    tracing::warn!(
        "upstream {}: no server answered ({last_error}); {}",
        upstream.name,
        give_up.0.as_u16()
    );
    (status_page(give_up.0), give_up.1)
}

/// The upstream's `101 Switching Protocols` as the client gets it; the tunnel is left in
/// `state` for the connection to run once the 101 is written.
fn switch(
    mut resp: Response<Incoming>,
    sender: Sender,
    state: &ConnState,
    route: &ProxyRoute,
    server: &Server,
    ctx: &CellCtx,
) -> (Response<Body>, bool) {
    let upstream = &route.upstream;
    let label = format!("upstream {} server {}", upstream.name, server.addr);
    let on_upgrade = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    let Some(proto) = headers::upgrade_of(&parts.headers) else {
        tracing::warn!("{label}: 101 without Connection: upgrade and Upgrade; 502");
        return (status_page(StatusCode::BAD_GATEWAY), true);
    };
    headers::remove_hop_by_hop_keep_upgrade(&mut parts.headers, proto);
    state.tunnel.replace(Some(Box::new(Pending {
        upstream: on_upgrade,
        idle: upstream.read_timeout,
        send_timeout: upstream.send_timeout,
        label,
        hold: Box::new(sender),
        relay: route.relay,
        stats: upstream.stats,
        server: server.index(),
        maps: ctx.tunnel_maps.clone(),
    })));
    let mut out = Response::new(Body::empty());
    *out.status_mut() = parts.status;
    *out.headers_mut() = parts.headers;
    (out, false)
}

/// The upstream's response as the client gets it.
fn respond(
    r: &ProxyRoute,
    resp: Response<Incoming>,
    host: &str,
    server: &Server,
    give_back: Box<dyn FnOnce()>,
    stats: CellStats<'static>,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    if parts.headers.contains_key(header::CONTENT_LENGTH) {
        // A body of known length has no trailers: its `Trailer` field would name nothing.
        parts.headers.remove(header::TRAILER);
    }
    let refresh = HeaderName::from_static("refresh");
    // Most responses redirect nowhere: the server's authority string only when one does.
    if parts.headers.contains_key(header::LOCATION) || parts.headers.contains_key(&refresh) {
        let server_authority = server.addr.to_string();
        let hosts = [host, server_authority.as_str()];
        let map = |v: &str| rewrite::redirect(v, &r.redirect, &r.prefix, r.path.as_deref(), &hosts);
        if let Some(loc) = parts
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            && let Some(new) = map(loc)
            && let Ok(v) = HeaderValue::from_str(&new)
        {
            parts.headers.insert(header::LOCATION, v);
        }
        if let Some(val) = parts.headers.get(&refresh).and_then(|v| v.to_str().ok())
            && let Some(new) = rewrite::refresh(val, map)
            && let Ok(v) = HeaderValue::from_str(&new)
        {
            parts.headers.insert(refresh, v);
        }
    }
    // nginx's X-Accel-Buffering: the upstream turns buffering on or off for one response;
    // like nginx, the field is not passed on.
    let accel = HeaderName::from_static("x-accel-buffering");
    let buffering = match parts
        .headers
        .remove(&accel)
        .as_ref()
        .map(HeaderValue::as_bytes)
    {
        Some(v) if v.eq_ignore_ascii_case(b"yes") => true,
        Some(v) if v.eq_ignore_ascii_case(b"no") => false,
        _ => r.buffering,
    };
    let timeout = r.upstream.read_timeout;
    let body = if buffering && !http_body::Body::is_end_stream(&body) {
        let ahead = buffer::ReadAhead::start(body, r.buffer_limit, timeout, give_back);
        Body::read_ahead(ahead, timeout, stats)
    } else {
        Body::relay(body, timeout, give_back, stats)
    };
    let mut out = Response::new(body);
    *out.status_mut() = parts.status;
    *out.headers_mut() = parts.headers;
    out
}
