//! Conditional requests (RFC 9110 section 13): ETag lists, dates, If-Range.
use std::time::UNIX_EPOCH;

use http::header::{self, HeaderMap, HeaderValue};

use super::cache::FileEntry;

pub fn http_date_secs(v: &HeaderValue) -> Option<u64> {
    let t = httpdate::parse_http_date(v.to_str().ok()?).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Matches an If-Match / If-None-Match list against `etag` (strong or weak comparison).
pub fn etag_list_matches(list: &str, etag: &HeaderValue, strong: bool) -> bool {
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
pub fn if_range_allows(req: &HeaderMap, f: &FileEntry) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_comparison() {
        let tag = HeaderValue::from_static("\"abc-1\"");
        assert!(etag_list_matches("\"abc-1\"", &tag, true));
        assert!(etag_list_matches("\"x\", W/\"abc-1\"", &tag, false));
        assert!(!etag_list_matches("W/\"abc-1\"", &tag, true));
        assert!(etag_list_matches("*", &tag, true));
        assert!(!etag_list_matches("\"abc\"", &tag, false));
    }
}
