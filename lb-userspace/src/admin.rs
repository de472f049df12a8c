//! The master's admin endpoint: `/healthz` and `/metrics`. Read-only; loopback by default.
use std::rc::Rc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::body::{Body, status_page};
use crate::master::Shared;
use crate::metrics::{ProcSnapshot, process_usage, render, slot};

pub async fn serve(listener: tokio::net::TcpListener, shared: Rc<Shared>) {
    let history = Rc::new(std::cell::RefCell::new(crate::status::History::default()));
    tokio::task::spawn_local(crate::status::sample(shared.clone(), history.clone()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
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
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Accept queues and cell processes, read from /proc at scrape time.
pub fn proc_snapshot(shared: &Shared) -> ProcSnapshot {
    use std::os::fd::AsFd as _;
    ProcSnapshot {
        listen_queues: shared
            .listeners
            .iter()
            .filter_map(|(addr, cell, fd)| {
                crate::sys::listen_queue_len(fd.as_fd())
                    .ok()
                    .map(|n| (addr.clone(), *cell, n as u64))
            })
            .collect(),
        cells: (0..shared.cells)
            .map(|i| {
                let c = shared.metrics.cell(i);
                let pid = c.get(slot::PID) as u32;
                (c.get(slot::UP) == 1 && pid > 0)
                    .then(|| process_usage(pid))
                    .flatten()
            })
            .collect(),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Body::one(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn handle<B>(
    shared: &Shared,
    history: &crate::status::History,
    req: &Request<B>,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = status_page(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/healthz" => {
            let down: Vec<usize> = (0..shared.cells)
                .filter(|&i| shared.metrics.cell(i).get(slot::UP) == 0)
                .collect();
            if down.is_empty() {
                text(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    format!("ok: {} cells up\n", shared.cells),
                )
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("not ready: cells {down:?} of {} are down\n", shared.cells),
                )
            }
        }
        "/metrics" => {
            let snap = shared
                .steering
                .as_ref()
                .map(|s| s.snapshot())
                .unwrap_or_default();
            let routes = shared.routes.borrow();
            match render(
                &shared.metrics,
                shared.cells,
                &snap,
                &routes,
                &proc_snapshot(shared),
            ) {
                Ok(t) => text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    t,
                ),
                Err(e) => {
                    tracing::error!("rendering metrics: {e:#}");
                    status_page(StatusCode::INTERNAL_SERVER_ERROR)
                }
            }
        }
        "/status" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::status::PAGE.to_string(),
        ),
        "/status.json" => match serde_json::to_string(&crate::status::status(shared, history)) {
            Ok(j) => text(StatusCode::OK, "application/json", j),
            Err(e) => {
                tracing::error!("rendering status: {e}");
                status_page(StatusCode::INTERNAL_SERVER_ERROR)
            }
        },
        _ => status_page(StatusCode::NOT_FOUND),
    }
}
