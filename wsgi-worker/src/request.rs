//! One request in a Python thread: the PEP 3333 environ (built from interned constants), the
//! call into the app, and the response handed back to the cell.
use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Uri, Version};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::environ::{self, ConnInfo};
use crate::objects::{self, ErrorStream, Input, StartResponse};
use crate::pool::{Job, Settings};
use crate::python;

/// Interned keys and per-pool constants, built once per thread.
pub struct Consts {
    template: Py<PyDict>,
    k: Keys,
    scheme_http: Py<PyString>,
    scheme_https: Py<PyString>,
    http11: Py<PyString>,
    http10: Py<PyString>,
    http2: Py<PyString>,
    methods: HashMap<Method, Py<PyString>>,
    header_keys: HashMap<HeaderName, Option<Py<PyString>>>,
    script_name: Py<PyString>,
    pub helper: Py<PyModule>,
    file_wrapper: Py<PyAny>,
}

macro_rules! keys {
    ($($field:ident = $name:literal),* $(,)?) => {
        struct Keys { $($field: Py<PyString>,)* }
        impl Keys {
            fn new(py: Python<'_>) -> Keys {
                Keys { $($field: PyString::intern(py, $name).unbind(),)* }
            }
        }
    };
}

keys! {
    request_method = "REQUEST_METHOD",
    script_name = "SCRIPT_NAME",
    path_info = "PATH_INFO",
    query_string = "QUERY_STRING",
    content_type = "CONTENT_TYPE",
    content_length = "CONTENT_LENGTH",
    server_name = "SERVER_NAME",
    server_port = "SERVER_PORT",
    server_protocol = "SERVER_PROTOCOL",
    remote_addr = "REMOTE_ADDR",
    remote_port = "REMOTE_PORT",
    request_uri = "REQUEST_URI",
    raw_uri = "RAW_URI",
    http_host = "HTTP_HOST",
    url_scheme = "wsgi.url_scheme",
    input = "wsgi.input",
}

impl Consts {
    pub fn new(py: Python<'_>, s: &Settings) -> PyResult<Consts> {
        let helper = python::helper(py)?;
        let file_wrapper = helper.getattr("FileWrapper")?.unbind();
        let t = PyDict::new(py);
        t.set_item("wsgi.version", PyTuple::new(py, [1, 0])?)?;
        t.set_item("wsgi.errors", Py::new(py, ErrorStream::new())?)?;
        t.set_item("wsgi.multithread", s.threads > 1)?;
        t.set_item("wsgi.multiprocess", s.multiprocess)?;
        t.set_item("wsgi.run_once", false)?;
        t.set_item("wsgi.input_terminated", true)?;
        t.set_item("wsgi.file_wrapper", &file_wrapper)?;
        t.set_item("SCRIPT_NAME", &s.script_name)?;
        t.set_item("QUERY_STRING", "")?;
        for (k, v) in &s.environ {
            t.set_item(k, v)?;
        }
        let methods = [
            Method::GET,
            Method::POST,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ]
        .into_iter()
        .map(|m| {
            let s = PyString::intern(py, m.as_str()).unbind();
            (m, s)
        })
        .collect();
        Ok(Consts {
            template: t.unbind(),
            k: Keys::new(py),
            scheme_http: PyString::intern(py, "http").unbind(),
            scheme_https: PyString::intern(py, "https").unbind(),
            http11: PyString::intern(py, "HTTP/1.1").unbind(),
            http10: PyString::intern(py, "HTTP/1.0").unbind(),
            http2: PyString::intern(py, "HTTP/2.0").unbind(),
            methods,
            header_keys: HashMap::new(),
            script_name: PyString::new(py, &s.script_name).unbind(),
            helper: helper.unbind(),
            file_wrapper,
        })
    }
}

/// The interned `HTTP_*` key for a header name (None: the header is not passed).
fn header_key<'py>(
    cache: &mut HashMap<HeaderName, Option<Py<PyString>>>,
    py: Python<'py>,
    name: &HeaderName,
) -> Option<Bound<'py, PyString>> {
    {
        if let Some(k) = cache.get(name) {
            return k.as_ref().map(|k| k.bind(py).clone());
        }
        let key = environ::http_key(name.as_str()).map(|k| PyString::intern(py, &k).unbind());
        let out = key.as_ref().map(|k| k.bind(py).clone());
        // Bounded: a client sending endless distinct names must not grow it without limit.
        if cache.len() < 512 {
            cache.insert(name.clone(), key);
        }
        out
    }
}

/// Runs one request; false when the app failed.
pub fn run(py: Python<'_>, app: &Py<PyAny>, job: Job, c: &mut Consts, s: &Settings) -> bool {
    let Job {
        method,
        uri,
        version,
        headers,
        conn,
        path_info,
        body,
        reply,
        ..
    } = job;
    let Ok(input) = Py::new(py, Input::new(body)) else {
        return false;
    };
    let Ok(sr) = Py::new(py, StartResponse::new(reply)) else {
        return false;
    };
    let req = Req {
        method: &method,
        uri: &uri,
        version,
        headers: &headers,
        conn: &conn,
        path_info: &path_info,
        input: &input,
    };
    let ok = match build_environ(py, &req, c, s, &input) {
        Err(e) => {
            tracing::error!(
                "building the WSGI environ failed:\n{}",
                python::format_err(py, &e)
            );
            sr.borrow_mut(py).responder.fail(py);
            false
        }
        Ok(environ) => match app.call1(py, (environ, sr.clone_ref(py))) {
            Err(e) => {
                let app_error = report(py, &e, &req);
                sr.borrow_mut(py).responder.fail(py);
                !app_error
            }
            Ok(result) => respond(py, result.bind(py), &sr, c, &req),
        },
    };
    input.borrow_mut(py).finish();
    ok
}

struct Req<'a> {
    method: &'a Method,
    uri: &'a Uri,
    version: Version,
    headers: &'a HeaderMap,
    conn: &'a ConnInfo,
    path_info: &'a str,
    input: &'a Py<Input>,
}

/// Logs an app exception with its traceback and the request it broke (never sent to the
/// client). An exception that comes from the request body failing while the app read it
/// (broken framing, too large) is the client's error: one line, no traceback, and false (not an app error).
fn report(py: Python<'_>, e: &PyErr, req: &Req<'_>) -> bool {
    let target = req
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    if req.input.borrow(py).body_failed() {
        tracing::info!(
            "client error on {} {target}: the request body could not be read ({}); answered 4xx",
            req.method,
            e.value(py)
        );
        return false;
    }
    tracing::error!(
        "WSGI application error on {} {}:\n{}",
        req.method,
        target,
        python::format_err(py, e).trim_end()
    );
    true
}

/// Iterates the app's result into the response; always calls its close().
fn respond(
    py: Python<'_>,
    result: &Bound<'_, PyAny>,
    sr: &Py<StartResponse>,
    c: &Consts,
    req: &Req<'_>,
) -> bool {
    let outcome = send_body(py, result, sr, c);
    let mut ok = true;
    if let Err(e) = &outcome {
        let gone = sr.borrow(py).responder.is_gone();
        if gone {
            tracing::debug!("client went away during the response");
        } else {
            ok = !report(py, e, req);
        }
        sr.borrow_mut(py).responder.fail(py);
    }
    // Lists and tuples have no close(); asking would build an AttributeError per request.
    let plain = result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>();
    if !plain
        && let Ok(close) = result.getattr(intern!(py, "close"))
        && let Err(e) = close.call0()
        && report(py, &e, req)
    {
        ok = false;
    }
    ok
}

fn send_body(
    py: Python<'_>,
    result: &Bound<'_, PyAny>,
    sr: &Py<StartResponse>,
    c: &Consts,
) -> PyResult<()> {
    // After write() the response is already streaming: everything else follows it.
    let streaming = sr.borrow(py).responder.is_streaming();
    // Lists and tuples: the whole body at once, with a known length.
    if !streaming && let Ok(list) = result.cast::<PyList>() {
        let chunks = list
            .iter()
            .map(|i| objects::chunk(&i))
            .collect::<PyResult<Vec<Bytes>>>()?;
        return sr.borrow_mut(py).responder.finish_full(chunks);
    }
    if !streaming && let Ok(t) = result.cast::<PyTuple>() {
        let chunks = t
            .iter()
            .map(|i| objects::chunk(&i))
            .collect::<PyResult<Vec<Bytes>>>()?;
        return sr.borrow_mut(py).responder.finish_full(chunks);
    }
    if !streaming
        && result.get_type().is(c.file_wrapper.bind(py))
        && let Some((fd, offset, size)) = c
            .helper
            .bind(py)
            .call_method1("regular_file", (result,))?
            .extract::<Option<(i32, u64, u64)>>()?
    {
        // A new descriptor for the same file, opened safely through /proc.
        if let Ok(file) = std::fs::File::open(format!("/proc/self/fd/{fd}")) {
            let len = size.saturating_sub(offset);
            return sr.borrow_mut(py).responder.finish_file(file, offset, len);
        }
    }
    let mut started = false;
    for item in result.try_iter()? {
        let data = objects::chunk(&item?)?;
        if data.is_empty() {
            continue;
        }
        sr.borrow_mut(py).responder.send(py, data)?;
        started = true;
    }
    let mut sr = sr.borrow_mut(py);
    if started || sr.responder.is_streaming() {
        sr.responder.end_stream();
        Ok(())
    } else {
        sr.responder.finish_full(Vec::new())
    }
}

fn build_environ<'py>(
    py: Python<'py>,
    r: &Req<'_>,
    c: &mut Consts,
    s: &Settings,
    input: &Py<Input>,
) -> PyResult<Bound<'py, PyDict>> {
    let env = c.template.bind(py).copy()?;
    let k = &c.k;
    let fwd = environ::forwarded(r.headers, r.conn, &s.trusted_proxies);
    match c.methods.get(r.method) {
        Some(m) => env.set_item(&k.request_method, m.bind(py))?,
        None => env.set_item(&k.request_method, r.method.as_str())?,
    }
    if let Some(prefix) = &fwd.prefix {
        env.set_item(&k.script_name, format!("{prefix}{}", s.script_name))?;
    } else {
        env.set_item(&k.script_name, c.script_name.bind(py))?;
    }
    env.set_item(
        &k.path_info,
        objects::native(py, &environ::decode_path(r.path_info)),
    )?;
    if let Some(q) = r.uri.query() {
        env.set_item(&k.query_string, q)?;
    }
    let raw = r
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let raw = PyString::new(py, raw);
    env.set_item(&k.request_uri, &raw)?;
    env.set_item(&k.raw_uri, &raw)?;
    env.set_item(
        &k.server_protocol,
        match r.version {
            Version::HTTP_10 => c.http10.bind(py),
            // As mod_wsgi and uWSGI behind nginx say it.
            Version::HTTP_2 => c.http2.bind(py),
            _ => c.http11.bind(py),
        },
    )?;
    let https = fwd.scheme.map_or(r.conn.tls, |s| s == "https");
    env.set_item(
        &k.url_scheme,
        if https {
            c.scheme_https.bind(py)
        } else {
            c.scheme_http.bind(py)
        },
    )?;
    env.set_item(
        &k.remote_addr,
        fwd.remote_addr.as_deref().unwrap_or(&r.conn.remote_addr),
    )?;
    env.set_item(&k.remote_port, r.conn.remote_port.to_string())?;
    env.set_item(&k.input, input.bind(py))?;

    // Headers: repeated ones joined with ", " (Cookie with "; ").
    let mut host: Option<String> = None;
    for name in r.headers.keys() {
        if *name == http::header::CONTENT_TYPE || *name == http::header::CONTENT_LENGTH {
            let key = if *name == http::header::CONTENT_TYPE {
                &k.content_type
            } else {
                &k.content_length
            };
            if let Some(v) = r.headers.get(name) {
                env.set_item(key, objects::native(py, v.as_bytes()))?;
            }
            continue;
        }
        if !s.pass_authorization && *name == http::header::AUTHORIZATION {
            continue;
        }
        let Some(key) = header_key(&mut c.header_keys, py, name) else {
            continue;
        };
        let mut values = r.headers.get_all(name).iter();
        let first = values
            .next()
            .map(http::HeaderValue::as_bytes)
            .unwrap_or_default();
        let value = match values.next() {
            None => objects::native(py, first),
            Some(second) => {
                let sep: &[u8] = if *name == http::header::COOKIE {
                    b"; "
                } else {
                    b", "
                };
                let mut joined = first.to_vec();
                joined.extend_from_slice(sep);
                joined.extend_from_slice(second.as_bytes());
                for v in values {
                    joined.extend_from_slice(sep);
                    joined.extend_from_slice(v.as_bytes());
                }
                objects::native(py, &joined)
            }
        };
        if *name == http::header::HOST {
            host = value.to_str().ok().map(str::to_owned);
        }
        env.set_item(key, value)?;
    }
    if let Some(h) = &fwd.host {
        env.set_item(&k.http_host, h)?;
        host = Some(h.clone());
    }
    let (name, port) = environ::split_host(host.as_deref(), r.conn, https);
    env.set_item(&k.server_name, name)?;
    env.set_item(&k.server_port, port)?;
    Ok(env)
}
