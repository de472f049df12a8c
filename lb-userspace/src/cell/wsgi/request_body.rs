//! A WSGI request's body on its way to the app's thread. Bodies up to `PREREAD_LIMIT` are read
//! before the app runs (so framing errors are answered 400 without calling it); larger ones,
//! and any with `Expect: 100-continue`, are pumped from the socket only as the app reads.
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::header::{self, HeaderMap};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};
use wsgi_worker::BodySource;

/// Bodies up to this size are read before the app runs (nginx's client_body_buffer_size): the
/// app's thread then finds the whole body ready instead of waiting on this thread per chunk.
pub const PREREAD_LIMIT: u64 = 64 * 1024;

/// Upper bound on a request body the app did not read that the cell still reads and discards
/// to keep the connection; beyond it the connection is closed instead.
const DRAIN_LIMIT: u64 = 1 << 20;

/// The status to answer when the body fails while the app reads it (the client's error: 400
/// for broken framing, 413 past `max_body_size`), whatever the app did.
pub type BodyFailure = Rc<Cell<Option<StatusCode>>>;

/// Where the app's `wsgi.input` reads from, or the status that refuses the request (the
/// connection then closes). The pre-read must end `within` (else 408: a client trickling a
/// small body would hold the connection before any app timeout applies). `failed` is set if
/// the body fails later, while the app reads it.
pub async fn source(
    headers: &HeaderMap,
    mut body: Incoming,
    max: u64,
    within: Duration,
    failed: &BodyFailure,
) -> Result<Option<BodySource>, StatusCode> {
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if !chunked && length.unwrap_or(0) == 0 {
        return Ok(None);
    }
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let read_first = !expects_continue && (chunked || length.is_some_and(|n| n <= PREREAD_LIMIT));
    let mut prefix = Bytes::new();
    if read_first {
        let (bytes, complete) = tokio::time::timeout(within, preread(&mut body, max))
            .await
            .map_err(|_| {
                tracing::info!("client error: request body not sent within {within:?}; 408");
                StatusCode::REQUEST_TIMEOUT
            })??;
        if complete {
            return Ok(Some(BodySource::ready(bytes)));
        }
        prefix = bytes;
    }
    let (want_tx, want_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_local(pump(
        body,
        Pump {
            want: want_rx,
            tx,
            max,
            expects_continue,
            total: prefix.len() as u64,
            failed: failed.clone(),
        },
    ));
    Ok(Some(BodySource {
        want: Some(want_tx),
        rx,
        ready: (!prefix.is_empty()).then_some(prefix),
    }))
}

/// Reads up to `PREREAD_LIMIT` bytes of the body: (the bytes, whether that was all of it).
async fn preread(body: &mut Incoming, max: u64) -> Result<(Bytes, bool), StatusCode> {
    let mut buf = BytesMut::new();
    let mut only: Option<Bytes> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            client_error(&e);
            StatusCode::BAD_REQUEST
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        // One frame is kept as it came (no copy); a second one starts the buffer.
        match only.take() {
            None if buf.is_empty() => only = Some(data),
            None => buf.extend_from_slice(&data),
            Some(first) => {
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
            }
        }
        let total = only.as_ref().map_or(buf.len(), Bytes::len) as u64;
        if total > max {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        if total > PREREAD_LIMIT {
            return Ok((only.unwrap_or_else(|| buf.freeze()), false));
        }
    }
    Ok((only.unwrap_or_else(|| buf.freeze()), true))
}

/// A framing error in a request body is the client's: logged as such, without a traceback.
fn client_error(e: &hyper::Error) {
    tracing::info!("client error: malformed request body ({e}); answering 400 and closing");
}

struct Pump {
    want: oneshot::Receiver<()>,
    tx: mpsc::Sender<Result<Bytes, String>>,
    max: u64,
    expects_continue: bool,
    /// Bytes already read (a pre-read prefix).
    total: u64,
    failed: BodyFailure,
}

/// Moves the request body from hyper to the app's thread, starting only when the app reads it
/// (so `Expect: 100-continue` is answered only then).
async fn pump(mut body: Incoming, p: Pump) {
    let Pump {
        want,
        tx,
        max,
        expects_continue,
        mut total,
        failed,
    } = p;
    let wanted = want.await.is_ok();
    if !wanted && expects_continue {
        // The client has not sent the body; dropping it makes hyper close instead of asking.
        return;
    }
    let mut forward = wanted;
    while let Some(frame) = body.frame().await {
        match frame {
            Err(e) => {
                client_error(&e);
                failed.set(Some(StatusCode::BAD_REQUEST));
                if forward {
                    let _ = tx.send(Err(e.to_string())).await;
                }
                return;
            }
            Ok(f) => {
                let Ok(data) = f.into_data() else { continue };
                total += data.len() as u64;
                if total > max {
                    failed.set(Some(StatusCode::PAYLOAD_TOO_LARGE));
                    if forward {
                        let _ = tx
                            .send(Err("request body exceeds limits.max_body_size".into()))
                            .await;
                    }
                    return;
                }
                if !forward && total > DRAIN_LIMIT {
                    return;
                }
                if forward && tx.send(Ok(data)).await.is_err() {
                    // The request finished without reading everything: drain, keep the
                    // connection.
                    forward = false;
                }
            }
        }
    }
}
