//! The master's admin endpoint: `/healthz`, `/metrics`, `/status`, and the XDP blocklist.
//! Loopback by default; requests that change state are refused from any other peer unless
//! a bearer token (`auth`) guards the endpoint.
use std::rc::Rc;

pub mod auth;
pub mod status;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use crate::master::state::MasterState;
use crate::metrics::{cell_counter, render};

/// Admin responses are small and whole.
type Body = Full<Bytes>;

pub async fn serve(listener: tokio::net::TcpListener, shared: Rc<MasterState>) {
    let history = Rc::new(std::cell::RefCell::new(status::History::default()));
    tokio::task::spawn_local(status::sample(shared.clone(), history.clone()));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        let history = history.clone();
        tokio::task::spawn_local(async move {
            let svc = hyper::service::service_fn(move |req| {
                std::future::ready(Ok::<_, std::convert::Infallible>(handle(
                    &shared,
                    &history.borrow(),
                    &req,
                    peer,
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn handle<B>(
    shared: &MasterState,
    history: &status::History,
    req: &Request<B>,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    if let Some(t) = shared.admin_token.borrow().as_ref()
        && !t.admits(req.headers())
    {
        return auth::unauthorized(req.headers());
    }
    if let Some(op) = req.uri().path().strip_prefix("/blocklist/") {
        return blocklist_change(shared, req, op, peer);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = status_page(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let cells = shared.cells();
    match req.uri().path() {
        "/healthz" => {
            let down: Vec<usize> = (0..cells)
                .filter(|&i| shared.metrics.cell(i).get(cell_counter::UP) == 0)
                .collect();
            if down.is_empty() {
                text(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    format!("ok: {cells} cells up\n"),
                )
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("not ready: cells {down:?} of {cells} are down\n"),
                )
            }
        }
        "/metrics" => {
            let snap = shared.ebpf_snapshot();
            let routes = shared.routes.borrow();
            let upstreams = shared.upstream_servers.borrow();
            let format = crate::metrics::exposition::Format::negotiate(
                req.headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok()),
            );
            match render(
                &shared.metrics,
                cells,
                &snap,
                &crate::metrics::Names {
                    routes: &routes,
                    upstreams: &upstreams,
                    certs: &shared.certs.borrow(),
                },
                &shared.proc_snapshot(),
                format,
            ) {
                Ok(t) => text(StatusCode::OK, format.content_type(), t),
                Err(e) => {
                    tracing::error!("rendering metrics: {e:#}");
                    status_page(StatusCode::INTERNAL_SERVER_ERROR)
                }
            }
        }
        "/status" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            status::PAGE.to_string(),
        ),
        "/status.json" => match serde_json::to_string(&status::status(shared, history)) {
            Ok(j) => text(StatusCode::OK, "application/json", j),
            Err(e) => {
                tracing::error!("rendering status: {e}");
                status_page(StatusCode::INTERNAL_SERVER_ERROR)
            }
        },
        "/blocklist" => match shared.xdp.borrow().as_ref() {
            Some(x) => {
                let mut list = x.blocklist().join("\n");
                list.push('\n');
                text(StatusCode::OK, "text/plain; charset=utf-8", list)
            }
            None => no_guard(),
        },
        _ => status_page(StatusCode::NOT_FOUND),
    }
}

fn no_guard() -> Response<Body> {
    text(
        StatusCode::CONFLICT,
        "text/plain; charset=utf-8",
        "no XDP guard is attached ([ebpf.xdp] interface is not set, or eBPF is unavailable)\n"
            .into(),
    )
}

/// `POST /blocklist/add?cidr=...` and `POST /blocklist/del?cidr=...` (what `portico block`
/// sends): takes effect for the next packet, no restart; loopback peers only, unless the
/// endpoint has a token (which `handle` checked).
fn blocklist_change<B>(
    shared: &MasterState,
    req: &Request<B>,
    op: &str,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    let plain = "text/plain; charset=utf-8";
    if !peer.ip().to_canonical().is_loopback() && shared.admin_token.borrow().is_none() {
        return text(
            StatusCode::FORBIDDEN,
            plain,
            "changing the blocklist is only allowed from loopback (or with server.admin_token_file)\n"
                .into(),
        );
    }
    if req.method() != Method::POST {
        let mut r = status_page(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let add = match op {
        "add" => true,
        "del" => false,
        _ => return status_page(StatusCode::NOT_FOUND),
    };
    let raw = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("cidr="))
        .map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        });
    let cidr: wsgi_worker::Cidr = match raw.as_deref().map(str::parse) {
        Some(Ok(c)) => c,
        Some(Err(m)) => return text(StatusCode::BAD_REQUEST, plain, format!("{m}\n")),
        None => {
            return text(
                StatusCode::BAD_REQUEST,
                plain,
                "missing ?cidr=ADDRESS[/PREFIX]\n".into(),
            );
        }
    };
    let mut guard = shared.xdp.borrow_mut();
    let Some(x) = guard.as_mut() else {
        return no_guard();
    };
    match x.block(cidr, add) {
        Ok(changed) => {
            let what = match (add, changed) {
                (true, true) => "added",
                (true, false) => "already blocked",
                (false, true) => "removed",
                (false, false) => "was not blocked",
            };
            tracing::info!(peer = %peer, "blocklist: {cidr} {what}");
            text(StatusCode::OK, plain, format!("{cidr} {what}\n"))
        }
        Err(e) => {
            tracing::error!("blocklist change: {e}");
            text(StatusCode::INTERNAL_SERVER_ERROR, plain, format!("{e}\n"))
        }
    }
}

/// A small text/plain page for a status code: the reason phrase, never internals.
fn status_page(status: StatusCode) -> Response<Body> {
    text(
        status,
        "text/plain; charset=utf-8",
        format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ),
    )
}
