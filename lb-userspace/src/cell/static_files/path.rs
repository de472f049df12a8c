//! Request path -> file path below a static root: percent-decoded, normalised, and refused
//! (never resolved) when it could leave the root.
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
            b"" | b"." => {}
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
}
