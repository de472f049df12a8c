//! The Python objects a request sees: `wsgi.input`, `start_response` (with `write`) and
//! `wsgi.errors`. Each blocks only with the GIL released.
use bytes::{Bytes, BytesMut};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use tokio::sync::{mpsc, oneshot};

use crate::environ::latin1;
use crate::response::{self, BodyOut, Head, Piece, Reply};

/// Where a request body comes from: the cell pumps it from the socket only once the app asks
/// (so `Expect: 100-continue` is answered only when the body is wanted).
#[derive(Debug)]
pub struct BodySource {
    pub want: Option<oneshot::Sender<()>>,
    pub rx: mpsc::Receiver<Result<Bytes, String>>,
    /// Body bytes already read by the cell: the whole body when `want` is None, else the
    /// start of it (the rest follows on `rx`).
    pub ready: Option<Bytes>,
}

impl BodySource {
    /// A body the cell has already read whole.
    pub fn ready(b: Bytes) -> Self {
        let (_, rx) = mpsc::channel(1);
        BodySource {
            want: None,
            rx,
            ready: Some(b),
        }
    }
}

/// `wsgi.input`: streams the body; reads past the end return b"".
#[pyclass(module = "portico")]
#[derive(Debug)]
pub struct Input {
    source: Option<BodySource>,
    buf: BytesMut,
    eof: bool,
    /// The body's framing broke while it was read (the client's error).
    failed: bool,
}

impl Input {
    pub fn new(mut source: Option<BodySource>) -> Self {
        let mut buf = BytesMut::new();
        if let Some(b) = source.as_mut().and_then(|s| s.ready.take()) {
            // No copy when the cell holds the only reference to the bytes.
            buf = BytesMut::from(b);
            if source.as_ref().is_some_and(|s| s.want.is_none()) {
                source = None;
            }
        }
        Input {
            eof: source.is_none(),
            source,
            buf,
            failed: false,
        }
    }

    /// Reading the body failed on its framing (see `BodySource`).
    pub fn body_failed(&self) -> bool {
        self.failed
    }

    /// The request is over: let the cell drain (or drop) what the app did not read.
    pub fn finish(&mut self) {
        self.source = None;
        self.eof = true;
    }

    /// Pulls one more chunk into `buf`; false at the end.
    fn fill(&mut self, py: Python<'_>) -> PyResult<bool> {
        if self.eof {
            return Ok(false);
        }
        let Some(src) = self.source.as_mut() else {
            self.eof = true;
            return Ok(false);
        };
        if let Some(w) = src.want.take() {
            let _ = w.send(());
        }
        let rx = &mut src.rx;
        match py.detach(|| rx.blocking_recv()) {
            Some(Ok(b)) => {
                self.buf.extend_from_slice(&b);
                Ok(true)
            }
            Some(Err(e)) => {
                self.eof = true;
                self.failed = true;
                self.source = None;
                Err(PyOSError::new_err(format!("reading the request body: {e}")))
            }
            None => {
                self.eof = true;
                Ok(false)
            }
        }
    }

    fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.buf.len());
        self.buf.split_to(n).freeze()
    }

    fn read_line(&mut self, py: Python<'_>, limit: Option<usize>) -> PyResult<Bytes> {
        let mut scanned = 0;
        loop {
            if let Some(i) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + i + 1;
                return Ok(self.take(limit.map_or(end, |l| l.min(end))));
            }
            scanned = self.buf.len();
            if let Some(l) = limit
                && self.buf.len() >= l
            {
                return Ok(self.take(l));
            }
            if !self.fill(py)? {
                let n = self.buf.len();
                return Ok(self.take(n));
            }
        }
    }
}

fn size_arg(size: Option<isize>) -> Option<usize> {
    size.and_then(|s| usize::try_from(s).ok())
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size=None))]
    fn read<'py>(&mut self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        match size_arg(size) {
            Some(n) => {
                while self.buf.len() < n && self.fill(py)? {}
                let b = self.take(n);
                Ok(PyBytes::new(py, &b))
            }
            None => {
                while self.fill(py)? {}
                let n = self.buf.len();
                let b = self.take(n);
                Ok(PyBytes::new(py, &b))
            }
        }
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(
        &mut self,
        py: Python<'py>,
        size: Option<isize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let line = self.read_line(py, size_arg(size))?;
        Ok(PyBytes::new(py, &line))
    }

    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(
        &mut self,
        py: Python<'py>,
        hint: Option<isize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let hint = size_arg(hint).filter(|h| *h > 0);
        let mut total = 0;
        loop {
            let line = self.read_line(py, None)?;
            if line.is_empty() {
                break;
            }
            total += line.len();
            out.append(PyBytes::new(py, &line))?;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(out)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.read_line(py, None)?;
        Ok((!line.is_empty()).then(|| PyBytes::new(py, &line)))
    }
}

/// `wsgi.errors`: text written here goes to the error log, a line at a time.
#[pyclass(module = "portico")]
#[derive(Debug)]
pub struct ErrorStream {
    pending: String,
}

impl ErrorStream {
    pub fn new() -> Self {
        ErrorStream {
            pending: String::new(),
        }
    }
}

#[pymethods]
impl ErrorStream {
    fn write(&mut self, s: &Bound<'_, PyAny>) -> PyResult<usize> {
        let text: String = if let Ok(st) = s.cast::<PyString>() {
            st.to_str()?.to_owned()
        } else if let Ok(b) = s.cast::<PyBytes>() {
            String::from_utf8_lossy(b.as_bytes()).into_owned()
        } else {
            return Err(PyTypeError::new_err("wsgi.errors.write() takes a str"));
        };
        self.pending.push_str(&text);
        while let Some(i) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=i).collect();
            tracing::warn!(target: "portico::wsgi", "{}", line.trim_end());
        }
        Ok(text.len())
    }

    fn writelines(&mut self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for l in lines.try_iter()? {
            self.write(&l?)?;
        }
        Ok(())
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            tracing::warn!(target: "portico::wsgi", "{}", self.pending);
            self.pending.clear();
        }
    }
}

/// Streamed responses may run this far ahead of the socket before the app's thread waits.
const STREAM_DEPTH: usize = 8;

/// The response side of one request: the head set by start_response, then the body.
#[derive(Debug)]
pub struct Responder {
    reply: Option<oneshot::Sender<Reply>>,
    head: Option<Head>,
    stream: Option<mpsc::Sender<Piece>>,
    /// The client went away (the cell dropped the receiving side).
    gone: bool,
}

impl Responder {
    fn head_sent(&self) -> bool {
        self.reply.is_none()
    }

    /// Sends a chunk, starting a streamed response with the first one.
    pub fn send(&mut self, py: Python<'_>, data: Bytes) -> PyResult<()> {
        if self.gone {
            return Err(PyOSError::new_err("client disconnected"));
        }
        if let Some(reply) = self.reply.take() {
            let head = self
                .head
                .take()
                .ok_or_else(|| PyRuntimeError::new_err("response body before start_response()"))?;
            let (tx, rx) = mpsc::channel(STREAM_DEPTH);
            if reply
                .send(Reply::Response(head, BodyOut::Stream { first: data, rx }))
                .is_err()
            {
                self.gone = true;
                return Err(PyOSError::new_err("client disconnected"));
            }
            self.stream = Some(tx);
            return Ok(());
        }
        let Some(tx) = self.stream.as_ref() else {
            return Err(PyRuntimeError::new_err("response already finished"));
        };
        let ok = match tx.try_send(Piece::Data(data)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(p)) => py.detach(|| tx.blocking_send(p)).is_ok(),
        };
        if !ok {
            self.gone = true;
            self.stream = None;
            return Err(PyOSError::new_err("client disconnected"));
        }
        Ok(())
    }

    /// The whole body is known (list, tuple, or an iterable that ended before any chunk).
    pub fn finish_full(&mut self, chunks: Vec<Bytes>) -> PyResult<()> {
        match self.reply.take() {
            Some(reply) => {
                let head = self.head.take().ok_or_else(|| {
                    PyRuntimeError::new_err("application returned without calling start_response()")
                })?;
                let _ = reply.send(Reply::Response(head, BodyOut::Full(chunks)));
                Ok(())
            }
            None => Err(PyRuntimeError::new_err("response already started")),
        }
    }

    /// A file the cell sends itself.
    pub fn finish_file(&mut self, file: std::fs::File, offset: u64, len: u64) -> PyResult<()> {
        match (self.reply.take(), self.head.take()) {
            (Some(reply), Some(head)) => {
                let _ = reply.send(Reply::Response(head, BodyOut::File { file, offset, len }));
                Ok(())
            }
            (Some(reply), None) => {
                self.reply = Some(reply);
                Err(PyRuntimeError::new_err(
                    "application returned without calling start_response()",
                ))
            }
            _ => Err(PyRuntimeError::new_err("response already started")),
        }
    }

    /// The end of a streamed body (dropping the sender ends it cleanly).
    pub fn end_stream(&mut self) {
        self.stream = None;
    }

    /// The app failed: 500 if nothing went out yet, else abort the connection.
    pub fn fail(&mut self, py: Python<'_>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Reply::Error {
                status: http::StatusCode::INTERNAL_SERVER_ERROR,
                retry_after: false,
            });
        } else if let Some(tx) = self.stream.take() {
            let _ = py.detach(|| tx.blocking_send(Piece::Abort));
        }
    }

    pub fn is_streaming(&self) -> bool {
        self.stream.is_some()
    }

    pub fn is_gone(&self) -> bool {
        self.gone
    }
}

/// `start_response(status, headers, exc_info=None)`, which returns `write`.
#[pyclass(module = "portico")]
#[derive(Debug)]
pub struct StartResponse {
    pub responder: Responder,
}

impl StartResponse {
    pub fn new(reply: oneshot::Sender<Reply>) -> Self {
        StartResponse {
            responder: Responder {
                reply: Some(reply),
                head: None,
                stream: None,
                gone: false,
            },
        }
    }
}

/// A response header value as latin-1 bytes (PEP 3333 native strings).
fn latin1_bytes(s: &Bound<'_, PyString>) -> PyResult<Vec<u8>> {
    let text = s.to_str()?;
    if text.is_ascii() {
        return Ok(text.as_bytes().to_vec());
    }
    text.chars()
        .map(|c| u8::try_from(c as u32).ok())
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| PyValueError::new_err(format!("header value {text:?} is not latin-1")))
}

fn parse_head(status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<Head> {
    let status = status
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err("status must be a str, e.g. '200 OK'"))?;
    let (status, reason) =
        response::parse_status(status.to_str()?).map_err(PyValueError::new_err)?;
    let list = headers.cast::<PyList>().map_err(|_| {
        PyTypeError::new_err("response headers must be a list of (name, value) tuples")
    })?;
    let mut out = Vec::with_capacity(list.len());
    let mut content_length = None;
    for item in list.iter() {
        let pair = item.cast::<PyTuple>().map_err(|_| {
            PyTypeError::new_err(format!(
                "response header {item} is not a (name, value) tuple"
            ))
        })?;
        if pair.len() != 2 {
            return Err(PyTypeError::new_err(format!(
                "response header {pair} is not a (name, value) tuple"
            )));
        }
        let name = pair.get_item(0)?;
        let value = pair.get_item(1)?;
        let name = name
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err(format!("header name {name} must be a str")))?;
        let value = value
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err(format!("header value {value} must be a str")))?;
        let (n, v) = response::check_header(name.to_str()?, &latin1_bytes(value)?)
            .map_err(PyValueError::new_err)?;
        if n == http::header::CONTENT_LENGTH {
            let len = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| PyValueError::new_err(format!("invalid Content-Length {v:?}")))?;
            content_length = Some(len);
        }
        out.push((n, v));
    }
    Ok(Head {
        status,
        reason,
        headers: out,
        content_length,
    })
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__<'py>(
        mut slf: PyRefMut<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let exc_info = exc_info.filter(|e| !e.is_none());
        if let Some(exc) = exc_info {
            if slf.responder.head_sent() {
                // PEP 3333: too late to change the response; re-raise the app's exception.
                let value = exc.get_item(1)?;
                return Err(PyErr::from_value(value));
            }
        } else if slf.responder.head.is_some() {
            return Err(PyRuntimeError::new_err(
                "start_response() called twice without exc_info",
            ));
        }
        slf.responder.head = Some(parse_head(status, headers)?);
        let py = slf.py();
        let obj: Bound<'py, StartResponse> = slf.into_pyobject(py)?;
        obj.getattr("write")
    }

    /// The legacy write() callable: sends at once (headers first, if not yet sent).
    fn write(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let b = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() takes bytes"))?;
        if b.as_bytes().is_empty() {
            return Ok(());
        }
        self.responder
            .send(py, Bytes::copy_from_slice(b.as_bytes()))
    }
}

/// Copies a body chunk out of Python (the bytes object stays owned by Python, under its GIL).
pub fn chunk(item: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    let b = item.cast::<PyBytes>().map_err(|_| {
        PyTypeError::new_err(format!(
            "response body items must be bytes, got {}",
            item.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    Ok(Bytes::copy_from_slice(b.as_bytes()))
}

/// Latin-1 native string for environ values.
pub fn native<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    PyString::new(py, &latin1(bytes))
}
