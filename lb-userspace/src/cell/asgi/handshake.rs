//! The WebSocket handshake of ASGI routes: an upgrade request becomes a `websocket` scope; the
//! app's `websocket.accept` gives the 101 (the session is left in the connection's state), its
//! `websocket.close` first, or a return without accepting, a 403, and its denial response
//! (`websocket.http.response.start` and `...body`) that response.
use std::rc::Rc;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use wsgi_worker::ConnInfo;
use wsgi_worker::asgi::{Out, RequestHead};

use super::websocket::{Session, follow};
use super::{BodyIn, Running, StreamTo, admit, has_token, head_only, refusal, respond};
use crate::cell::body::{Body, status_page};
use crate::cell::conn_state::ConnState;
use crate::cell::context::CellCtx;

/// What an upgrade request asks for, checked before the app sees it.
pub enum Handshake {
    /// Not a WebSocket upgrade: an `http` scope.
    No,
    /// A valid WebSocket handshake: the `Sec-WebSocket-Accept` value to answer with.
    Yes(HeaderValue),
    /// A WebSocket upgrade with a bad key or version: answered without the app.
    Bad(Box<Response<Body>>),
}

/// RFC 6455 4.2.1: `GET`, `Upgrade: websocket`, `Connection: upgrade`, a 16-byte base64
/// `Sec-WebSocket-Key` and version 13.
pub fn check(parts: &Parts) -> Handshake {
    let h = &parts.headers;
    if parts.method != http::Method::GET
        || parts.version != http::Version::HTTP_11
        || !has_token(h, header::UPGRADE, "websocket")
        || !has_token(h, header::CONNECTION, "upgrade")
    {
        return Handshake::No;
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut r = status_page(StatusCode::UPGRADE_REQUIRED);
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Handshake::Bad(Box::new(r));
    }
    let key = h.get(header::SEC_WEBSOCKET_KEY).map(HeaderValue::as_bytes);
    // 16 bytes in base64: 22 characters of the alphabet, then "==".
    let valid = key.is_some_and(|k| {
        k.len() == 24
            && k.ends_with(b"==")
            && k[..22]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
    });
    match key {
        Some(k) if valid => Handshake::Yes(
            HeaderValue::from_str(&derive_accept_key(k)).expect("base64 is a valid header value"),
        ),
        _ => Handshake::Bad(Box::new(status_page(StatusCode::BAD_REQUEST))),
    }
}

/// Runs the `websocket` scope's handshake: the 101 when the app accepts (the session is left
/// in `state` for the connection to run), a 403 when it closes or returns first, its own
/// response when it sends one instead (the connection closes after it).
pub async fn handshake(
    ctx: Rc<CellCtx>,
    route: usize,
    parts: Parts,
    accept_key: HeaderValue,
    conn: Arc<ConnInfo>,
    state: Rc<ConnState>,
) -> (Response<Body>, bool) {
    let a = match admit(&ctx, route) {
        Ok(a) => a,
        Err(status) => return refusal(status),
    };
    let what = format!("websocket {}", parts.uri.path());
    let mut x = a.app.submit(RequestHead {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        conn,
        websocket: true,
    });
    let mut running = Running::new(ctx.clone(), route, x.rid);
    let deadline_at = tokio::time::Instant::now() + a.request_timeout;
    let deadline = tokio::time::sleep_until(deadline_at);
    tokio::pin!(deadline);
    // The head of the app's denial response (`websocket.http.response.start`).
    let mut denial = None;
    let refused = loop {
        tokio::select! {
            ev = x.events.recv() => match ev {
                Some(Out::Accept { subprotocol, headers }) => {
                    let mut resp = Response::new(Body::empty());
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    let h = resp.headers_mut();
                    for (n, v) in headers {
                        // The cell speaks no WebSocket extension (no permessage-deflate in
                        // tungstenite): an app's claim of one would garble every frame.
                        if n == header::SEC_WEBSOCKET_EXTENSIONS {
                            tracing::warn!(
                                "ASGI app accepted a WebSocket with Sec-WebSocket-Extensions; \
                                 dropped (no extension is supported)"
                            );
                            continue;
                        }
                        h.append(n, v);
                    }
                    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key);
                    if let Some(p) = subprotocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
                        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
                    }
                    state.websocket.replace(Some(Box::new(Session {
                        max_message: a.websocket_max_message,
                        idle: a.websocket_idle_timeout,
                        ctx: ctx.clone(),
                        route,
                        x,
                        running,
                    })));
                    return (resp, false);
                }
                Some(Out::Close { .. }) => break StatusCode::FORBIDDEN,
                Some(Out::Start { status, headers, .. }) => denial = Some((status, headers)),
                Some(Out::Body { data, more }) => {
                    let Some((status, headers)) = denial.take() else {
                        // The sink refuses a body before its start; never reached.
                        break StatusCode::INTERNAL_SERVER_ERROR;
                    };
                    // The app's own refusal, streamed like an `http` response; then the
                    // connection closes (the client may have sent frames after its upgrade).
                    a.app.sent(&x, data.len());
                    let rest = StreamTo {
                        route,
                        x,
                        running,
                        input: BodyIn {
                            body: None,
                            total: 0,
                            max: 0,
                        },
                        want: false,
                        deadline: deadline_at,
                        trailers: None,
                        trailer_names: Vec::new(),
                    };
                    return (respond(&ctx, status, headers, data, more, false, rest), true);
                }
                Some(Out::Finished { error }) => {
                    running.app_done = true;
                    if error.is_none()
                        && let Some((status, headers)) = denial.take()
                    {
                        // A denial response without a body event: an empty body.
                        return (head_only(status, headers), true);
                    }
                    match error {
                        Some(tb) => {
                            tracing::error!(
                                "ASGI app raised before accepting the WebSocket ({what}); 500:\n{}",
                                tb.trim_end()
                            );
                            break StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        None => break StatusCode::FORBIDDEN,
                    }
                }
                Some(_) => {}
                None => break StatusCode::INTERNAL_SERVER_ERROR,
            },
            () = &mut deadline => {
                super::timed_out(&ctx, a, &x, &what);
                return (status_page(StatusCode::GATEWAY_TIMEOUT), true);
            }
        }
    };
    if !running.app_done {
        // Closed before accepting: the app's call is followed to its end.
        tokio::task::spawn_local(follow(x, running));
    }
    (status_page(refused), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri("/ws");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const UPGRADE: [(&str, &str); 2] = [
        ("upgrade", "WebSocket"),
        ("connection", "keep-alive, Upgrade"),
    ];

    #[test]
    fn a_websocket_upgrade_is_checked_before_the_app() {
        let ok = parts(&[
            UPGRADE[0],
            UPGRADE[1],
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ]);
        match check(&ok) {
            // RFC 6455 section 1.3's example.
            Handshake::Yes(v) => assert_eq!(v, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            _ => panic!("a valid handshake"),
        }
        assert!(matches!(check(&parts(&[UPGRADE[1]])), Handshake::No));
        let bad_key = parts(&[
            UPGRADE[0],
            UPGRADE[1],
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ"),
            ("sec-websocket-version", "13"),
        ]);
        assert!(matches!(check(&bad_key), Handshake::Bad(r) if r.status() == 400));
        let old = parts(&[
            UPGRADE[0],
            UPGRADE[1],
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "8"),
        ]);
        assert!(matches!(check(&old), Handshake::Bad(r) if r.status() == 426));
    }
}
