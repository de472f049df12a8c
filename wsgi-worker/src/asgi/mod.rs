//! ASGI apps in a cell: one asyncio event loop on its own Python thread per ASGI route. The
//! cell's thread never takes the GIL: it posts commands to a channel and wakes the loop with a
//! byte on a socket pair the loop watches (`add_reader`); the app's `send` events come back on
//! a tokio channel. `receive`/`send` are coroutines of a small embedded shim (`shim.py`): a
//! plain coroutine costs less than a Rust awaitable bridged to asyncio futures, and the shim
//! keeps the asyncio details (futures, cancellation) where asyncio's own rules apply.
mod bridge;
mod events;
mod scope;

use std::ffi::CString;
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pyo3::prelude::*;
use pyo3::types::PyDict;

pub use bridge::Credit;
pub use events::{EventRx, EventTx};
pub use scope::{Mount, RequestHead};

use crate::AppSpec;
use crate::pool::Observer;
use crate::python::{self, AppError, LoadPaths};

const SHIM: &str = include_str!("shim.py");

/// Whether the app's `lifespan` scope runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifespan {
    /// Run it; an app that raises before startup does not support it (logged once, not fatal).
    Auto,
    /// Run it; failures stop the cell.
    On,
    Off,
}

/// Everything an ASGI route needs to know about its application.
#[derive(Debug, Clone)]
pub struct AsgiSettings {
    pub spec: AppSpec,
    pub base_dir: PathBuf,
    pub python_path: Vec<PathBuf>,
    pub venv: Option<PathBuf>,
    pub lifespan: Lifespan,
    pub mount: Mount,
    /// Longest wait for `lifespan.startup.complete` (and for shutdown).
    pub lifespan_timeout: Duration,
    pub observer: Option<Arc<dyn Observer>>,
}

/// What the app sends back for one request.
#[derive(Debug)]
pub enum Out {
    Start {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        /// `trailers: True`: `Trailers` events follow the last `Body`.
        trailers: bool,
    },
    Body {
        data: Bytes,
        more: bool,
    },
    /// `http.response.trailers` (after the last `Body`); `more`: more trailer fields follow.
    Trailers {
        headers: Vec<(HeaderName, HeaderValue)>,
        more: bool,
    },
    /// `receive()` is waiting: read the next piece of the request body.
    Want,
    /// `receive()` returned a `websocket.receive`: one client message left the inbound queue.
    Received,
    /// `websocket.accept`: the 101 goes out with these.
    Accept {
        subprotocol: Option<String>,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// `websocket.send`.
    Message(WsData),
    /// `websocket.close`: before `Accept` the handshake is refused (403).
    Close {
        code: u16,
        reason: String,
    },
    /// The app's coroutine ended; the traceback when it raised (or was cancelled).
    Finished {
        error: Option<String>,
    },
}

/// One WebSocket message, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsData {
    Text(String),
    Bytes(Bytes),
}

impl WsData {
    pub fn len(&self) -> usize {
        match self {
            WsData::Text(t) => t.len(),
            WsData::Bytes(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Commands from the cell to the loop.
enum Cmd {
    Start(Box<StartCmd>),
    /// Run the lifespan shutdown of app `n` of the loop.
    Shutdown(usize),
    Body {
        rid: u64,
        data: Bytes,
        more: bool,
    },
    Disconnect(u64),
    /// A message from the WebSocket client (`websocket.receive`).
    WsMessage {
        rid: u64,
        data: WsData,
    },
    /// The WebSocket client went, with this close code (`websocket.disconnect`).
    WsDisconnect {
        rid: u64,
        code: u16,
    },
    Cancel(u64),
    Resume(u64),
}

/// Request id, the app's index on the loop, the request, its way back, its flow control, and
/// when it was posted.
type StartCmd = (u64, usize, RequestHead, EventTx, Arc<Credit>, Instant);

/// What the cell and the loop thread share.
#[derive(Debug)]
struct Shared {
    tx: crossbeam_channel::Sender<Cmd>,
    wake: UnixStream,
    /// A wake byte is on its way; the loop clears it before it drains.
    woken: AtomicBool,
    /// Request ids, unique on the loop.
    next: AtomicU64,
}

impl Shared {
    fn post(&self, cmd: Cmd) {
        if self.tx.send(cmd).is_ok() && !self.woken.swap(true, Relaxed) {
            // Non-blocking: a full socket already holds a wake-up.
            let _ = (&self.wake).write(&[1]);
        }
    }

    fn clear_wake(&self) {
        self.woken.store(false, Relaxed);
    }
}

/// One request as the cell drives it: the app's events, and its flow control.
#[derive(Debug)]
pub struct Exchange {
    pub rid: u64,
    pub events: EventRx,
    pub credit: Arc<Credit>,
}

/// A started ASGI application: how to reach it on its cell's loop thread.
pub struct AsgiApp {
    shared: Arc<Shared>,
    /// Its index among the apps of the loop.
    index: usize,
    /// The lifespan scope is running (startup completed): shutdown waits for it.
    lifespan_running: bool,
    reports: Mutex<std::sync::mpsc::Receiver<(String, String)>>,
    timeout: Duration,
    spec: String,
    /// The app's own Python files (not the interpreter's or site-packages): what `reload`
    /// watches. One list for every app of the loop: they share one interpreter.
    sources: Arc<[PathBuf]>,
}

impl std::fmt::Debug for AsgiApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsgiApp")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

fn disconnected(py: Python<'_>) -> PyErr {
    let cls = shim_module(py).and_then(|m| {
        m.bind(py)
            .getattr("ClientDisconnected")?
            .cast_into::<pyo3::types::PyType>()
            .map_err(PyErr::from)
    });
    match cls {
        Ok(cls) => PyErr::from_type(cls, "the client has disconnected"),
        Err(e) => e,
    }
}

/// Whether `app` is an ASGI application: a coroutine function, or an object whose `__call__`
/// is one (what uvicorn's and Django's own checks look at).
pub fn is_asgi(py: Python<'_>, app: &Bound<'_, PyAny>) -> PyResult<bool> {
    let inspect = py.import("inspect")?;
    if inspect
        .call_method1("iscoroutinefunction", (app,))?
        .is_truthy()?
    {
        return Ok(true);
    }
    match app.getattr("__call__") {
        Ok(call) => inspect
            .call_method1("iscoroutinefunction", (call,))?
            .is_truthy(),
        Err(_) => Ok(false),
    }
}

/// Imports the app named by `spec` and tells whether it speaks ASGI (`--interface auto`).
pub fn detect(spec: &AppSpec, paths: &LoadPaths<'_>) -> Result<bool, AppError> {
    python::init();
    Python::attach(|py| {
        let app = python::load_app(py, spec, paths)?;
        is_asgi(py, app.bind(py)).map_err(|e| AppError::Import {
            spec: spec.to_string(),
            traceback: python::format_err(py, &e),
        })
    })
}

/// Imports the app named by `spec` and nothing more: no event loop, no lifespan, whose
/// startup side effects (pools, files) belong in the cells only (the pre-start check).
pub fn import(spec: &AppSpec, paths: &LoadPaths<'_>) -> Result<(), AppError> {
    python::init();
    Python::attach(|py| python::load_app(py, spec, paths).map(drop))
}

impl AsgiApp {
    /// Imports the apps (in the calling thread), starts the cell's one loop thread for all of
    /// them and runs their lifespan startups; returns once every app is ready for requests.
    pub fn start_all(list: Vec<AsgiSettings>, uvloop: bool) -> Result<Vec<AsgiApp>, AppError> {
        if list.is_empty() {
            return Ok(Vec::new());
        }
        python::init();
        let (apps, shim, sources) = Python::attach(|py| -> Result<_, AppError> {
            let mut apps = Vec::with_capacity(list.len());
            for s in &list {
                apps.push(python::load_app(
                    py,
                    &s.spec,
                    &LoadPaths {
                        base_dir: &s.base_dir,
                        python_path: &s.python_path,
                        venv: s.venv.as_deref(),
                    },
                )?);
            }
            let shim = shim_module(py).map_err(|e| AppError::Import {
                spec: list[0].spec.to_string(),
                traceback: python::format_err(py, &e),
            })?;
            Ok((apps, shim, python::app_source_files(py)))
        })?;
        let sources: Arc<[PathBuf]> = sources.into();
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            tx,
            wake: ours,
            woken: AtomicBool::new(false),
            next: AtomicU64::new(1),
        });
        let bridge = bridge::Bridge {
            shared: shared.clone(),
            rx,
            apps: list
                .iter()
                .map(|s| (s.mount.clone(), s.observer.clone()))
                .collect(),
            asgi: Python::attach(|py| {
                let d = PyDict::new(py);
                let _ = d.set_item("version", "3.0");
                let _ = d.set_item("spec_version", "2.4");
                d.unbind()
            }),
        };
        let lifespans: Vec<bool> = list.iter().map(|s| s.lifespan != Lifespan::Off).collect();
        let (mut reporters, mut receivers) = (Vec::new(), Vec::new());
        for _ in &list {
            let (rtx, rrx) = std::sync::mpsc::channel();
            reporters.push(bridge::Reporter(Mutex::new(rtx)));
            receivers.push(rrx);
        }
        // The loop's own failure reaches the first app's startup wait.
        let loop_failed = reporters[0].0.lock().map(|t| t.clone()).ok();
        let spawn_lifespans = lifespans.clone();
        std::thread::Builder::new()
            .name("asgi-loop".into())
            .spawn(move || {
                use std::os::fd::IntoRawFd as _;
                // The socket object the shim makes owns the descriptor from here on.
                let fd = theirs.into_raw_fd();
                Python::attach(|py| {
                    let run = shim.bind(py).call_method1(
                        "serve",
                        (apps, bridge, fd, spawn_lifespans, uvloop, reporters),
                    );
                    if let (Err(e), Some(tx)) = (run, loop_failed) {
                        let _ = tx.send(("loop".into(), python::format_err(py, &e)));
                    }
                });
            })?;
        let mut out = Vec::with_capacity(list.len());
        for (index, (s, rrx)) in list.into_iter().zip(receivers).enumerate() {
            let spec = s.spec.to_string();
            let lifespan_running = startup(&s, &spec, &rrx)?;
            out.push(AsgiApp {
                shared: shared.clone(),
                index,
                lifespan_running,
                reports: Mutex::new(rrx),
                timeout: s.lifespan_timeout,
                spec,
                sources: sources.clone(),
            });
        }
        Ok(out)
    }

    /// The app's own Python source files (see `reload`).
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// Hands a request to the loop; its events come back on the exchange.
    pub fn submit(&self, head: RequestHead) -> Exchange {
        let rid = self.shared.next.fetch_add(1, Relaxed);
        let (tx, events) = events::channel();
        let credit = Arc::new(Credit::default());
        self.shared.post(Cmd::Start(Box::new((
            rid,
            self.index,
            head,
            tx,
            credit.clone(),
            Instant::now(),
        ))));
        Exchange {
            rid,
            events,
            credit,
        }
    }

    /// A piece of the request body (`more`: not the last).
    pub fn body(&self, rid: u64, data: Bytes, more: bool) {
        self.shared.post(Cmd::Body { rid, data, more });
    }

    /// The client left, or the response is complete: `receive` returns `http.disconnect`.
    pub fn disconnect(&self, rid: u64) {
        self.shared.post(Cmd::Disconnect(rid));
    }

    /// A message from the WebSocket client.
    pub fn ws_message(&self, rid: u64, data: WsData) {
        self.shared.post(Cmd::WsMessage { rid, data });
    }

    /// The WebSocket client closed (or went) with `code`: `receive` returns
    /// `websocket.disconnect`.
    pub fn ws_disconnect(&self, rid: u64, code: u16) {
        self.shared.post(Cmd::WsDisconnect { rid, code });
    }

    /// Cancels the request's task (request_timeout).
    pub fn cancel(&self, rid: u64) {
        self.shared.post(Cmd::Cancel(rid));
    }

    /// The cell passed `n` response bytes on to the client.
    pub fn sent(&self, x: &Exchange, n: usize) {
        if x.credit.release(n) {
            self.shared.post(Cmd::Resume(x.rid));
        }
    }

    /// Runs the lifespan shutdown (when startup completed) and waits for it, up to the
    /// lifespan timeout. Blocks: called as the cell stops.
    pub fn shutdown(&self) {
        if !self.lifespan_running {
            return;
        }
        self.shared.post(Cmd::Shutdown(self.index));
        let rx = self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match rx.recv_timeout(self.timeout) {
            Ok((_, text)) if text.is_empty() => {}
            Ok((_, text)) => tracing::error!(
                "ASGI application {}: lifespan shutdown failed:\n{}",
                self.spec,
                text.trim_end()
            ),
            Err(_) => tracing::warn!(
                "ASGI application {}: no lifespan.shutdown.complete within {:?}",
                self.spec,
                self.timeout
            ),
        }
    }
}

/// Waits for the app's lifespan startup; Ok(true): its lifespan scope runs (and shutdown will
/// wait for it).
fn startup(
    s: &AsgiSettings,
    spec: &str,
    rrx: &std::sync::mpsc::Receiver<(String, String)>,
) -> Result<bool, AppError> {
    let fail = |message: String| AppError::Lifespan {
        spec: spec.to_string(),
        message,
    };
    let (kind, text) = rrx.recv_timeout(s.lifespan_timeout).map_err(|_| {
        fail(format!(
            "no answer to lifespan.startup within {:?}",
            s.lifespan_timeout
        ))
    })?;
    match kind.as_str() {
        "started" => Ok(s.lifespan != Lifespan::Off),
        "failed" => Err(fail(format!("lifespan.startup.failed: {text}"))),
        "raised" | "returned" if s.lifespan == Lifespan::Auto => {
            tracing::info!(
                "ASGI application {spec} does not support the lifespan protocol; going on without it{}",
                if text.is_empty() {
                    String::new()
                } else {
                    format!(":\n{}", text.trim_end())
                }
            );
            Ok(false)
        }
        "raised" => Err(fail(format!(
            "the lifespan startup raised:\n{}",
            text.trim_end()
        ))),
        "returned" => Err(fail(
            "the app returned from the lifespan scope before startup completed".into(),
        )),
        _ => Err(fail(format!("the event loop failed:\n{}", text.trim_end()))),
    }
}

/// The shim module, built once per process and importable as `_portico_asgi`.
fn shim_module(py: Python<'_>) -> PyResult<Py<PyModule>> {
    let modules = py.import("sys")?.getattr("modules")?;
    if let Ok(m) = modules.get_item("_portico_asgi") {
        return Ok(m.cast_into::<PyModule>()?.unbind());
    }
    let code = CString::new(SHIM).expect("the shim has no NUL");
    let m = PyModule::from_code(py, &code, c"<portico-asgi>", c"_portico_asgi")?;
    modules.set_item("_portico_asgi", &m)?;
    Ok(m.unbind())
}
