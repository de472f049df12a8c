//! Static files, the nginx part: safe path resolution under a root, an open-file cache so hot
//! files cost no syscalls, conditional requests, byte ranges and precompressed variants.
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use crate::body::Body;
use crate::config::StaticConfig;

/// Files up to this size are read into memory; larger ones are memory-mapped.
const INLINE_MAX: u64 = 256 * 1024;
/// How long a cached lookup is trusted before its metadata is checked again.
const REVALIDATE_AFTER: Duration = Duration::from_secs(1);
/// Most cached lookups per cell; past it the cache starts over.
const MAX_ENTRIES: usize = 16 * 1024;
/// Most bytes of in-memory file contents per cell; past it the cache starts over.
const MAX_INLINE_BYTES: u64 = 256 << 20;
/// More ranges than this in one request are answered with the whole file.
const MAX_RANGES: usize = 32;

/// One static route, with its header values computed once.
#[derive(Debug)]
pub struct StaticRoute {
    pub root: PathBuf,
    pub cache_control: Option<HeaderValue>,
    pub expires: Option<Duration>,
    pub index: Vec<String>,
    pub precompressed: bool,
}

impl StaticRoute {
    pub fn new(cfg: &StaticConfig) -> Self {
        let cache_control = match (&cfg.cache_control, cfg.expires) {
            (Some(cc), _) => HeaderValue::from_str(cc).ok(),
            (None, Some(e)) => HeaderValue::from_str(&format!("max-age={}", e.0.as_secs())).ok(),
            (None, None) => None,
        };
        Self {
            root: cfg.root.clone(),
            cache_control,
            expires: cfg.expires.map(|d| d.0),
            index: cfg.index.clone(),
            precompressed: cfg.precompressed,
        }
    }
}

/// Why a request path is refused before touching the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// Malformed or hostile (NUL, backslash, `..`, bad escape): 400.
    BadRequest,
    /// Hidden or unreachable by design (dotfiles, encoded slashes): 404.
    NotFound,
}

/// The request path below the route prefix, decoded and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    /// Segments joined by '/', no leading or trailing slash; empty for the route root.
    pub path: Vec<u8>,
    pub trailing_slash: bool,
}

/// Decodes and checks the part of the URL path below the prefix. Never yields a path that can
/// leave the root: `..` and hostile encodings are refused, `.` and empty segments dropped.
pub fn resolve_rel(raw: &str) -> Result<RelPath, PathRefusal> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|&c| hex(c)),
                bytes.get(i + 2).and_then(|&c| hex(c)),
            ) else {
                return Err(PathRefusal::BadRequest);
            };
            let v = (h * 16 + l) as u8;
            if v == b'/' {
                // An encoded slash would make a segment boundary the router never saw.
                return Err(PathRefusal::NotFound);
            }
            decoded.push(v);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    if decoded.iter().any(|&b| b == 0 || b == b'\\') {
        return Err(PathRefusal::BadRequest);
    }
    let trailing_slash = decoded.last() == Some(&b'/');
    let mut out = Vec::with_capacity(decoded.len());
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => continue,
            b".." => return Err(PathRefusal::BadRequest),
            s if s[0] == b'.' => return Err(PathRefusal::NotFound),
            s => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(s);
            }
        }
    }
    Ok(RelPath {
        path: out,
        trailing_slash,
    })
}

/// Content coding of a precompressed sibling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Br,
    Gzip,
}

impl Coding {
    fn suffix(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gz",
        }
    }
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        })
    }
    fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }
}

/// An open, fully described file, shared by every request for it.
#[derive(Debug)]
pub struct FileEntry {
    pub body: Bytes,
    pub len: u64,
    pub mtime_secs: u64,
    pub etag: HeaderValue,
    pub last_modified: HeaderValue,
    pub content_type: HeaderValue,
    pub content_length: HeaderValue,
    /// Precompressed siblings, best first.
    pub variants: Vec<(Coding, Rc<FileEntry>)>,
    ident: Ident,
}

/// What identifies a file's version: a change means reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ident {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Ident {
    fn of(m: &std::fs::Metadata) -> Self {
        Ident {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        }
    }
}

/// Result of looking a path up.
#[derive(Debug, Clone)]
enum Found {
    File(Rc<FileEntry>),
    /// A directory asked for without its trailing slash.
    Redirect,
    /// A directory with no index file (no listings).
    Forbidden,
    NotFound,
}

#[derive(Debug)]
struct CacheSlot {
    found: Found,
    /// Path whose metadata is checked on revalidation (None for misses).
    checked_path: Option<PathBuf>,
    checked_at: Instant,
}

/// Per-cell open-file and metadata cache (cells are single-threaded, so no locks).
#[derive(Default)]
pub struct FileCache {
    /// (route, trailing slash) -> path -> slot: a hit looks the path up by reference, no allocation.
    slots: RefCell<HashMap<(usize, bool), HashMap<Vec<u8>, CacheSlot>>>,
    entries: std::cell::Cell<usize>,
    inline_bytes: std::cell::Cell<u64>,
}

impl FileCache {
    fn lookup(&self, route_id: usize, route: &StaticRoute, rel: &RelPath) -> Found {
        let now = Instant::now();
        let group = (route_id, rel.trailing_slash);
        {
            let mut slots = self.slots.borrow_mut();
            if let Some(slot) = slots
                .get_mut(&group)
                .and_then(|m| m.get_mut(rel.path.as_slice()))
            {
                if now.duration_since(slot.checked_at) < REVALIDATE_AFTER {
                    return slot.found.clone();
                }
                if let (Found::File(f), Some(p)) = (&slot.found, &slot.checked_path)
                    && std::fs::metadata(p)
                        .map(|m| Ident::of(&m) == f.ident)
                        .unwrap_or(false)
                    && f.variants.iter().all(|(c, v)| {
                        std::fs::metadata(sibling(p, *c))
                            .map(|m| Ident::of(&m) == v.ident)
                            .unwrap_or(false)
                    })
                {
                    slot.checked_at = now;
                    return slot.found.clone();
                }
            }
        }
        let (found, checked_path) = self.load(route, rel);
        let mut slots = self.slots.borrow_mut();
        if self.entries.get() >= MAX_ENTRIES || self.inline_bytes.get() > MAX_INLINE_BYTES {
            slots.clear();
            self.entries.set(0);
            self.inline_bytes.set(0);
        }
        if let Found::File(f) = &found
            && f.len <= INLINE_MAX
        {
            self.inline_bytes.set(self.inline_bytes.get() + f.len);
        }
        let slot = CacheSlot {
            found: found.clone(),
            checked_path,
            checked_at: now,
        };
        if slots
            .entry(group)
            .or_default()
            .insert(rel.path.clone(), slot)
            .is_none()
        {
            self.entries.set(self.entries.get() + 1);
        }
        found
    }

    fn load(&self, route: &StaticRoute, rel: &RelPath) -> (Found, Option<PathBuf>) {
        let joined = route.root.join(std::ffi::OsStr::from_bytes(&rel.path));
        // canonicalize resolves symlinks; anything that lands outside the root is not there.
        let Ok(real) = joined.canonicalize() else {
            return (Found::NotFound, None);
        };
        if !real.starts_with(&route.root) {
            return (Found::NotFound, None);
        }
        let Ok(meta) = std::fs::metadata(&real) else {
            return (Found::NotFound, None);
        };
        if meta.is_dir() {
            if !rel.trailing_slash {
                return (Found::Redirect, None);
            }
            for idx in &route.index {
                let candidate = real.join(idx);
                if let Ok(c) = candidate.canonicalize()
                    && c.starts_with(&route.root)
                    && let Some(entry) = open_entry(&c, route.precompressed)
                {
                    return (Found::File(Rc::new(entry)), Some(c));
                }
            }
            return (Found::Forbidden, None);
        }
        if rel.trailing_slash {
            return (Found::NotFound, None);
        }
        match open_entry(&real, route.precompressed) {
            Some(e) => (Found::File(Rc::new(e)), Some(real)),
            None => (Found::NotFound, None),
        }
    }
}

fn sibling(path: &Path, coding: Coding) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(coding.suffix());
    PathBuf::from(s)
}

fn open_entry(path: &Path, precompressed: bool) -> Option<FileEntry> {
    let mut entry = open_one(path, content_type_for(path))?;
    if precompressed {
        for coding in [Coding::Br, Coding::Gzip] {
            let sib = sibling(path, coding);
            // The sibling must also be a regular file inside the same directory tree.
            if let Ok(real) = sib.canonicalize()
                && real.parent() == path.parent()
                && let Some(mut v) = open_one(&real, entry.content_type.clone())
            {
                v.etag = HeaderValue::from_str(&format!(
                    "{}-{}\"",
                    v.etag.to_str().unwrap_or("\"").trim_end_matches('"'),
                    coding.suffix()
                ))
                .ok()?;
                entry.variants.push((coding, Rc::new(v)));
            }
        }
    }
    Some(entry)
}

fn open_one(path: &Path, content_type: HeaderValue) -> Option<FileEntry> {
    let mut file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let len = meta.len();
    let body = if len == 0 {
        Bytes::new()
    } else if len <= INLINE_MAX {
        let mut buf = Vec::with_capacity(len as usize);
        file.read_to_end(&mut buf).ok()?;
        if buf.len() as u64 != len {
            return None;
        }
        Bytes::from(buf)
    } else {
        Bytes::from_owner(crate::sys::map_file(&file, len as usize).ok()?)
    };
    let mtime = meta.modified().ok()?;
    let mtime_secs = mtime
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ident = Ident::of(&meta);
    // Strong validator from version identity, like nginx: mtime (ns) and size.
    let etag = format!("\"{:x}-{:x}\"", ident.mtime_ns as u64, len);
    Some(FileEntry {
        body,
        len,
        mtime_secs,
        etag: HeaderValue::from_str(&etag).ok()?,
        last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(
            UNIX_EPOCH + Duration::from_secs(mtime_secs),
        ))
        .ok()?,
        content_type,
        content_length: HeaderValue::from(len),
        variants: Vec::new(),
        ident,
    })
}

/// `Content-Type` from the extension; text types get `charset=utf-8`.
pub fn content_type_for(path: &Path) -> HeaderValue {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let essence = mime.essence_str();
    let texty = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            essence,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "image/svg+xml"
                | "application/manifest+json"
        );
    let value = if texty {
        format!("{essence}; charset=utf-8")
    } else {
        essence.to_string()
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

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
        Found::NotFound => return simple(StatusCode::NOT_FOUND),
        Found::Forbidden => return simple(StatusCode::FORBIDDEN),
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
            .map(|q| q.trim().parse::<f32>().unwrap_or(0.0))
            .unwrap_or(1.0);
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
    crate::body::status_page(status)
}

fn http_date_secs(v: &HeaderValue) -> Option<u64> {
    let t = httpdate::parse_http_date(v.to_str().ok()?).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Matches an If-Match / If-None-Match list against `etag` (strong or weak comparison).
fn etag_list_matches(list: &str, etag: &HeaderValue, strong: bool) -> bool {
    let list = list.trim();
    if list == "*" {
        return true;
    }
    let ours = etag.as_bytes();
    list.split(',').map(str::trim).any(|tag| {
        let (weak, opaque) = match tag.strip_prefix("W/") {
            Some(t) => (true, t),
            None => (false, tag),
        };
        if strong && weak {
            return false;
        }
        opaque.as_bytes() == ours
    })
}

/// If-Range: the range applies only when the validator still matches (strong ETag or exact date).
fn if_range_allows(req: &HeaderMap, f: &FileEntry) -> bool {
    let Some(v) = req.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(s) = v.to_str() else { return false };
    let s = s.trim();
    if s.starts_with('"') {
        return s.as_bytes() == f.etag.as_bytes();
    }
    if s.starts_with("W/") {
        return false;
    }
    http_date_secs(v) == Some(f.mtime_secs)
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeOutcome {
    /// Not a bytes range we understand, or too many: serve the whole file.
    Ignore,
    Unsatisfiable,
    /// Inclusive (first, last) pairs.
    Ranges(Vec<(u64, u64)>),
}

pub(crate) fn parse_ranges(header: &str, len: u64) -> RangeOutcome {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeOutcome::Ignore;
    };
    let mut out = Vec::new();
    let mut count = 0;
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_RANGES {
            return RangeOutcome::Ignore;
        }
        let Some((a, b)) = part.split_once('-') else {
            return RangeOutcome::Ignore;
        };
        let (a, b) = (a.trim(), b.trim());
        let range = if a.is_empty() {
            let Ok(n) = b.parse::<u64>() else {
                return RangeOutcome::Ignore;
            };
            if n == 0 || len == 0 {
                None
            } else {
                Some((len.saturating_sub(n), len - 1))
            }
        } else {
            let Ok(first) = a.parse::<u64>() else {
                return RangeOutcome::Ignore;
            };
            let last = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                let Ok(l) = b.parse::<u64>() else {
                    return RangeOutcome::Ignore;
                };
                if l < first {
                    return RangeOutcome::Ignore;
                }
                l.min(len.saturating_sub(1))
            };
            if first >= len {
                None
            } else {
                Some((first, last))
            }
        };
        if let Some(r) = range {
            out.push(r);
        }
    }
    if count == 0 {
        return RangeOutcome::Ignore;
    }
    if out.is_empty() {
        RangeOutcome::Unsatisfiable
    } else {
        RangeOutcome::Ranges(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_paths_are_normalised() {
        assert_eq!(resolve_rel("a/b.txt").unwrap().path, b"a/b.txt");
        assert_eq!(
            resolve_rel("/a//./b/").unwrap(),
            RelPath {
                path: b"a/b".to_vec(),
                trailing_slash: true
            }
        );
        assert_eq!(resolve_rel("").unwrap().path, b"");
        assert_eq!(
            resolve_rel("caf%C3%A9.txt").unwrap().path,
            "café.txt".as_bytes()
        );
        assert_eq!(resolve_rel("a%20b").unwrap().path, b"a b");
    }

    #[test]
    fn traversal_encodings_are_refused() {
        for raw in [
            "../etc/passwd",
            "a/../../etc/passwd",
            "%2e%2e/etc/passwd",
            "%2E%2E/etc/passwd",
            ".%2e/x",
            "%2e./x",
            "a/%2e%2e/%2e%2e/x",
            "..%5cetc",
            "a\\..\\b",
            "%5c..%5c",
            "x%00.txt",
            "%00",
            "%zz",
            "%2",
            "..",
            "a/..",
        ] {
            assert_eq!(resolve_rel(raw), Err(PathRefusal::BadRequest), "{raw}");
        }
        for raw in [
            "..%2fetc",
            "%2f%2e%2e%2fetc",
            "%2F",
            ".env",
            "a/.git/config",
            "%2ehidden",
        ] {
            assert!(resolve_rel(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_ranges("bytes=0-9", 100),
            RangeOutcome::Ranges(vec![(0, 9)])
        );
        assert_eq!(
            parse_ranges("bytes=-10", 100),
            RangeOutcome::Ranges(vec![(90, 99)])
        );
        assert_eq!(
            parse_ranges("bytes=95-", 100),
            RangeOutcome::Ranges(vec![(95, 99)])
        );
        assert_eq!(
            parse_ranges("bytes=90-200", 100),
            RangeOutcome::Ranges(vec![(90, 99)])
        );
        assert_eq!(
            parse_ranges("bytes=0-1, 5-6", 100),
            RangeOutcome::Ranges(vec![(0, 1), (5, 6)])
        );
        assert_eq!(parse_ranges("bytes=100-", 100), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_ranges("bytes=-0", 100), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_ranges("bytes=5-1", 100), RangeOutcome::Ignore);
        assert_eq!(parse_ranges("items=0-1", 100), RangeOutcome::Ignore);
        assert_eq!(
            parse_ranges("bytes=-500", 100),
            RangeOutcome::Ranges(vec![(0, 99)])
        );
        let many = format!("bytes={}", vec!["0-0"; 40].join(","));
        assert_eq!(parse_ranges(&many, 100), RangeOutcome::Ignore);
    }

    #[test]
    fn accept_encoding() {
        assert!(accepts("gzip, deflate, br", "br"));
        assert!(accepts("gzip;q=0.5", "gzip"));
        assert!(!accepts("gzip;q=0", "gzip"));
        assert!(!accepts("identity", "gzip"));
        assert!(accepts("*", "br"));
        assert!(!accepts("*, br;q=0", "br"));
    }

    #[test]
    fn etag_comparison() {
        let tag = HeaderValue::from_static("\"abc-1\"");
        assert!(etag_list_matches("\"abc-1\"", &tag, true));
        assert!(etag_list_matches("\"x\", W/\"abc-1\"", &tag, false));
        assert!(!etag_list_matches("W/\"abc-1\"", &tag, true));
        assert!(etag_list_matches("*", &tag, true));
        assert!(!etag_list_matches("\"abc\"", &tag, false));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type_for(Path::new("a.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type_for(Path::new("a.js"))
                .to_str()
                .unwrap()
                .ends_with("charset=utf-8"),
            true
        );
        assert_eq!(content_type_for(Path::new("a.png")), "image/png");
        assert_eq!(
            content_type_for(Path::new("a.unknownext")),
            "application/octet-stream"
        );
    }
}
