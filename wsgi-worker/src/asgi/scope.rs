//! The `http` scope of one request (ASGI 3.0, spec 2.4), built on the loop thread from what the
//! cell parsed.
use std::sync::Arc;

use http::{HeaderMap, Method, Uri, Version};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

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

fn http_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        _ => "1.1",
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

/// The scope dict; `state` is added by the loop (a copy of the lifespan state). From a trusted
/// proxy, X-Forwarded-For/-Proto/-Host/-Prefix set `client`, `scheme`, the `host` header and a
/// prefix of `root_path` and `path`, as for WSGI (and as uvicorn's `--forwarded-allow-ips`).
pub fn build<'py>(
    py: Python<'py>,
    head: &RequestHead,
    mount: &Mount,
    asgi: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyDict>> {
    let fwd = environ::forwarded(&head.headers, &head.conn, &mount.trusted_proxies);
    let https = fwd.scheme == Some("https");
    let d = PyDict::new(py);
    d.set_item("type", if head.websocket { "websocket" } else { "http" })?;
    d.set_item("asgi", asgi.copy()?)?;
    d.set_item("http_version", http_version(head.version))?;
    if head.websocket {
        d.set_item("scheme", if https { "wss" } else { "ws" })?;
        d.set_item("subprotocols", subprotocols(py, &head.headers)?)?;
    } else {
        d.set_item("method", head.method.as_str())?;
        d.set_item("scheme", if https { "https" } else { "http" })?;
    }
    let prefix = fwd.prefix.as_deref().unwrap_or("");
    let raw = head.uri.path();
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    d.set_item("path", format!("{prefix}{}{decoded}", mount.proxy_root))?;
    let mut raw_path = Vec::with_capacity(prefix.len() + mount.proxy_root.len() + raw.len());
    raw_path.extend_from_slice(prefix.as_bytes());
    raw_path.extend_from_slice(mount.proxy_root.as_bytes());
    raw_path.extend_from_slice(raw.as_bytes());
    d.set_item("raw_path", PyBytes::new(py, &raw_path))?;
    d.set_item(
        "query_string",
        PyBytes::new(py, head.uri.query().unwrap_or("").as_bytes()),
    )?;
    d.set_item("root_path", format!("{prefix}{}", mount.root_path))?;
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
    d.set_item("headers", headers)?;
    let c = &head.conn;
    match &fwd.remote_addr {
        // The forwarded client's port is not known (uvicorn says 0 too).
        Some(ip) => d.set_item("client", (ip.as_str(), 0))?,
        None => d.set_item("client", (c.remote_addr.as_str(), c.remote_port))?,
    }
    d.set_item("server", (c.local_addr.as_str(), c.local_port))?;
    // The extensions the cell implements: a refusal with a response of the app's own, and
    // trailer fields after a response body.
    let extensions = PyDict::new(py);
    if head.websocket {
        extensions.set_item("websocket.http.response", PyDict::new(py))?;
    } else {
        extensions.set_item("http.response.trailers", PyDict::new(py))?;
    }
    d.set_item("extensions", extensions)?;
    Ok(d)
}
