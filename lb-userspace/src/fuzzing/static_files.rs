//! `static_path`, `range` and `conditional`: what a static route parses from a request.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;
use http::header::{self, HeaderValue};

use crate::cell::static_files::cache::{FileEntry, Ident};
use crate::cell::static_files::conditional::{etag_list_matches, http_date_secs, if_range_allows};
use crate::cell::static_files::path::resolve_rel;
use crate::cell::static_files::range::{MAX_RANGES, RangeOutcome, parse_ranges};

/// A request path below a route prefix -> the file path under the root. A resolved path joined
/// to the root stays under it, and is stable: encoded again and resolved, it is the same path.
pub fn static_path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rel) = resolve_rel(raw) else {
        return;
    };
    let root = Path::new("/srv/www");
    let joined = root.join(OsStr::from_bytes(&rel.path));
    assert!(joined.starts_with(root), "{raw:?} -> {joined:?}");
    let below = joined.strip_prefix(root).expect("under the root");
    for c in below.components() {
        assert!(
            matches!(c, Component::Normal(n) if !n.as_bytes().starts_with(b".")),
            "{raw:?} -> {joined:?}: component {c:?}"
        );
    }
    assert!(
        !rel.path.contains(&0) && !rel.path.contains(&b'\\') && !rel.path.starts_with(b"/"),
        "{raw:?} -> {:?}",
        rel.path
    );
    let again = resolve_rel(&encode(&rel.path)).expect("a resolved path resolves again");
    assert_eq!(again.path, rel.path, "{raw:?}");
}

/// Percent-encodes every byte but unreserved ones and '/'.
fn encode(path: &[u8]) -> String {
    path.iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `Range` against a file length (the first 8 bytes, little-endian; the rest is the header):
/// each range lies in the file, none overlaps another, there are at most `MAX_RANGES`, and
/// the ranges written back as a header parse to the same ranges.
pub fn range(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (len, header) = data.split_at(8);
    let mut n = [0u8; 8];
    n.copy_from_slice(len);
    // Mostly small files (so ranges are satisfiable), sometimes huge ones.
    let len = match u64::from_le_bytes(n) {
        l if l & 1 == 0 => (l >> 1) % 4096,
        l => l >> 1,
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    let RangeOutcome::Ranges(ranges) = parse_ranges(header, len) else {
        return;
    };
    assert!(
        !ranges.is_empty() && ranges.len() <= MAX_RANGES,
        "{header:?}"
    );
    for &(first, last) in &ranges {
        assert!(
            first <= last && last < len,
            "{header:?} ({len}): {ranges:?}"
        );
    }
    let mut sorted = ranges.clone();
    sorted.sort_unstable();
    for w in sorted.windows(2) {
        assert!(w[0].1 < w[1].0, "{header:?} ({len}): overlap in {ranges:?}");
    }
    let total: u64 = ranges.iter().map(|(a, b)| b - a + 1).sum();
    assert!(total <= len, "{header:?} ({len}): {total} bytes");
    let written = ranges
        .iter()
        .map(|(a, b)| format!("{a}-{b}"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        parse_ranges(&format!("bytes={written}"), len),
        RangeOutcome::Ranges(ranges),
        "{header:?} ({len})"
    );
}

/// `If-Match` / `If-None-Match` lists, HTTP dates and `If-Range`. The first line is our ETag's
/// opaque part, the second a validator list, the third a date or an `If-Range` value.
pub fn conditional(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let (tag, list, third) = (
        lines.next().unwrap_or(""),
        lines.next().unwrap_or(""),
        lines.next().unwrap_or(""),
    );
    // Our ETags are `"..."` with etagc characters and no comma (cache.rs writes hex digits).
    if !tag
        .bytes()
        .all(|b| b == 0x21 || ((0x23..=0x7e).contains(&b) && b != b','))
    {
        return;
    }
    let ours = format!("\"{tag}\"");
    let etag = HeaderValue::from_str(&ours).expect("etagc bytes");
    let strong = etag_list_matches(list, &etag, true);
    let weak = etag_list_matches(list, &etag, false);
    assert!(!strong || weak, "{list:?}: strong match but no weak one");
    // Our tag added to any list matches; its weak form only in the weak comparison.
    assert!(etag_list_matches(&format!("{list}, {ours}"), &etag, true));
    assert!(etag_list_matches(&format!("{list},W/{ours}"), &etag, false));
    assert!(!etag_list_matches(&format!("W/{ours}"), &etag, true));

    let secs = HeaderValue::from_str(third)
        .ok()
        .and_then(|v| http_date_secs(&v));
    if let Some(s) = secs {
        // A date we accept is the same second once written the way we write Last-Modified.
        let again = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s));
        let back = http_date_secs(&HeaderValue::from_str(&again).expect("date"));
        assert_eq!(back, Some(s), "{third:?} -> {again:?}");
    }
    let mtime = secs.unwrap_or(784_111_777);
    let last_modified = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(mtime));
    let f = FileEntry {
        body: Bytes::new(),
        len: 0,
        mtime_secs: mtime,
        etag: etag.clone(),
        last_modified: HeaderValue::from_str(&last_modified).expect("date"),
        content_type: HeaderValue::from_static("text/plain"),
        content_length: HeaderValue::from_static("0"),
        variants: Vec::new(),
        ident: Ident {
            dev: 0,
            ino: 0,
            len: 0,
            mtime_ns: 0,
        },
    };
    let if_range = |v: &HeaderValue| {
        let mut h = HeaderMap::new();
        h.insert(header::IF_RANGE, v.clone());
        if_range_allows(&h, &f)
    };
    assert!(if_range_allows(&HeaderMap::new(), &f));
    assert!(if_range(&etag));
    assert!(if_range(&f.last_modified));
    let weak_tag = HeaderValue::from_str(&format!("W/{ours}")).expect("etag");
    assert!(!if_range(&weak_tag));
    if let Ok(v) = HeaderValue::from_str(third) {
        // Any other value: no panic, and a match only by our ETag or our date.
        if if_range(&v) {
            let s = v.to_str().expect("matched as text").trim();
            assert!(s == ours || http_date_secs(&v) == Some(mtime), "{third:?}");
        }
    }
}
