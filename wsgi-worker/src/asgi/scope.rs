//! The `http` scope of one request (ASGI 3.0, spec 2.4), built on the loop thread from what the
//! cell parsed.
use std::sync::Arc;

use http::{HeaderMap, Method, Uri, Version};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

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

/// The scope dict; `state` is added by the loop (a copy of the lifespan state). Keys and fixed
/// values are interned: they are hashed once, not once per request.
pub fn build<'py>(
    py: Python<'py>,
    head: &RequestHead,
    mount: &Mount,
    asgi: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let ws = head.websocket;
    d.set_item(
        intern!(py, "type"),
        if ws {
            intern!(py, "websocket")
        } else {
            intern!(py, "http")
        },
    )?;
    d.set_item(intern!(py, "asgi"), asgi.copy()?)?;
    let version = match head.version {
        Version::HTTP_10 => intern!(py, "1.0"),
        Version::HTTP_2 => intern!(py, "2"),
        _ => intern!(py, "1.1"),
    };
    d.set_item(intern!(py, "http_version"), version)?;
    if ws {
        d.set_item(intern!(py, "scheme"), intern!(py, "ws"))?;
        d.set_item(
            intern!(py, "subprotocols"),
            subprotocols(py, &head.headers)?,
        )?;
    } else {
        d.set_item(intern!(py, "method"), method(py, &head.method))?;
        d.set_item(intern!(py, "scheme"), intern!(py, "http"))?;
    }
    let raw = head.uri.path();
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    if mount.proxy_root.is_empty() {
        d.set_item(intern!(py, "path"), PyString::new(py, &decoded))?;
    } else {
        d.set_item(
            intern!(py, "path"),
            format!("{}{decoded}", mount.proxy_root),
        )?;
    }
    let raw_path = if mount.proxy_root.is_empty() {
        PyBytes::new(py, raw.as_bytes())
    } else {
        let mut v = Vec::with_capacity(mount.proxy_root.len() + raw.len());
        v.extend_from_slice(mount.proxy_root.as_bytes());
        v.extend_from_slice(raw.as_bytes());
        PyBytes::new(py, &v)
    };
    d.set_item(intern!(py, "raw_path"), raw_path)?;
    d.set_item(
        intern!(py, "query_string"),
        PyBytes::new(py, head.uri.query().unwrap_or("").as_bytes()),
    )?;
    d.set_item(intern!(py, "root_path"), mount.root_path.as_str())?;
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
    d.set_item(intern!(py, "headers"), headers)?;
    let c = &head.conn;
    d.set_item(
        intern!(py, "client"),
        (c.remote_addr.as_str(), c.remote_port),
    )?;
    d.set_item(intern!(py, "server"), (c.local_addr.as_str(), c.local_port))?;
    // The extensions the cell implements: a refusal with a response of the app's own, and
    // trailer fields after a response body.
    let extensions = PyDict::new(py);
    if head.websocket {
        extensions.set_item(intern!(py, "websocket.http.response"), PyDict::new(py))?;
    } else {
        extensions.set_item(intern!(py, "http.response.trailers"), PyDict::new(py))?;
    }
    d.set_item(intern!(py, "extensions"), extensions)?;
    Ok(d)
}
