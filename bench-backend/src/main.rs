//! The upstream of `cargo xtask bench proxy`: a small native HTTP/1.1 server on one
//! current-thread tokio runtime, cheap enough that the proxy in front of it is what is measured.
//! `/1k` and `/1m` answer 1024 bytes and 1 MiB from memory; `/ws` is a WebSocket echo.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, CONTENT_TYPE, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

#[derive(Parser)]
#[command(
    name = "bench-backend",
    about = "Fast upstream for `cargo xtask bench proxy`"
)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:9000.
    #[arg(long)]
    listen: SocketAddr,
}

/// The response bodies, built once: a clone is a reference count, not a copy.
#[derive(Clone)]
struct Bodies {
    one_k: Bytes,
    one_m: Bytes,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bench_backend::runtime()?.block_on(serve(args.listen))
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bodies = Bodies {
        one_k: Bytes::from(vec![b'x'; 1024]),
        one_m: Bytes::from(vec![b'x'; 1 << 20]),
    };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: this connection is lost, the server goes on.
                eprintln!("bench-backend: accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let bodies = bodies.clone();
                async move { Ok::<_, Infallible>(respond(req, &bodies)) }
            });
            // A client that resets its connection is an ordinary end here.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

fn respond(req: Request<Incoming>, bodies: &Bodies) -> Response<Full<Bytes>> {
    let body = match req.uri().path() {
        "/1k" => bodies.one_k.clone(),
        "/1m" => bodies.one_m.clone(),
        "/ws" => return upgrade(req),
        _ => return status(StatusCode::NOT_FOUND),
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = code;
    resp
}

/// Answers a WebSocket handshake with 101 and echoes the connection's messages once hyper has
/// handed the connection over.
fn upgrade(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let wants_ws = req
        .headers()
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).filter(|_| wants_ws) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            echo(ws).await;
        }
    });
    let mut resp = status(StatusCode::SWITCHING_PROTOCOLS);
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Pings are answered by tungstenite itself; a close or an error ends the echo.
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            break;
        }
        if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}
