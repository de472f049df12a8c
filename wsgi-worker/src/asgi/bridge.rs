//! The Rust objects the loop thread calls: `Bridge.drain()` (the cell's commands), `Sink` (one
//! request's `send` events out to the cell) and `Reporter` (lifespan outcomes).
use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use super::scope::{self, Mount};
use super::{Cmd, Out, Shared, WsData};
use crate::pool::Observer;
use crate::response::check_header;

/// Response bytes handed to the cell but not yet passed on to the client, past which `send`
/// waits (the app cannot outrun a slow client by more than this).
const HIGH_WATER: usize = 256 * 1024;
/// ... and below which it goes on.
const LOW_WATER: usize = 64 * 1024;

/// Flow control of one response: bytes in flight, and whether `send` waits.
#[derive(Debug, Default)]
pub struct Credit(Mutex<(usize, bool)>);

impl Credit {
    /// Counts bytes the app sent; false: past the high-water mark, the app must wait.
    fn take(&self, n: usize) -> bool {
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.0 += n;
        if g.0 > HIGH_WATER {
            g.1 = true;
            return false;
        }
        true
    }

    /// The cell passed `n` bytes on; true: the app waits and may go on now.
    pub fn release(&self, n: usize) -> bool {
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.0 = g.0.saturating_sub(n);
        if g.1 && g.0 <= LOW_WATER {
            g.1 = false;
            return true;
        }
        false
    }
}

#[pyclass(module = "portico")]
#[derive(Debug)]
pub struct Bridge {
    pub(super) shared: Arc<Shared>,
    pub(super) rx: crossbeam_channel::Receiver<Cmd>,
    /// Per app of the loop: its mount point and its metrics.
    pub(super) apps: Vec<(Mount, Option<Arc<dyn Observer>>)>,
    pub(super) asgi: Py<PyDict>,
}

#[pymethods]
impl Bridge {
    /// Every command posted since the last wake, as tuples the shim dispatches on.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.shared.clear_wake();
        let out = PyList::empty(py);
        let asgi = self.asgi.bind(py);
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Cmd::Start(start) => {
                    let (rid, app, head, tx, credit, enqueued) = *start;
                    let (mount, observer) = &self.apps[app];
                    let began = Instant::now();
                    if let Some(o) = observer {
                        o.started(began.saturating_duration_since(enqueued));
                    }
                    let scope = match scope::build(py, &head, mount, asgi) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Out::Finished {
                                error: Some(crate::python::format_err(py, &e)),
                            });
                            continue;
                        }
                    };
                    let sink = Sink {
                        ws: head.websocket,
                        denied: false,
                        trailers: false,
                        trailers_done: false,
                        tx,
                        credit,
                        started: false,
                        done: false,
                        began,
                        observer: observer.clone(),
                    };
                    out.append((0, rid, app, scope, sink))?;
                }
                Cmd::Shutdown(app) => out.append((1, app))?,
                Cmd::Body { rid, data, more } => {
                    out.append((2, rid, PyBytes::new(py, &data), more))?;
                }
                Cmd::Disconnect(rid) => out.append((3, rid))?,
                Cmd::WsMessage { rid, data } => match data {
                    WsData::Text(t) => out.append((6, rid, PyString::new(py, &t)))?,
                    WsData::Bytes(b) => out.append((6, rid, PyBytes::new(py, &b)))?,
                },
                Cmd::WsDisconnect { rid, code } => out.append((7, rid, code))?,
                Cmd::Cancel(rid) => out.append((4, rid))?,
                Cmd::Resume(rid) => out.append((5, rid))?,
            }
        }
        Ok(out)
    }
}

/// One request's way back to the cell: checks each `send` event and forwards it.
#[pyclass(module = "portico")]
#[derive(Debug)]
pub struct Sink {
    /// A `websocket` scope: `started` is "accepted", `done` "closed" (or, after `denied`, the
    /// denial response complete).
    ws: bool,
    /// `websocket.http.response.start` was sent (the denial response extension).
    denied: bool,
    /// `http.response.start` said `trailers: True`.
    trailers: bool,
    /// The last `http.response.trailers` (without `more_trailers`) was sent.
    trailers_done: bool,
    tx: super::EventTx,
    credit: Arc<Credit>,
    started: bool,
    /// The final body event was sent.
    done: bool,
    began: Instant,
    observer: Option<Arc<dyn Observer>>,
}

/// `m[key]`, or None; keys are interned strings (hashed once, not per message).
fn get<'py>(
    m: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    m.get_item(key)
}

/// The `headers` of `http.response.start` or `websocket.accept`, checked.
fn response_headers(message: &Bound<'_, PyDict>) -> PyResult<Vec<(HeaderName, HeaderValue)>> {
    let py = message.py();
    let mut headers = Vec::new();
    let Some(h) = get(message, intern!(py, "headers"))? else {
        return Ok(headers);
    };
    let pair_error = || PyTypeError::new_err("each response header is a (name, value) pair");
    let mut one = |name: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>| -> PyResult<()> {
        let name = header_bytes(name)?;
        let value = header_bytes(value)?;
        // HeaderName lowercases; the name is a token, so valid UTF-8 borrows.
        headers.push(
            check_header(&String::from_utf8_lossy(&name), &value).map_err(PyValueError::new_err)?,
        );
        Ok(())
    };
    for pair in h.try_iter()? {
        let pair = pair?;
        if let Ok(t) = pair.cast::<PyTuple>() {
            if t.len() != 2 {
                return Err(pair_error());
            }
            one(&t.get_item(0)?, &t.get_item(1)?)?;
        } else if let Ok(l) = pair.cast::<PyList>() {
            if l.len() != 2 {
                return Err(pair_error());
            }
            one(&l.get_item(0)?, &l.get_item(1)?)?;
        } else {
            return Err(pair_error());
        }
    }
    Ok(headers)
}

/// The `status` and `headers` of `http.response.start` (or `websocket.http.response.start`).
fn response_start(
    message: &Bound<'_, PyDict>,
) -> PyResult<(StatusCode, Vec<(HeaderName, HeaderValue)>)> {
    let code: u16 = get(message, intern!(message.py(), "status"))?
        .ok_or_else(|| PyValueError::new_err("a response start without 'status'"))?
        .extract()?;
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| PyValueError::new_err(format!("invalid status {code}")))?;
    Ok((status, response_headers(message)?))
}

/// Header names and values: bytes (as the spec says), or str encoded as latin-1.
fn header_bytes<'a>(v: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(s) = v.cast::<PyString>() {
        return s
            .to_cow()?
            .chars()
            .map(|c| u8::try_from(u32::from(c)).ok())
            .collect::<Option<Vec<u8>>>()
            .map(Cow::Owned)
            .ok_or_else(|| PyValueError::new_err("header text is not latin-1"));
    }
    Err(PyTypeError::new_err("response headers must be bytes"))
}

impl Sink {
    /// A response body piece (`body`, `more_body`) out to the cell; false: the app waits.
    fn body(&mut self, message: &Bound<'_, PyDict>) -> PyResult<bool> {
        let data = match get(message, intern!(message.py(), "body"))? {
            None => Bytes::new(),
            Some(b) => Bytes::copy_from_slice(
                b.cast::<PyBytes>()
                    .map_err(|_| PyTypeError::new_err("'body' must be bytes"))?
                    .as_bytes(),
            ),
        };
        let more = match get(message, intern!(message.py(), "more_body"))? {
            None => false,
            Some(m) => m.is_truthy()?,
        };
        self.done = !more;
        let ok = self.credit.take(data.len());
        if self.tx.send(Out::Body { data, more }).is_err() {
            return Err(super::disconnected(message.py()));
        }
        Ok(ok)
    }

    /// `websocket.accept`, `websocket.send` and `websocket.close`, or instead of the accept the
    /// denial response (`websocket.http.response.start`, then its `...body` pieces).
    fn send_ws(&mut self, kind: &str, message: &Bound<'_, PyDict>) -> PyResult<bool> {
        if self.done {
            return Err(PyRuntimeError::new_err(if self.denied {
                format!("{kind} sent after the denial response was complete")
            } else {
                format!("{kind} sent after websocket.close")
            }));
        }
        if self.denied && kind != "websocket.http.response.body" {
            return Err(PyRuntimeError::new_err(format!(
                "{kind} sent after websocket.http.response.start"
            )));
        }
        let out = match kind {
            "websocket.http.response.start" => {
                if self.started {
                    return Err(PyRuntimeError::new_err(
                        "websocket.http.response.start sent after websocket.accept",
                    ));
                }
                let (status, headers) = response_start(message)?;
                self.denied = true;
                Out::Start {
                    status,
                    headers,
                    trailers: false,
                }
            }
            "websocket.http.response.body" => {
                if !self.denied {
                    return Err(PyRuntimeError::new_err(
                        "websocket.http.response.body sent before websocket.http.response.start",
                    ));
                }
                return self.body(message);
            }
            "websocket.accept" => {
                if self.started {
                    return Err(PyRuntimeError::new_err("websocket.accept sent twice"));
                }
                self.started = true;
                let subprotocol = match get(message, intern!(message.py(), "subprotocol"))? {
                    Some(p) if !p.is_none() => Some(p.extract::<String>()?),
                    _ => None,
                };
                if let Some(p) = &subprotocol
                    && HeaderValue::from_str(p).is_err()
                {
                    return Err(PyValueError::new_err(format!("invalid subprotocol {p:?}")));
                }
                Out::Accept {
                    subprotocol,
                    headers: response_headers(message)?,
                }
            }
            "websocket.send" => {
                if !self.started {
                    return Err(PyRuntimeError::new_err(
                        "websocket.send before websocket.accept",
                    ));
                }
                let text = get(message, intern!(message.py(), "text"))?.filter(|t| !t.is_none());
                let bytes = get(message, intern!(message.py(), "bytes"))?.filter(|b| !b.is_none());
                let data = match (text, bytes) {
                    (Some(t), None) => WsData::Text(t.extract()?),
                    (None, Some(b)) => WsData::Bytes(Bytes::copy_from_slice(
                        b.cast::<PyBytes>()
                            .map_err(|_| PyTypeError::new_err("'bytes' must be bytes"))?
                            .as_bytes(),
                    )),
                    _ => {
                        return Err(PyValueError::new_err(
                            "websocket.send needs exactly one of 'text' and 'bytes'",
                        ));
                    }
                };
                let ok = self.credit.take(data.len());
                if self.tx.send(Out::Message(data)).is_err() {
                    return Err(super::disconnected(message.py()));
                }
                return Ok(ok);
            }
            "websocket.close" => {
                self.done = true;
                let code = match get(message, intern!(message.py(), "code"))? {
                    Some(c) if !c.is_none() => c.extract::<u16>()?,
                    _ => 1000,
                };
                // What RFC 6455 lets an endpoint send (1004-1006 and 1015 are reserved).
                if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                    return Err(PyValueError::new_err(format!("invalid close code {code}")));
                }
                let reason = match get(message, intern!(message.py(), "reason"))? {
                    Some(r) if !r.is_none() => r.extract::<String>()?,
                    _ => String::new(),
                };
                Out::Close { code, reason }
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "unsupported ASGI message type {other:?} on a websocket scope"
                )));
            }
        };
        if self.tx.send(out).is_err() {
            return Err(super::disconnected(message.py()));
        }
        Ok(true)
    }
}

#[pymethods]
impl Sink {
    /// The app's `send(message)` for `http.response.*`; false: wait for the cell to catch up.
    fn send(&mut self, message: &Bound<'_, PyDict>) -> PyResult<bool> {
        let kind = get(message, intern!(message.py(), "type"))?
            .ok_or_else(|| PyValueError::new_err("ASGI message without 'type'"))?;
        let kind = kind
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("an ASGI message's 'type' is a str"))?
            .to_cow()?;
        if self.ws {
            return self.send_ws(&kind, message);
        }
        match &*kind {
            "http.response.start" => {
                if self.started {
                    return Err(PyRuntimeError::new_err("http.response.start sent twice"));
                }
                let (status, headers) = response_start(message)?;
                self.trailers = match get(message, intern!(message.py(), "trailers"))? {
                    None => false,
                    Some(t) => t.is_truthy()?,
                };
                self.started = true;
                let _ = self.tx.send(Out::Start {
                    status,
                    headers,
                    trailers: self.trailers,
                });
                Ok(true)
            }
            "http.response.body" => {
                if !self.started {
                    return Err(PyRuntimeError::new_err(
                        "http.response.body sent before http.response.start",
                    ));
                }
                if self.done {
                    return Err(PyRuntimeError::new_err(if self.trailers_done {
                        "http.response.body sent after http.response.trailers"
                    } else {
                        "http.response.body sent after the response was complete"
                    }));
                }
                self.body(message)
            }
            "http.response.trailers" => {
                let wrong = if !self.started {
                    Some("http.response.trailers sent before http.response.start")
                } else if !self.trailers {
                    Some(
                        "http.response.trailers sent without trailers: True in http.response.start",
                    )
                } else if !self.done {
                    Some("http.response.trailers sent before the last http.response.body")
                } else if self.trailers_done {
                    Some("http.response.trailers sent after the last ones (more_trailers: False)")
                } else {
                    None
                };
                if let Some(wrong) = wrong {
                    return Err(PyRuntimeError::new_err(wrong));
                }
                let headers = response_headers(message)?;
                let more = match get(message, intern!(message.py(), "more_trailers"))? {
                    None => false,
                    Some(m) => m.is_truthy()?,
                };
                self.trailers_done = !more;
                if self.tx.send(Out::Trailers { headers, more }).is_err() {
                    return Err(super::disconnected(message.py()));
                }
                Ok(true)
            }
            other => Err(PyValueError::new_err(format!(
                "unsupported ASGI message type {other:?} on an http scope"
            ))),
        }
    }

    /// `receive` found nothing queued: the cell reads the next piece of the request body.
    fn want(&self) {
        let _ = self.tx.send(Out::Want);
    }

    /// The app took a WebSocket message: the cell may read one more from the client.
    fn received(&self) {
        let _ = self.tx.send(Out::Received);
    }

    /// The app's coroutine ended; `error`: the traceback when it raised.
    fn finish(&mut self, error: Option<String>) {
        if let Some(o) = &self.observer {
            o.finished(self.began.elapsed(), error.is_some());
        }
        let _ = self.tx.send(Out::Finished { error });
    }
}

/// Lifespan outcomes, from the loop thread to whoever waits for startup or shutdown.
#[pyclass(module = "portico")]
#[derive(Debug)]
pub struct Reporter(pub(super) Mutex<std::sync::mpsc::Sender<(String, String)>>);

#[pymethods]
impl Reporter {
    fn __call__(&self, kind: String, text: String) {
        let tx = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = tx.send((kind, text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_pauses_past_the_high_water_mark_and_resumes_below_the_low_one() {
        let c = Credit::default();
        assert!(c.take(HIGH_WATER), "up to the mark the app goes on");
        assert!(!c.take(1), "past it the app waits");
        assert!(
            !c.release(HIGH_WATER - LOW_WATER),
            "still above the low mark"
        );
        assert!(c.release(1), "at the low mark: resume, once");
        assert!(!c.release(LOW_WATER), "not paused any more");
    }
}
