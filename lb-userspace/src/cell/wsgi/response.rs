//! A WSGI app's response as the cell sends it: whole bodies held to the app's Content-Length,
//! streams under the request deadline, and `wsgi.file_wrapper` files sent with sendfile.
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use wsgi_worker::{BodyOut, Head};

use crate::cell::body::{Body, Stream, status_page};
use crate::cell::context::CellCtx;
use crate::cell::static_files::range::{RangeOutcome, parse_ranges};

pub fn build(
    ctx: &CellCtx,
    head: Head,
    out: BodyOut,
    is_head: bool,
    range: Option<&str>,
    deadline: tokio::time::Instant,
    on_timeout: Box<dyn FnOnce()>,
) -> (Response<Body>, bool) {
    let Head {
        status,
        reason,
        headers,
        content_length,
    } = head;
    let mut status = status;
    let mut extra: Vec<(header::HeaderName, HeaderValue)> = Vec::new();
    let mut keep_app_length = true;
    let body = match out {
        BodyOut::Full(chunks) => {
            let b = Body::many(chunks);
            match content_length {
                _ if is_head && b.is_empty() => b,
                Some(cl) if cl > b.len() && !is_head => {
                    // Like gunicorn: the head and the bytes the app gave, then close, so the
                    // client sees a truncated response rather than a corrected one.
                    tracing::warn!(
                        "WSGI app declared Content-Length {cl} but returned {} bytes; sending them and closing the connection",
                        b.len()
                    );
                    b.short_of(cl)
                }
                Some(cl) if cl < b.len() => {
                    tracing::warn!(
                        "WSGI app declared Content-Length {cl} but returned {} bytes; sending what it returned",
                        b.len()
                    );
                    keep_app_length = false;
                    b
                }
                _ => b,
            }
        }
        BodyOut::Stream { first, rx } => Body::stream(
            first,
            Stream {
                rx,
                declared: if is_head { None } else { content_length },
                sent: 0,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                on_timeout: Some(on_timeout),
                stats: ctx.stats,
            },
        ),
        BodyOut::File { file, offset, len } => {
            let mut start = offset;
            let mut len = content_length.map_or(len, |cl| cl.min(len));
            if let Some(r) = range
                && status == StatusCode::OK
            {
                match parse_ranges(r, len) {
                    RangeOutcome::Ranges(rs) if rs.len() == 1 => {
                        let (first, last) = rs[0];
                        status = StatusCode::PARTIAL_CONTENT;
                        extra.push((
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes {first}-{last}/{len}"))
                                .expect("ascii"),
                        ));
                        start += first;
                        len = last - first + 1;
                        keep_app_length = false;
                    }
                    RangeOutcome::Unsatisfiable => {
                        let mut r = status_page(StatusCode::RANGE_NOT_SATISFIABLE);
                        r.headers_mut().insert(
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
                        );
                        return (r, false);
                    }
                    _ => {}
                }
                extra.push((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
            }
            match map_region(&file, start, len) {
                Ok(b) => Body::file(b, Arc::new(file), start),
                Err(e) => {
                    tracing::error!("wsgi.file_wrapper: {e}");
                    return (status_page(StatusCode::INTERNAL_SERVER_ERROR), false);
                }
            }
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Some(reason) = reason
        && let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason)
    {
        resp.extensions_mut().insert(r);
    }
    let h = resp.headers_mut();
    for (n, v) in headers {
        if n == header::CONTENT_LENGTH && !keep_app_length {
            continue;
        }
        h.append(n, v);
    }
    for (n, v) in extra {
        h.insert(n, v);
    }
    if !keep_app_length && !resp.body().is_stream() {
        let len = resp.body().len();
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    (resp, false)
}

/// A file region as `Bytes` backed by a private mapping (no copy through userspace buffers).
fn map_region(file: &std::fs::File, start: u64, len: u64) -> std::io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let end = start + len;
    let map = crate::sys::map_file(file, end as usize).map_err(std::io::Error::other)?;
    Ok(Bytes::from_owner(map).slice(start as usize..end as usize))
}
