//! The response body every handler returns: whole chunks of `Bytes` (in-memory or mapped file
//! pages), with an exact size so hyper writes Content-Length and never copies the payload.
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderValue};
use http_body::{Frame, SizeHint};

/// Called when the response body is finished or dropped (end of a request on the connection).
pub trait OnDone {
    fn done(&self);
}

pub struct Body {
    chunks: VecDeque<Bytes>,
    remaining: u64,
    on_done: Option<std::rc::Rc<dyn OnDone>>,
}

impl Body {
    pub fn empty() -> Self {
        Body {
            chunks: VecDeque::new(),
            remaining: 0,
            on_done: None,
        }
    }
    pub fn one(b: Bytes) -> Self {
        let remaining = b.len() as u64;
        let mut chunks = VecDeque::with_capacity(1);
        if !b.is_empty() {
            chunks.push_back(b);
        }
        Body {
            chunks,
            remaining,
            on_done: None,
        }
    }
    pub fn many(chunks: Vec<Bytes>) -> Self {
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Body {
            chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
            remaining,
            on_done: None,
        }
    }
    /// Bytes this body will send.
    pub fn len(&self) -> u64 {
        self.remaining
    }
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
    pub fn set_on_done(&mut self, f: std::rc::Rc<dyn OnDone>) {
        self.on_done = Some(f);
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(f) = self.on_done.take() {
            f.done();
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.chunks.pop_front() {
            Some(c) => {
                self.remaining -= c.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(c))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
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
    use http_body::Body as _;

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
