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
    /// The file system failed (EIO, too many open files, ...): a 500, never cached, so the
    /// file is tried again once the disk is back.
    Failed,
}

/// An error that says the file is not there (or not ours to show): a 404, as before; any
/// other error is the disk or the system failing.
fn absent(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::NotFound | K::NotADirectory | K::PermissionDenied | K::InvalidFilename
    ) || e.raw_os_error() == Some(libc::ELOOP)
}

/// `Missing` for an absent file, else `Failed` (logged: what failed and where).
fn not_served(path: &Path, what: &str, e: &std::io::Error) -> Found {
    if absent(e) {
        return Found::Missing;
    }
    log_failure(path, what, e);
    Found::Failed
}

thread_local! {
    /// When the cell last logged a disk failure, and how many it has not logged since: a
    /// failing disk fails every request, one line a second says so.
    static LAST_FAILURE_LOG: std::cell::Cell<(Option<Instant>, u64)> =
        const { std::cell::Cell::new((None, 0)) };
}

fn log_failure(path: &Path, what: &str, e: &dyn std::fmt::Display) {
    LAST_FAILURE_LOG.with(|last| {
        let (at, skipped) = last.get();
        if at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            last.set((at, skipped + 1));
            return;
        }
        last.set((Some(Instant::now()), 0));
        tracing::error!(
            path = %path.display(),
            error = %e,
            not_logged_since = skipped,
            "static file: {what} failed (answered 500)"
        );
    });
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
        if matches!(found, Found::Failed) {
            return found;
        }
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
        let real = match joined.canonicalize() {
            Ok(r) => r,
            Err(e) => return (not_served(&joined, "resolving", &e), None),
        };
        if !real.starts_with(&route.root) {
            return (Found::Missing, None);
        }
        let meta = match std::fs::metadata(&real) {
            Ok(m) => m,
            Err(e) => return (not_served(&real, "stat", &e), None),
        };
        if meta.is_dir() {
            if !rel.trailing_slash {
                return (Found::Redirect, None);
            }
            for idx in &route.index {
                let candidate = real.join(idx);
                let c = match candidate.canonicalize() {
                    Ok(c) => c,
                    Err(e) if absent(&e) => continue,
                    Err(e) => return (not_served(&candidate, "resolving", &e), None),
                };
                if !c.starts_with(&route.root) {
                    continue;
                }
                match open_entry(&c, route.precompressed) {
                    Ok(Some(entry)) => return (Found::File(Rc::new(entry)), Some(c)),
                    Ok(None) => {}
                    Err(failed) => return (failed, None),
                }
            }
            return (Found::Forbidden, None);
        }
        if rel.trailing_slash {
            return (Found::Missing, None);
        }
        match open_entry(&real, route.precompressed) {
            Ok(Some(e)) => (Found::File(Rc::new(e)), Some(real)),
            Ok(None) => (Found::Missing, None),
            Err(failed) => (failed, None),
        }
    }
}

fn sibling(path: &Path, coding: Coding) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(coding.suffix());
    PathBuf::from(s)
}

/// The file and its precompressed siblings: None when it is not a servable file, Err(`Failed`)
/// when reading it failed (a sibling that fails is left out).
fn open_entry(path: &Path, precompressed: bool) -> Result<Option<FileEntry>, Found> {
    let Some(mut entry) = open_one(path, content_type_for(path))? else {
        return Ok(None);
    };
    if precompressed {
        for coding in [Coding::Br, Coding::Gzip] {
            let sib = sibling(path, coding);
            // The sibling must also be a regular file inside the same directory tree.
            if let Ok(real) = sib.canonicalize()
                && real.parent() == path.parent()
                && let Ok(Some(mut v)) = open_one(&real, entry.content_type.clone())
                && let Ok(etag) = HeaderValue::from_str(&format!(
                    "{}-{}\"",
                    v.etag.to_str().unwrap_or("\"").trim_end_matches('"'),
                    coding.suffix()
                ))
            {
                v.etag = etag;
                entry.variants.push((coding, Rc::new(v)));
            }
        }
    }
    Ok(Some(entry))
}

/// One regular file, read or mapped: None when it is not one (or changed while read),
/// Err(`Failed`) when the disk failed.
fn open_one(path: &Path, content_type: HeaderValue) -> Result<Option<FileEntry>, Found> {
    let fail = |what: &str, e: &std::io::Error| match not_served(path, what, e) {
        Found::Missing => Ok(None),
        failed => Err(failed),
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return fail("open", &e),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return fail("stat", &e),
    };
    if !meta.is_file() {
        return Ok(None);
    }
    let len = meta.len();
    let body = if len == 0 {
        Bytes::new()
    } else if len <= INLINE_MAX {
        let mut buf = Vec::with_capacity(len as usize);
        if let Err(e) = file.read_to_end(&mut buf) {
            return fail("read", &e);
        }
        if buf.len() as u64 != len {
            return Ok(None);
        }
        Bytes::from(buf)
    } else {
        match crate::sys::map_file(&file, len as usize) {
            Ok(m) => Bytes::from_owner(m),
            Err(e) => {
                log_failure(path, "mapping", &e);
                return Err(Found::Failed);
            }
        }
    };
    Ok(entry_of(&meta, body, len, content_type))
}

fn entry_of(
    meta: &std::fs::Metadata,
    body: Bytes,
    len: u64,
    content_type: HeaderValue,
) -> Option<FileEntry> {
    let mtime = meta.modified().ok()?;
    let mtime_secs = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let ident = Ident::of(meta);
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
    fn only_absence_is_a_404() {
        use std::io::{Error, ErrorKind};
        assert!(absent(&Error::from(ErrorKind::NotFound)));
        assert!(absent(&Error::from_raw_os_error(libc::ENOTDIR)));
        assert!(absent(&Error::from_raw_os_error(libc::EACCES)));
        assert!(absent(&Error::from_raw_os_error(libc::ELOOP)));
        assert!(absent(&Error::from_raw_os_error(libc::ENAMETOOLONG)));
        assert!(!absent(&Error::from_raw_os_error(libc::EIO)));
        assert!(!absent(&Error::from_raw_os_error(libc::EMFILE)));
        let missing = not_served(
            Path::new("/nowhere"),
            "open",
            &Error::from(ErrorKind::NotFound),
        );
        assert!(matches!(missing, Found::Missing));
        let failed = not_served(
            Path::new("/x"),
            "read",
            &Error::from_raw_os_error(libc::EIO),
        );
        assert!(matches!(failed, Found::Failed));
    }

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
