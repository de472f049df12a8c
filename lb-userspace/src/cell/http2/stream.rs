//! One HTTP/2 stream through the cell's shared request path (`dispatch::handle`): the request
//! given what HTTP/1 carries in its head, and the response without HTTP/1's connection fields.
use std::convert::Infallible;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use wsgi_worker::ConnInfo;

use crate::cell::body::{Body, ConnHooks};
use crate::cell::conn_state::ConnState;
use crate::cell::context::CellCtx;
use crate::cell::dispatch::handle;
use crate::cell::http2::state::H2Conn;

/// Serves one stream. Its `ConnState` is its own: nothing of HTTP/1's per-connection framing,
/// phases or sendfile regions applies to a stream.
pub fn serve(
    ctx: &Rc<CellCtx>,
    conn: &Rc<H2Conn>,
    info: &Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + use<> {
    let open = OpenStream::new(conn.clone());
    prepare(&mut req);
    let state = Rc::new(ConnState::new(ctx.stats));
    let handled = handle(ctx, &state, info, req);
    async move {
        let Ok(mut resp) = handled.await;
        // hyper copies a stream's DATA frames: a mapped file region is plain memory here.
        state.regions.borrow_mut().clear();
        strip_connection_fields(resp.headers_mut());
        resp.body_mut()
            .set_hooks(Rc::new(StreamHooks { state, _open: open }));
        Ok(resp)
    }
}

/// What an HTTP/1 head says and an HTTP/2 request carries elsewhere: `Host` from `:authority`
/// (routes, apps and upstreams read `Host`), and a body without Content-Length marked as
/// `Transfer-Encoding: chunked`, the routes' sign of a body of unknown length (h2 itself
/// refuses the field from a client, so the mark cannot be a client's).
pub fn prepare<B: http_body::Body>(req: &mut Request<B>) {
    if !req.headers().contains_key(header::HOST)
        && let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    if !req.headers().contains_key(header::CONTENT_LENGTH) && !req.body().is_end_stream() {
        req.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
}

/// Connection-specific fields are malformed in HTTP/2 (RFC 9113 section 8.2.2): the common
/// response path may add `Connection: close`, an app or an upstream may send any of them.
pub fn strip_connection_fields(h: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        h.remove(name);
    }
}

/// An open stream, counted on its connection until the response (or the request, if it never
/// got one) is dropped: a connection with none open is idle.
pub struct OpenStream(Rc<H2Conn>);

impl OpenStream {
    pub fn new(conn: Rc<H2Conn>) -> Self {
        conn.stream_opened();
        OpenStream(conn)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.stream_closed();
    }
}

/// A stream's response body hooks: the request's metrics when it ends; no flush to wait for
/// (a stream's DATA is queued in h2, and an aborted body resets the stream, not the connection).
struct StreamHooks {
    state: Rc<ConnState>,
    _open: OpenStream,
}

impl ConnHooks for StreamHooks {
    fn done(&self, streamed: u64) {
        self.state.done(streamed);
    }
    fn want_flush(&self) {}
    fn poll_flushed(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Empty, Full};

    #[test]
    fn requests_get_host_and_body_framing() {
        let mut r = Request::builder()
            .uri("http://example.com:8080/x?y")
            .version(http::Version::HTTP_2)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        prepare(&mut r);
        assert_eq!(r.headers()[header::HOST], "example.com:8080");
        assert!(!r.headers().contains_key(header::TRANSFER_ENCODING));

        let mut r = Request::builder()
            .uri("/x")
            .header(header::HOST, "mine")
            .body(Full::new(bytes::Bytes::from_static(b"body")))
            .unwrap();
        prepare(&mut r);
        assert_eq!(r.headers()[header::HOST], "mine");
        assert_eq!(r.headers()[header::TRANSFER_ENCODING], "chunked");

        let mut r = Request::builder()
            .uri("/x")
            .header(header::CONTENT_LENGTH, "4")
            .body(Full::new(bytes::Bytes::from_static(b"body")))
            .unwrap();
        prepare(&mut r);
        assert!(!r.headers().contains_key(header::TRANSFER_ENCODING));
        assert!(!r.headers().contains_key(header::HOST));
    }

    #[test]
    fn connection_fields_are_dropped_from_responses() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("content-type", "text/plain"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_connection_fields(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }
}
