//! The response body every handler returns: whole chunks of `Bytes` (in-memory or mapped file
//! pages), with an exact size so hyper writes Content-Length and never copies the payload; or a
//! stream from a WSGI thread, held to the app's Content-Length and the request deadline.
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use wsgi_worker::Piece;

use crate::cell::proxy::buffer::ReadAhead;

use crate::metrics::CellStats;
use http::StatusCode;
use http::header::{self, HeaderValue};
use http_body::{Body as _, Frame, SizeHint};
use std::future::Future as _;

/// What a response body asks of its connection.
pub trait ConnHooks {
    /// The body is finished or dropped (end of a request on the connection). `streamed`: body
    /// bytes of a streamed body (whose size was not known up front).
    fn done(&self, streamed: u64);
    /// Ask to be told when everything written so far has left hyper's buffer.
    fn want_flush(&self);
    /// Ready once the connection flushed after the last `want_flush`.
    fn poll_flushed(&self, cx: &mut Context<'_>) -> Poll<()>;
}

pub struct Body {
    chunks: VecDeque<Bytes>,
    remaining: u64,
    hooks: Option<std::rc::Rc<dyn ConnHooks>>,
    stream: Option<Box<Stream>>,
    sendfile: Option<FileRegion>,
    /// Called with the bytes sent when a streamed body ends (the access log line).
    on_end: Option<Box<dyn FnOnce(u64)>>,
    /// The app declared this Content-Length but its whole body is shorter: the bytes it gave
    /// are sent under that length, then the connection is closed (the client sees a
    /// truncated response, as with gunicorn).
    short_of: Option<u64>,
    /// The bytes given are out; an abort waits for the connection to flush them.
    aborting: bool,
    /// A proxied response, relayed from the upstream as it arrives.
    relay: Option<Box<Relay>>,
}

/// An upstream response body on its way through.
pub struct Relay {
    body: Source,
    sent: u64,
    /// Longest wait for the next bytes.
    timeout: std::time::Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Run when the body was read to its end (the connection goes back to the pool).
    on_end: Option<Box<dyn FnOnce()>>,
    stats: CellStats<'static>,
}

/// Where a relayed body's frames come from.
enum Source {
    /// Read from the upstream as the client takes them.
    Direct(Incoming),
    /// Read ahead of the client by a task (`buffering = true`).
    Ahead(ReadAhead),
}

impl Source {
    fn is_end_stream(&self) -> bool {
        match self {
            Source::Direct(b) => b.is_end_stream(),
            Source::Ahead(b) => b.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Direct(b) => b.size_hint(),
            Source::Ahead(b) => b.size_hint(),
        }
    }
}

/// A body chunk that is a mapping of a file region: the connection sends it with sendfile(2)
/// from the file instead of writing the mapped bytes (which are then never touched).
pub struct FileRegion {
    /// Keeps the mapping alive while the region is registered, so its address range cannot be
    /// reused by another mapping meanwhile.
    pub _mapping: Bytes,
    pub file: std::sync::Arc<std::fs::File>,
    /// Offset in the file of the chunk's first byte.
    pub offset: u64,
    /// Address and length of the chunk in memory (the mapping).
    pub ptr: usize,
    pub len: usize,
}

/// A body that arrives from a WSGI thread while it is sent.
pub struct Stream {
    pub rx: mpsc::Receiver<Piece>,
    /// The app's Content-Length: the body is cut there, and a shorter one aborts the connection.
    pub declared: Option<u64>,
    pub sent: u64,
    pub deadline: Pin<Box<tokio::time::Sleep>>,
    /// Run when the deadline passes (interrupt the request's thread).
    pub on_timeout: Option<Box<dyn FnOnce()>>,
    pub stats: CellStats<'static>,
}

impl Stream {
    fn take(&mut self, mut b: Bytes) -> Option<Bytes> {
        if let Some(d) = self.declared {
            let left = d - self.sent;
            if left == 0 {
                return None;
            }
            if b.len() as u64 > left {
                tracing::warn!(
                    "the app sent more than its Content-Length ({d}); the excess is dropped"
                );
                b.truncate(left as usize);
            }
        }
        self.sent += b.len() as u64;
        Some(b)
    }
}

impl Body {
    /// The one constructor: whole chunks (`remaining` bytes), or a stream after them.
    fn from_parts(chunks: VecDeque<Bytes>, remaining: u64, stream: Option<Box<Stream>>) -> Self {
        Body {
            chunks,
            remaining,
            hooks: None,
            stream,
            sendfile: None,
            on_end: None,
            short_of: None,
            aborting: false,
            relay: None,
        }
    }
    /// A proxied response body: `on_end` runs once it was read to the end.
    pub fn relay(
        body: Incoming,
        timeout: std::time::Duration,
        on_end: Box<dyn FnOnce()>,
        stats: CellStats<'static>,
    ) -> Self {
        Body::relay_from(Source::Direct(body), timeout, Some(on_end), stats)
    }
    /// A proxied response body read ahead of the client (its task ends the upstream side).
    pub fn read_ahead(
        body: ReadAhead,
        timeout: std::time::Duration,
        stats: CellStats<'static>,
    ) -> Self {
        Body::relay_from(Source::Ahead(body), timeout, None, stats)
    }
    fn relay_from(
        body: Source,
        timeout: std::time::Duration,
        on_end: Option<Box<dyn FnOnce()>>,
        stats: CellStats<'static>,
    ) -> Self {
        let mut b = Body::from_parts(VecDeque::new(), 0, None);
        b.relay = Some(Box::new(Relay {
            body,
            sent: 0,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            on_end,
            stats,
        }));
        b
    }
    pub fn empty() -> Self {
        Body::from_parts(VecDeque::new(), 0, None)
    }
    /// A streamed body: `first`, then whatever arrives on the stream's channel.
    pub fn stream(first: Bytes, mut s: Stream) -> Self {
        let mut chunks = VecDeque::with_capacity(1);
        if let Some(b) = s.take(first) {
            chunks.push_back(b);
        }
        Body::from_parts(chunks, 0, Some(Box::new(s)))
    }
    pub fn is_stream(&self) -> bool {
        self.stream.is_some() || self.relay.is_some()
    }
    pub fn one(b: Bytes) -> Self {
        let remaining = b.len() as u64;
        let mut chunks = VecDeque::with_capacity(1);
        if !b.is_empty() {
            chunks.push_back(b);
        }
        Body::from_parts(chunks, remaining, None)
    }
    pub fn many(chunks: Vec<Bytes>) -> Self {
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        let chunks = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        Body::from_parts(chunks, remaining, None)
    }
    /// Bytes this body will send.
    pub fn len(&self) -> u64 {
        self.remaining
    }
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
    /// A whole body that is one mapped file region, sent with sendfile(2).
    pub fn file(map: Bytes, file: std::sync::Arc<std::fs::File>, offset: u64) -> Self {
        let region = FileRegion {
            _mapping: map.clone(),
            file,
            offset,
            ptr: map.as_ptr() as usize,
            len: map.len(),
        };
        let mut b = Body::one(map);
        if region.len > 0 {
            b.sendfile = Some(region);
        }
        b
    }
    pub fn take_file_region(&mut self) -> Option<FileRegion> {
        self.sendfile.take()
    }
    pub fn set_on_end(&mut self, f: Box<dyn FnOnce(u64)>) {
        self.on_end = Some(f);
    }
    pub fn set_hooks(&mut self, f: std::rc::Rc<dyn ConnHooks>) {
        self.hooks = Some(f);
    }
    /// Announces `declared` bytes (more than this body has): see `short_of`.
    pub fn short_of(mut self, declared: u64) -> Self {
        debug_assert!(declared > self.remaining && self.stream.is_none());
        self.short_of = Some(declared);
        self
    }

    /// Ends a body that cannot reach its length: once the bytes already given have left
    /// hyper's buffer, an error makes hyper close the connection.
    fn poll_abort(
        &mut self,
        cx: &mut Context<'_>,
        why: &'static str,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(hooks) = &self.hooks {
            if !self.aborting {
                self.aborting = true;
                hooks.want_flush();
            }
            if hooks.poll_flushed(cx).is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(Some(Err(std::io::Error::other(why))))
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // A streamed or relayed body's size is known now: count it, and log the request.
        if let Some(r) = self.relay.as_mut()
            && r.body.is_end_stream()
            && let Some(f) = r.on_end.take()
        {
            // Read to its end (hyper stops polling once the length is reached): the
            // connection can serve another request.
            f();
        }
        let streamed = match (&self.relay, &self.stream) {
            (Some(r), _) => Some((r.sent, r.stats)),
            (None, Some(s)) => Some((s.sent, s.stats)),
            (None, None) => None,
        };
        if let Some((sent, stats)) = streamed {
            stats.add(crate::metrics::cell_counter::RESPONSE_BODY_BYTES, sent);
            if let Some(f) = self.on_end.take() {
                f(sent);
            }
        }
        if let Some(f) = self.hooks.take() {
            f.done(streamed.map_or(0, |(sent, _)| sent));
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(c) = self.chunks.pop_front() {
            if self.stream.is_none() {
                self.remaining -= c.len() as u64;
            }
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        if self.aborting {
            return self.poll_abort(cx, "short response body");
        }
        if let Some(r) = self.relay.as_mut() {
            return r.poll_frame(cx);
        }
        let Some(s) = self.stream.as_mut() else {
            if self.short_of.is_some() {
                return self.poll_abort(cx, "response body shorter than its Content-Length");
            }
            return Poll::Ready(None);
        };
        loop {
            if s.declared.is_some_and(|d| s.sent >= d) {
                return Poll::Ready(None);
            }
            if s.deadline.as_mut().poll(cx).is_ready() {
                if let Some(f) = s.on_timeout.take() {
                    f();
                }
                return Poll::Ready(Some(Err(std::io::Error::other(
                    "the app's response ran past request_timeout",
                ))));
            }
            return match s.rx.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Piece::Data(b))) => match s.take(b) {
                    Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                    None => continue,
                },
                Poll::Ready(Some(Piece::Abort)) => Poll::Ready(Some(Err(std::io::Error::other(
                    "the application failed mid-response",
                )))),
                Poll::Ready(Some(Piece::Trailers(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Poll::Ready(None) => match s.declared {
                    Some(d) if s.sent < d => {
                        tracing::warn!(
                            "WSGI app sent {} bytes of its Content-Length {d}; sending them and closing the connection",
                            s.sent
                        );
                        self.poll_abort(cx, "short WSGI response body")
                    }
                    _ => Poll::Ready(None),
                },
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.relay {
            Some(r) => r.body.is_end_stream(),
            None => self.chunks.is_empty() && self.stream.is_none() && self.short_of.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(r) = &self.relay {
            return r.body.size_hint();
        }
        match &self.stream {
            None => SizeHint::with_exact(self.short_of.unwrap_or(self.remaining)),
            Some(s) => match s.declared {
                Some(d) => SizeHint::with_exact(
                    d - (s.sent - self.chunks.iter().map(|c| c.len() as u64).sum::<u64>()),
                ),
                None => SizeHint::default(),
            },
        }
    }
}

impl Relay {
    /// Counts the bytes of a frame on its way out.
    fn sent_of(
        &mut self,
        p: Poll<Option<Result<Frame<Bytes>, std::io::Error>>>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Poll::Ready(Some(Ok(f))) = &p
            && let Some(d) = f.data_ref()
        {
            self.sent += d.len() as u64;
        }
        p
    }
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = match &mut self.body {
            Source::Direct(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(std::io::Error::other))),
            // Its task keeps the read_timeout and logs a failure.
            Source::Ahead(b) => {
                let p = b.poll_frame(cx);
                return self.sent_of(p);
            }
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.sent += d.len() as u64;
                }
                let deadline = tokio::time::Instant::now() + self.timeout;
                self.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!("upstream response body: {e}; closing the connection");
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(f) = self.on_end.take() {
                    f();
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if self.sleep.as_mut().poll(cx).is_ready() {
                    tracing::warn!(
                        "upstream response body: nothing for {:?} (read_timeout); closing",
                        self.timeout
                    );
                    return Poll::Ready(Some(Err(std::io::Error::other("upstream read timeout"))));
                }
                Poll::Pending
            }
        }
    }
}

/// A small text/plain page for a status code: the reason phrase, never internals.
pub fn status_page(status: StatusCode) -> http::Response<Body> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut r = http::Response::new(if status == StatusCode::NOT_MODIFIED {
        Body::empty()
    } else {
        Body::one(Bytes::from(text))
    });
    *r.status_mut() = status;
    if !r.body().is_empty() {
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let len = r.body().len();
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_exact() {
        let b = Body::many(vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cde"),
        ]);
        assert_eq!(b.size_hint().exact(), Some(5));
        assert!(!b.is_end_stream());
        assert!(Body::empty().is_end_stream());
    }

    #[test]
    fn status_pages_name_the_status_only() {
        let r = status_page(StatusCode::NOT_FOUND);
        assert_eq!(r.status(), 404);
        assert_eq!(r.body().len(), "404 Not Found\n".len() as u64);
    }
}
