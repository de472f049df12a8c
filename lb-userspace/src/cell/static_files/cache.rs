//! The per-cell open-file cache: hot files cost no syscalls (revalidated at most once a
//! second), small ones are held in memory, large ones mapped; precompressed siblings too.
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http::header::HeaderValue;

use super::path::RelPath;
use super::route::StaticRoute;

/// Files up to this size are read into memory; larger ones are memory-mapped.
const INLINE_MAX: u64 = 256 * 1024;
/// How long a cached lookup is trusted before its metadata is checked again.
const REVALIDATE_AFTER: Duration = Duration::from_secs(1);
/// Most cached lookups per cell; past it the cache starts over.
const MAX_ENTRIES: usize = 16 * 1024;
/// Most bytes of in-memory file contents per cell; past it the cache starts over.
const MAX_INLINE_BYTES: u64 = 256 << 20;

/// Content coding of a precompressed sibling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Br,
    Gzip,
}

impl Coding {
    pub fn suffix(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gz",
        }
    }
    pub fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        })
    }
    pub fn token(self) -> &'static str {
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
    pub ident: Ident,
}

/// What identifies a file's version: a change means reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ident {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
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
pub enum Found {
    File(Rc<FileEntry>),
    /// A directory asked for without its trailing slash.
    Redirect,
    /// A directory with no index file (no listings).
    Forbidden,
    /// Nothing servable there.
    Missing,
}

#[derive(Debug)]
struct CachedLookup {
    found: Found,
    /// Path whose metadata is checked on revalidation (None for misses).
    checked_path: Option<PathBuf>,
    checked_at: Instant,
}

/// Cached lookups of one route (and trailing-slash form), by path below the root.
type Lookups = HashMap<Vec<u8>, CachedLookup>;

/// Per-cell open-file and metadata cache (cells are single-threaded, so no locks).
#[derive(Debug, Default)]
pub struct FileCache {
    /// (route, trailing slash) -> path -> lookup: a hit looks the path up by reference, no
    /// allocation.
    lookups: RefCell<HashMap<(usize, bool), Lookups>>,
    entries: std::cell::Cell<usize>,
    inline_bytes: std::cell::Cell<u64>,
}

impl FileCache {
    pub fn lookup(&self, route_id: usize, route: &StaticRoute, rel: &RelPath) -> Found {
        let now = Instant::now();
        let group = (route_id, rel.trailing_slash);
        {
            let mut lookups = self.lookups.borrow_mut();
            if let Some(hit) = lookups
                .get_mut(&group)
                .and_then(|m| m.get_mut(rel.path.as_slice()))
            {
                if now.duration_since(hit.checked_at) < REVALIDATE_AFTER {
                    return hit.found.clone();
                }
                if let (Found::File(f), Some(p)) = (&hit.found, &hit.checked_path)
                    && std::fs::metadata(p).is_ok_and(|m| Ident::of(&m) == f.ident)
                    && f.variants.iter().all(|(c, v)| {
                        std::fs::metadata(sibling(p, *c)).is_ok_and(|m| Ident::of(&m) == v.ident)
                    })
                {
                    hit.checked_at = now;
                    return hit.found.clone();
                }
            }
        }
        let (found, checked_path) = Self::load(route, rel);
        let mut lookups = self.lookups.borrow_mut();
        if self.entries.get() >= MAX_ENTRIES || self.inline_bytes.get() > MAX_INLINE_BYTES {
            lookups.clear();
            self.entries.set(0);
            self.inline_bytes.set(0);
        }
        if let Found::File(f) = &found
            && f.len <= INLINE_MAX
        {
            self.inline_bytes.set(self.inline_bytes.get() + f.len);
        }
        let cached = CachedLookup {
            found: found.clone(),
            checked_path,
            checked_at: now,
        };
        if lookups
            .entry(group)
            .or_default()
            .insert(rel.path.clone(), cached)
            .is_none()
        {
            self.entries.set(self.entries.get() + 1);
        }
        found
    }

    fn load(route: &StaticRoute, rel: &RelPath) -> (Found, Option<PathBuf>) {
        let joined = route.root.join(std::ffi::OsStr::from_bytes(&rel.path));
        // canonicalize resolves symlinks; anything that lands outside the root is not there.
        let Ok(real) = joined.canonicalize() else {
            return (Found::Missing, None);
        };
        if !real.starts_with(&route.root) {
            return (Found::Missing, None);
        }
        let Ok(meta) = std::fs::metadata(&real) else {
            return (Found::Missing, None);
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
            return (Found::Missing, None);
        }
        match open_entry(&real, route.precompressed) {
            Some(e) => (Found::File(Rc::new(e)), Some(real)),
            None => (Found::Missing, None),
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
    let mtime_secs = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            content_type_for(Path::new("a.html")),
            "text/html; charset=utf-8"
        );
        assert!(
            content_type_for(Path::new("a.js"))
                .to_str()
                .unwrap()
                .ends_with("charset=utf-8")
        );
        assert_eq!(content_type_for(Path::new("a.png")), "image/png");
        assert_eq!(
            content_type_for(Path::new("a.unknownext")),
            "application/octet-stream"
        );
    }
}
