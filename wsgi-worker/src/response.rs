//! What a Python thread hands back to the cell's event loop, and the checks on what the
//! application gave to start_response (PEP 3333: a bad status or header is the app's bug -> 500).
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::sync::mpsc;

/// The response head, checked.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// The app's reason phrase when it differs from the standard one.
    pub reason: Option<Bytes>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The app's Content-Length, if it sent one.
    pub content_length: Option<u64>,
}

#[derive(Debug)]
pub enum BodyOut {
    /// The whole body (the app returned a list or tuple, or a generator that ended at once).
    Full(Vec<Bytes>),
    /// The first chunk, then the rest as it comes; a dropped sender is the end.
    Stream {
        first: Bytes,
        rx: mpsc::Receiver<Piece>,
    },
    /// A `wsgi.file_wrapper` around a regular file: the cell maps and sends it without copying.
    File {
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
}

#[derive(Debug)]
pub enum Piece {
    Data(Bytes),
    /// The app failed after the head went out: abort the connection.
    Abort,
    /// The trailer fields after the last piece (ASGI `http.response.trailers`).
    Trailers(http::HeaderMap),
}

#[derive(Debug)]
pub enum Reply {
    Response(Head, BodyOut),
    /// A status decided by the gateway (500 app error, 503 queue timeout); never app internals.
    Error {
        status: StatusCode,
        retry_after: bool,
    },
}

/// `"200 OK"` -> status and (non-standard) reason.
pub fn parse_status(s: &str) -> Result<(StatusCode, Option<Bytes>), String> {
    let bytes = s.as_bytes();
    if bytes.len() < 4 || bytes[3] != b' ' || !bytes[..3].iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "invalid status {s:?}: expected three digits, a space and a reason phrase"
        ));
    }
    let code: u16 = s[..3]
        .parse()
        .map_err(|_| format!("invalid status {s:?}"))?;
    let status =
        StatusCode::from_u16(code).map_err(|_| format!("invalid status code {code} in {s:?}"))?;
    if code < 200 {
        return Err(format!(
            "status {s:?}: a WSGI application cannot send 1xx responses"
        ));
    }
    let reason = &s[4..];
    if reason
        .bytes()
        .any(|b| b == b'\r' || b == b'\n' || (b < 0x20 && b != b'\t'))
    {
        return Err(format!("invalid reason phrase in status {s:?}"));
    }
    let custom = (status.canonical_reason() != Some(reason) && !reason.is_empty())
        .then(|| Bytes::copy_from_slice(reason.as_bytes()));
    Ok((status, custom))
}

/// Hop-by-hop headers belong to the server (PEP 3333, "Other HTTP Features").
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// Checks one response header; `value` is the latin-1 bytes of the app's native string.
pub fn check_header(name: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid response header name {name:?}"))?;
    if HOP_BY_HOP.contains(&n.as_str()) {
        return Err(format!(
            "hop-by-hop response header {name:?} is not allowed from a WSGI application"
        ));
    }
    let v = HeaderValue::from_bytes(value).map_err(|_| {
        format!(
            "invalid value for response header {name:?}: {:?}",
            String::from_utf8_lossy(value)
        )
    })?;
    Ok((n, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(parse_status("200 OK").unwrap(), (StatusCode::OK, None));
        let (s, r) = parse_status("404 Nope").unwrap();
        assert_eq!(s, 404);
        assert_eq!(r.as_deref(), Some(&b"Nope"[..]));
        assert!(parse_status("200").is_err());
        assert!(parse_status("20 OK").is_err());
        assert!(parse_status("abc OK").is_err());
        assert!(parse_status("100 Continue").is_err());
        assert!(parse_status("200 O\r\nX: y").is_err());
        assert!(parse_status("999 Weird").is_ok());
    }

    #[test]
    fn headers() {
        assert!(check_header("Content-Type", b"text/plain").is_ok());
        assert!(check_header("Bad Name", b"x").is_err());
        assert!(check_header("X-Split", b"a\r\nInjected: 1").is_err());
        assert!(check_header("Transfer-Encoding", b"chunked").is_err());
        assert!(check_header("Connection", b"close").is_err());
        assert!(check_header("X-Latin", &[0x63, 0xe9]).is_ok());
    }
}
