//! Static files, the nginx part: safe path resolution under a root, an open-file cache so hot
//! files cost no syscalls, conditional requests, byte ranges and precompressed variants.
pub mod cache;
pub mod conditional;
pub mod path;
pub mod range;
mod route;

use std::rc::Rc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use crate::cell::body::Body;

pub use cache::FileCache;
use cache::{Coding, FileEntry, Found};
use conditional::{etag_list_matches, http_date_secs, if_range_allows};
use path::{PathRefusal, RelPath, resolve_rel};
use range::{RangeOutcome, parse_ranges};
pub use route::StaticRoute;

/// What the HTTP layer needs from a request to serve a file.
pub struct FileRequest<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// Full original path (for redirects) and query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Raw path below the route prefix.
    pub rel_raw: &'a str,
}

/// Serves one request from a static route.
pub fn serve(
    cache: &FileCache,
    route_id: usize,
    route: &StaticRoute,
    req: FileRequest<'_>,
) -> http::Response<Body> {
    if req.method != Method::GET && req.method != Method::HEAD {
        let mut r = simple(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let rel = match resolve_rel(req.rel_raw) {
        // Directory-ness comes from the whole URL path: `/` under prefix `/` is the root dir.
        Ok(r) => RelPath {
            trailing_slash: req.path.ends_with('/'),
            ..r
        },
        Err(PathRefusal::BadRequest) => return simple(StatusCode::BAD_REQUEST),
        Err(PathRefusal::NotFound) => return simple(StatusCode::NOT_FOUND),
    };
    let file = match cache.lookup(route_id, route, &rel) {
        Found::File(f) => f,
        Found::Missing => return simple(StatusCode::NOT_FOUND),
        Found::Forbidden => return simple(StatusCode::FORBIDDEN),
        Found::Failed => return simple(StatusCode::INTERNAL_SERVER_ERROR),
        Found::Redirect => {
            let mut loc = String::with_capacity(req.path.len() + 2);
            loc.push_str(req.path);
            loc.push('/');
            if let Some(q) = req.query {
                loc.push('?');
                loc.push_str(q);
            }
            let mut r = simple(StatusCode::MOVED_PERMANENTLY);
            if let Ok(v) = HeaderValue::from_str(&loc) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
    };
    let (chosen, coding) = choose_variant(&file, req.headers);
    respond_file(
        route,
        chosen,
        coding,
        !file.variants.is_empty(),
        req.method,
        req.headers,
    )
}

fn choose_variant<'f>(
    file: &'f Rc<FileEntry>,
    headers: &HeaderMap,
) -> (&'f FileEntry, Option<Coding>) {
    if file.variants.is_empty() {
        return (file, None);
    }
    let Some(ae) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return (file, None);
    };
    for (coding, v) in &file.variants {
        if accepts(ae, coding.token()) {
            return (v, Some(*coding));
        }
    }
    (file, None)
}

/// Whether an Accept-Encoding value accepts `token` with q > 0.
pub fn accepts(accept_encoding: &str, token: &str) -> bool {
    let mut star = None;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .find_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .or_else(|| p.trim().strip_prefix("Q="))
            })
            .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
        if name.eq_ignore_ascii_case(token) {
            return q > 0.0;
        }
        if name == "*" {
            star = Some(q > 0.0);
        }
    }
    star.unwrap_or(false)
}

fn respond_file(
    route: &StaticRoute,
    f: &FileEntry,
    coding: Option<Coding>,
    has_variants: bool,
    method: &Method,
    req: &HeaderMap,
) -> http::Response<Body> {
    let mut h = HeaderMap::with_capacity(10);
    h.insert(header::ETAG, f.etag.clone());
    h.insert(header::LAST_MODIFIED, f.last_modified.clone());
    if let Some(cc) = &route.cache_control {
        h.insert(header::CACHE_CONTROL, cc.clone());
    }
    if let Some(exp) = route.expires
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now() + exp))
    {
        h.insert(header::EXPIRES, v);
    }
    if has_variants {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }

    // RFC 9110 section 13.2.2 order: If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since.
    if let Some(im) = req.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        if !etag_list_matches(im, &f.etag, true) {
            return with_headers(StatusCode::PRECONDITION_FAILED, h, Body::empty());
        }
    } else if let Some(ius) = req
        .get(header::IF_UNMODIFIED_SINCE)
        .and_then(http_date_secs)
        && f.mtime_secs > ius
    {
        return with_headers(StatusCode::PRECONDITION_FAILED, h, Body::empty());
    }
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        if etag_list_matches(inm, &f.etag, false) {
            return with_headers(StatusCode::NOT_MODIFIED, h, Body::empty());
        }
    } else if let Some(ims) = req.get(header::IF_MODIFIED_SINCE).and_then(http_date_secs)
        && f.mtime_secs <= ims
    {
        return with_headers(StatusCode::NOT_MODIFIED, h, Body::empty());
    }

    h.insert(header::CONTENT_TYPE, f.content_type.clone());
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(c) = coding {
        h.insert(header::CONTENT_ENCODING, c.header());
    }
    let head = method == Method::HEAD;

    if method == Method::GET
        && let Some(range) = req.get(header::RANGE).and_then(|v| v.to_str().ok())
        && if_range_allows(req, f)
    {
        match parse_ranges(range, f.len) {
            RangeOutcome::Ignore => {}
            RangeOutcome::Unsatisfiable => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", f.len)) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                h.remove(header::CONTENT_TYPE);
                h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                return with_headers(StatusCode::RANGE_NOT_SATISFIABLE, h, Body::empty());
            }
            RangeOutcome::Ranges(ranges) if ranges.len() == 1 => {
                let (s, e) = ranges[0];
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{e}/{}", f.len)) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(e - s + 1));
                return with_headers(
                    StatusCode::PARTIAL_CONTENT,
                    h,
                    Body::one(f.body.slice(s as usize..=e as usize)),
                );
            }
            RangeOutcome::Ranges(ranges) => {
                let boundary = format!(
                    "portico-{:016x}",
                    f.ident.ino ^ (f.ident.mtime_ns as u64).rotate_left(17)
                );
                let mut chunks = Vec::with_capacity(ranges.len() * 2 + 1);
                let ct = f
                    .content_type
                    .to_str()
                    .unwrap_or("application/octet-stream");
                for (i, &(s, e)) in ranges.iter().enumerate() {
                    let mut part = BytesMut::new();
                    if i > 0 {
                        part.extend_from_slice(b"\r\n");
                    }
                    part.extend_from_slice(
                        format!("--{boundary}\r\nContent-Type: {ct}\r\nContent-Range: bytes {s}-{e}/{}\r\n\r\n", f.len)
                            .as_bytes(),
                    );
                    chunks.push(part.freeze());
                    chunks.push(f.body.slice(s as usize..=e as usize));
                }
                chunks.push(Bytes::from(format!("\r\n--{boundary}--\r\n")));
                let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                if let Ok(v) =
                    HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
                {
                    h.insert(header::CONTENT_TYPE, v);
                }
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
                return with_headers(StatusCode::PARTIAL_CONTENT, h, Body::many(chunks));
            }
        }
    }

    h.insert(header::CONTENT_LENGTH, f.content_length.clone());
    let body = if head {
        Body::empty()
    } else {
        Body::one(f.body.clone())
    };
    with_headers(StatusCode::OK, h, body)
}

fn with_headers(status: StatusCode, headers: HeaderMap, body: Body) -> http::Response<Body> {
    let mut r = http::Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// A short plain response with no cache headers (errors, redirects).
pub fn simple(status: StatusCode) -> http::Response<Body> {
    crate::cell::body::status_page(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding() {
        assert!(accepts("gzip, deflate, br", "br"));
        assert!(accepts("gzip;q=0.5", "gzip"));
        assert!(!accepts("gzip;q=0", "gzip"));
        assert!(!accepts("identity", "gzip"));
        assert!(accepts("*", "br"));
        assert!(!accepts("*, br;q=0", "br"));
    }
}
