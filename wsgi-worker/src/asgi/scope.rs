//! The `http` scope of one request (ASGI 3.0, spec 2.4), built on the loop thread from what the
//! cell parsed.
use std::sync::Arc;

use http::{HeaderMap, Method, Uri, Version};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::environ::{self, Cidr, ConnInfo};

/// What the cell knows of a request when it hands it to the loop.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub conn: Arc<ConnInfo>,
    /// A WebSocket handshake: the scope is a `websocket` one.
    pub websocket: bool,
}

/// Where a route sits behind the proxies in front: `root_path` of the scope is the route's
/// mount point (no trailing slash) after the configured `root_path` (a prefix a proxy in front
/// strips, `proxy_root`); `trusted_proxies` are the peers whose X-Forwarded-* are believed.
#[derive(Debug, Clone)]
pub struct Mount {
    pub proxy_root: String,
    pub root_path: String,
    pub trusted_proxies: Vec<Cidr>,
}

impl Mount {
    pub fn new(proxy_root: &str, prefix: &str, trusted_proxies: Vec<Cidr>) -> Self {
        Mount {
            proxy_root: proxy_root.to_string(),
            root_path: format!("{proxy_root}{}", prefix.trim_end_matches('/')),
            trusted_proxies,
        }
    }
}

/// The subprotocols the client offers, in its order (every `Sec-WebSocket-Protocol` field).
fn subprotocols<'py>(py: Python<'py>, headers: &HeaderMap) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for v in headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
        for p in v.to_str().unwrap_or("").split(',') {
            let p = p.trim();
            if !p.is_empty() {
                out.append(p)?;
            }
        }
    }
    Ok(out)
}

/// The method as an interned string for the common ones (no new string per request).
fn method<'py>(py: Python<'py>, m: &Method) -> Bound<'py, PyString> {
    let s = match *m {
        Method::GET => intern!(py, "GET"),
        Method::POST => intern!(py, "POST"),
        Method::HEAD => intern!(py, "HEAD"),
        Method::PUT => intern!(py, "PUT"),
        Method::DELETE => intern!(py, "DELETE"),
        Method::PATCH => intern!(py, "PATCH"),
        Method::OPTIONS => intern!(py, "OPTIONS"),
        _ => return PyString::new(py, m.as_str()),
    };
    s.clone()
}

/// `a` then `b` as one Python str, without a Rust string in between when `a` is empty.
fn joined<'py>(py: Python<'py>, a: &str, b: &str) -> Bound<'py, PyString> {
    if a.is_empty() {
        PyString::new(py, b)
    } else {
        PyString::new(py, &format!("{a}{b}"))
    }
}

/// The scope dict; `state` is added by the loop (a copy of the lifespan state). From a trusted
/// proxy, X-Forwarded-For/-Proto/-Host/-Prefix set `client`, `scheme`, the `host` header and a
/// prefix of `root_path` and `path`, as for WSGI (and as uvicorn's `--forwarded-allow-ips`).
/// Keys and fixed values are interned: hashed once, not once per request.
pub fn build<'py>(
    py: Python<'py>,
    head: &RequestHead,
    mount: &Mount,
    asgi: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyDict>> {
    let fwd = environ::forwarded(&head.headers, &head.conn, &mount.trusted_proxies);
    let https = fwd.scheme.map_or(head.conn.tls, |s| s == "https");
    let d = PyDict::new(py);
    let ws = head.websocket;
    let kind = if ws {
        intern!(py, "websocket")
    } else {
        intern!(py, "http")
    };
    d.set_item(intern!(py, "type"), kind)?;
    d.set_item(intern!(py, "asgi"), asgi.copy()?)?;
    let version = match head.version {
        Version::HTTP_10 => intern!(py, "1.0"),
        Version::HTTP_2 => intern!(py, "2"),
        _ => intern!(py, "1.1"),
    };
    d.set_item(intern!(py, "http_version"), version)?;
    let scheme = match (ws, https) {
        (true, true) => intern!(py, "wss"),
        (true, false) => intern!(py, "ws"),
        (false, true) => intern!(py, "https"),
        (false, false) => intern!(py, "http"),
    };
    d.set_item(intern!(py, "scheme"), scheme)?;
    if ws {
        let offered = subprotocols(py, &head.headers)?;
        d.set_item(intern!(py, "subprotocols"), offered)?;
    } else {
        d.set_item(intern!(py, "method"), method(py, &head.method))?;
    }
    let prefix = fwd.prefix.as_deref().unwrap_or("");
    let raw = head.uri.path();
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let before = format!("{prefix}{}", mount.proxy_root);
    d.set_item(intern!(py, "path"), joined(py, &before, &decoded))?;
    let raw_path = if before.is_empty() {
        PyBytes::new(py, raw.as_bytes())
    } else {
        PyBytes::new(py, format!("{before}{raw}").as_bytes())
    };
    d.set_item(intern!(py, "raw_path"), raw_path)?;
    let query = PyBytes::new(py, head.uri.query().unwrap_or("").as_bytes());
    d.set_item(intern!(py, "query_string"), query)?;
    d.set_item(
        intern!(py, "root_path"),
        joined(py, prefix, &mount.root_path),
    )?;
    let headers = PyList::empty(py);
    for (name, value) in &head.headers {
        // HeaderName is already lowercase.
        let value = match &fwd.host {
            Some(h) if name == http::header::HOST => h.as_bytes(),
            _ => value.as_bytes(),
        };
        headers.append(PyTuple::new(
            py,
            [
                PyBytes::new(py, name.as_str().as_bytes()),
                PyBytes::new(py, value),
            ],
        )?)?;
    }
    d.set_item(intern!(py, "headers"), headers)?;
    let c = &head.conn;
    let client = intern!(py, "client");
    match &fwd.remote_addr {
        // The forwarded client's port is not known (uvicorn says 0 too).
        Some(ip) => d.set_item(client, (ip.as_str(), 0))?,
        None => d.set_item(client, (c.remote_addr.as_str(), c.remote_port))?,
    }
    d.set_item(intern!(py, "server"), (c.local_addr.as_str(), c.local_port))?;
    // The extensions the cell implements: a refusal with a response of the app's own, and
    // trailer fields after a response body.
    let extensions = PyDict::new(py);
    let ext = if ws {
        intern!(py, "websocket.http.response")
    } else {
        intern!(py, "http.response.trailers")
    };
    extensions.set_item(ext, PyDict::new(py))?;
    d.set_item(intern!(py, "extensions"), extensions)?;
    Ok(d)
}
