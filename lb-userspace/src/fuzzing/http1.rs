//! `request_head` and `chunked_body`: raw bytes through hyper's HTTP/1 server as a cell runs
//! it, with the `FramingTracker` fed each read beside hyper and `head::check` on every request
//! hyper hands over. The tracker must stay in step with hyper (a head it misses or invents is
//! a smuggled request that skips the CL/TE check).
use std::cell::{Cell, RefCell};
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cell::framing::FramingTracker;
use crate::cell::head;
use crate::config::LimitsConfig;

/// The head `chunked_body` puts before its input: the fuzzer then spends its time on chunks,
/// trailers and what follows them.
const CHUNKED_HEAD: &[u8] =
    b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

/// Arbitrary bytes as a client connection. The first byte sets how the bytes are cut into reads
/// (0: one read), so heads and chunk lines also arrive split.
pub fn request_head(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    exchange(cut, rest.to_vec());
}

/// A chunked request body (chunk sizes, extensions, trailers) and whatever follows it on the
/// connection; the first byte cuts the reads as for `request_head`.
pub fn chunked_body(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let mut wire = CHUNKED_HEAD.to_vec();
    wire.extend_from_slice(rest);
    exchange(cut, wire);
}

/// The client side: `wire` handed out `cut` bytes per read, every read fed to the tracker
/// first (as `conn::TrackedIo` does); what hyper writes is dropped. Once the bytes are out the
/// client keeps the connection open (a read waits, `starved` is set) until `exchange` sees
/// hyper can go no further; only then does it read the end (`end`), as a client that waits
/// for its answers before closing.
struct Wire {
    data: Vec<u8>,
    at: usize,
    cut: usize,
    tracker: Rc<RefCell<FramingTracker>>,
    starved: Rc<Cell<bool>>,
    end: Rc<Cell<bool>>,
}

impl AsyncRead for Wire {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at == self.data.len() && !self.end.get() {
            self.starved.set(true);
            return Poll::Pending;
        }
        let n = (self.data.len() - self.at)
            .min(self.cut)
            .min(buf.remaining());
        let piece = &self.data[self.at..self.at + n];
        self.tracker.borrow_mut().feed(piece);
        buf.put_slice(piece);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

/// Runs one connection over `wire`; returns how many requests hyper handed to the service.
fn exchange(cut: u8, wire: Vec<u8>) -> usize {
    let tracker = Rc::new(RefCell::new(FramingTracker::default()));
    let (starved, end) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
    let io = Wire {
        data: wire,
        at: 0,
        cut: if cut == 0 {
            usize::MAX
        } else {
            usize::from(cut)
        },
        tracker: tracker.clone(),
        starved: starved.clone(),
        end: end.clone(),
    };
    let limits = Rc::new(LimitsConfig::default());
    let served = Rc::new(RefCell::new(0usize));
    let (t, l, s) = (tracker.clone(), limits.clone(), served.clone());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (t, l, s) = (t.clone(), l.clone(), s.clone());
        async move { Ok::<_, std::convert::Infallible>(serve(req, &t, &l, &s).await) }
    });
    // The builder settings of `cell::conn::serve_connection` with the default limits.
    let max_head = (limits.max_uri_length.0 + limits.max_header_size.0 + 1024).max(8192) as usize;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .half_close(false)
        .max_buf_size(max_head);
    let mut conn = builder.serve_connection(TokioIo::new(io), service);
    let run = std::future::poll_fn(|cx| {
        starved.set(false);
        // Malformed input ends the connection with an error: that is hyper refusing it.
        if Pin::new(&mut conn).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if starved.get() {
            // Everything was read and hyper waits for more: the client hangs up.
            end.set(true);
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    });
    RUNTIME.with(|rt| rt.block_on(run));
    served.take()
}

/// One request as a cell's `dispatch` sees it: the tracker's framing for it, the head checks,
/// then the body read to its end (as a WSGI route does) unless the request was refused.
async fn serve(
    req: Request<Incoming>,
    tracker: &RefCell<FramingTracker>,
    limits: &LimitsConfig,
    served: &RefCell<usize>,
) -> Response<Full<Bytes>> {
    *served.borrow_mut() += 1;
    let n = *served.borrow();
    let pending = tracker.borrow().pending();
    assert!(
        pending > 0,
        "hyper hands over request {n} but the framing tracker saw no head for it"
    );
    let framing = tracker.borrow_mut().next_head();
    let h = req.headers();
    let (te, cl) = (
        h.contains_key(header::TRANSFER_ENCODING),
        h.contains_key(header::CONTENT_LENGTH),
    );
    // hyper keeps Transfer-Encoding and drops a Content-Length beside it; nothing else.
    assert_eq!(
        framing.transfer_encoding, te,
        "request {n}: tracker {framing:?}, hyper's head {h:?}"
    );
    assert!(
        framing.content_length == cl || (framing.content_length && te),
        "request {n}: tracker {framing:?}, hyper's head {h:?}"
    );
    let verdict = head::check(&req, framing, limits);
    if framing.ambiguous() {
        assert_eq!(
            verdict.map_err(|r| (r.status, r.close)),
            Err((StatusCode::BAD_REQUEST, true)),
            "request {n}: CL with TE must be refused and closed"
        );
    }
    let mut resp = Response::new(Full::new(Bytes::new()));
    match verdict {
        Err(refused) => {
            *resp.status_mut() = refused.status;
            if refused.close {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
        Ok(()) => {
            if req.into_body().collect().await.is_err() {
                // A body hyper cannot frame: it closes the connection after this answer.
                *resp.status_mut() = StatusCode::BAD_REQUEST;
            }
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness itself: pipelined requests all reach the service, split reads or not, and
    /// a refused CL+TE request ends the connection.
    #[test]
    fn every_pipelined_request_is_served() {
        let wire = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\n\
            Content-Length: 3\r\n\r\nabcPOST /c HTTP/1.1\r\nHost: x\r\n\
            Transfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in [0, 1, 5, 64] {
            assert_eq!(exchange(cut, wire.to_vec()), 4, "cut {cut}");
        }
        let smuggle = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
            Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(exchange(0, smuggle.to_vec()), 1);
    }
}
