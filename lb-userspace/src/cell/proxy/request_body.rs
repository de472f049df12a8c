//! The request body on its way upstream. A small body that came with its head is read whole
//! before the upstream sees the request, so a broken chunked body is the client's 400 and no
//! upstream holds part of a request; it then goes out with a Content-Length. Larger bodies,
//! and bodies still on their way, stream, what was already there first.
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

/// Bodies up to this size are read before the request goes upstream (as the WSGI pre-read).
pub const PREREAD_LIMIT: usize = 64 * 1024;

/// Turns of the connection's task without a new body frame after which the client is taken
/// to have sent no more for now.
const IDLE_TURNS: u32 = 16;

/// The body sent upstream.
#[derive(Debug)]
pub enum UpBody {
    /// The client's, as it arrives.
    Client(Incoming),
    /// None: a request without a body can be sent again.
    Empty,
    /// Read whole beforehand, with the chunked body's trailer fields if any.
    Ready {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// The first bytes, read beforehand, then the rest as it arrives.
    Prefixed {
        first: Option<Bytes>,
        rest: Incoming,
    },
}

impl http_body::Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Client(b) => Pin::new(b).poll_frame(cx),
            UpBody::Empty => Poll::Ready(None),
            UpBody::Ready { data, trailers } => Poll::Ready(
                data.take()
                    .map(|d| Ok(Frame::data(d)))
                    .or_else(|| trailers.take().map(|t| Ok(Frame::trailers(t)))),
            ),
            UpBody::Prefixed { first, rest } => match first.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Client(b) => b.is_end_stream(),
            UpBody::Empty => true,
            UpBody::Ready { data, trailers } => data.is_none() && trailers.is_none(),
            UpBody::Prefixed { first, rest } => first.is_none() && rest.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Client(b) => b.size_hint(),
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Ready {
                data,
                trailers: None,
            } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            // Trailers need chunked framing: no exact size.
            UpBody::Ready { .. } => SizeHint::default(),
            UpBody::Prefixed { first, rest } => {
                let ahead = first.as_ref().map_or(0, |d| d.len() as u64);
                let mut hint = SizeHint::new();
                hint.set_lower(rest.size_hint().lower() + ahead);
                if let Some(upper) = rest.size_hint().upper() {
                    hint.set_upper(upper + ahead);
                }
                hint
            }
        }
    }
}

/// Takes what the client already sent of its body, up to `PREREAD_LIMIT`, without waiting:
/// the whole body when it ended there (the usual small request, sent with its head), else what
/// was there and the rest as it arrives (a client that trickles its body still streams). A
/// framing error, or a client gone, in what was there is a 400 (the connection then closes).
pub async fn preread(mut body: Incoming) -> Result<UpBody, StatusCode> {
    let mut data = BytesMut::new();
    let mut idle = 0;
    while data.len() <= PREREAD_LIMIT {
        // Ready frames only. hyper's connection task decodes the body a piece per turn, in
        // this same task: a few turns without a frame mean it found no more bytes to read.
        let next = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending => Poll::Ready(None),
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
        })
        .await;
        if next.is_some() {
            idle = 0;
        }
        match next {
            None if idle < IDLE_TURNS => {
                idle += 1;
                tokio::task::yield_now().await;
            }
            None => break,
            Some(None) => {
                return Ok(UpBody::Ready {
                    data: Some(data.freeze()),
                    trailers: None,
                });
            }
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                // Trailers end the body.
                Err(frame) => {
                    return Ok(UpBody::Ready {
                        data: Some(data.freeze()),
                        trailers: frame.into_trailers().ok(),
                    });
                }
            },
            Some(Some(Err(e))) => {
                tracing::info!("client error: request body: {e}; 400");
                return Err(StatusCode::BAD_REQUEST);
            }
        }
    }
    Ok(UpBody::Prefixed {
        first: (!data.is_empty()).then(|| data.freeze()),
        rest: body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Serves `raw` through hyper's server with `preread` on the request body: what it gave.
    async fn outcome(raw: &'static [u8], half_close: bool) -> String {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
            let what = match preread(req.into_body()).await {
                Err(s) => format!("error {}", s.as_u16()),
                Ok(UpBody::Ready { data, trailers }) => format!(
                    "ready {} trailers {}",
                    data.map_or(0, |d| d.len()),
                    trailers.map_or(0, |t| t.len())
                ),
                Ok(UpBody::Prefixed { first, .. }) => {
                    format!("prefixed {}", first.map_or(0, |d| d.len()))
                }
                Ok(_) => "other".into(),
            };
            let body = http_body_util::Full::new(Bytes::from(what));
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        });
        client.write_all(raw).await.expect("write");
        if half_close {
            client.shutdown().await.expect("half-close");
        }
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server), svc);
        let read = async move {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&all).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.parse().ok())
                        .expect("a length");
                    if body.len() >= len {
                        let _ = client.shutdown().await;
                        return body[..len].to_string();
                    }
                }
                let n = client.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed before the answer: {text}");
                all.extend_from_slice(&buf[..n]);
            }
        };
        let ((), out) = tokio::join!(
            async {
                let _ = conn.await;
            },
            read
        );
        out
    }

    #[tokio::test]
    async fn a_body_sent_with_its_head_is_read_whole_or_refused() {
        let chunked = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
        let with_trailer: &'static [u8] = [&chunked[..], b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"]
            .concat()
            .leak();
        assert_eq!(outcome(with_trailer, false).await, "ready 5 trailers 1");
        let broken: &'static [u8] = [&chunked[..], b"+5\r\nhello\r\n0\r\n\r\n"].concat().leak();
        assert_eq!(outcome(broken, false).await, "error 400");
        let cut = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhel";
        assert_eq!(outcome(cut, true).await, "error 400");
    }

    #[tokio::test]
    async fn a_body_still_on_its_way_streams() {
        let mut raw =
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n".to_vec();
        raw.extend_from_slice(&[b'x'; 1024]);
        raw.extend_from_slice(b"\r\n");
        assert_eq!(outcome(raw.leak(), false).await, "prefixed 1024");
    }
}
