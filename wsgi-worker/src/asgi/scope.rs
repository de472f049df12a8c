//! The `http` scope of one request (ASGI 3.0, spec 2.4), built on the loop thread from what the
//! cell parsed.
use std::sync::Arc;

use http::{HeaderMap, Method, Uri, Version};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::environ::ConnInfo;

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

/// `root_path` of the scope: the route's mount point (no trailing slash) after the configured
/// `root_path` (a prefix a proxy in front strips); `proxy_root` is that configured part.
#[derive(Debug, Clone)]
pub struct Mount {
    pub proxy_root: String,
    pub root_path: String,
}

impl Mount {
    pub fn new(proxy_root: &str, prefix: &str) -> Self {
        Mount {
            proxy_root: proxy_root.to_string(),
            root_path: format!("{proxy_root}{}", prefix.trim_end_matches('/')),
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

/// The scope dict; `state` is added by the loop (a copy of the lifespan state).
pub fn build<'py>(
    py: Python<'py>,
    head: &RequestHead,
    mount: &Mount,
    asgi: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("type", if head.websocket { "websocket" } else { "http" })?;
    d.set_item("asgi", asgi.copy()?)?;
    d.set_item("http_version", http_version(head.version))?;
    if head.websocket {
        d.set_item("scheme", "ws")?;
        d.set_item("subprotocols", subprotocols(py, &head.headers)?)?;
    } else {
        d.set_item("method", head.method.as_str())?;
        d.set_item("scheme", "http")?;
    }
    let raw = head.uri.path();
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    d.set_item("path", format!("{}{decoded}", mount.proxy_root))?;
    let mut raw_path = Vec::with_capacity(mount.proxy_root.len() + raw.len());
    raw_path.extend_from_slice(mount.proxy_root.as_bytes());
    raw_path.extend_from_slice(raw.as_bytes());
    d.set_item("raw_path", PyBytes::new(py, &raw_path))?;
    d.set_item(
        "query_string",
        PyBytes::new(py, head.uri.query().unwrap_or("").as_bytes()),
    )?;
    d.set_item("root_path", mount.root_path.as_str())?;
    let headers = PyList::empty(py);
    for (name, value) in &head.headers {
        // HeaderName is already lowercase.
        headers.append(PyTuple::new(
            py,
            [
                PyBytes::new(py, name.as_str().as_bytes()),
                PyBytes::new(py, value.as_bytes()),
            ],
        )?)?;
    }
    d.set_item("headers", headers)?;
    let c = &head.conn;
    d.set_item("client", (c.remote_addr.as_str(), c.remote_port))?;
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
