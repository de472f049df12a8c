//! A pool of Python threads for one WSGI route: a bounded queue in front (full -> 503), a
//! watchdog that interrupts requests running past `request_timeout`, and per-thread state the
//! cell reads without the GIL.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Uri, Version};
use pyo3::prelude::*;
use tokio::sync::oneshot;

use crate::AppSpec;
use crate::environ::{Cidr, ConnInfo};
use crate::objects::BodySource;
use crate::python::{self, AppError, LoadPaths};
use crate::request;
use crate::response::Reply;

/// Everything a pool needs to know about its application.
#[derive(Debug, Clone)]
pub struct Settings {
    pub spec: AppSpec,
    /// Directory for relative paths and sys.path[0] (the route's `chdir`, or the config's).
    pub base_dir: PathBuf,
    pub python_path: Vec<PathBuf>,
    pub venv: Option<PathBuf>,
    /// Extra environ entries (mod_wsgi's wsgi_var).
    pub environ: Vec<(String, String)>,
    /// The mount point without its trailing slash ("" for "/").
    pub script_name: String,
    pub threads: usize,
    pub max_queue: usize,
    pub queue_timeout: Duration,
    pub trusted_proxies: Vec<Cidr>,
    pub pass_authorization: bool,
    /// More than one cell serves this app (wsgi.multiprocess).
    pub multiprocess: bool,
    /// Told of every request's queue wait and run (the cell's metrics).
    pub observer: Option<Arc<dyn Observer>>,
}

/// Receives per-request timings from the Python threads; must not block or allocate.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// A request left the queue for a thread after waiting `wait`.
    fn started(&self, wait: Duration);
    /// The app is done with a request after `run`; `raised`: it failed.
    fn finished(&self, run: Duration, raised: bool);
}

/// One request for the app.
#[derive(Debug)]
pub struct Job {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub conn: Arc<ConnInfo>,
    /// The raw (not yet decoded) path below the mount point, starting with '/' or empty.
    pub path_info: String,
    pub body: Option<BodySource>,
    pub reply: oneshot::Sender<Reply>,
    pub enqueued: Instant,
    /// Set by `Pool::submit`.
    pub id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the request queue is full")]
    QueueFull,
    #[error("the WSGI threads are gone")]
    Closed,
}

/// Counters the cell exports (read without the GIL).
#[derive(Debug, Default)]
pub struct PoolStats {
    pub busy_threads: AtomicUsize,
    pub queue_timeouts: AtomicU64,
    pub request_timeouts: AtomicU64,
    pub app_errors: AtomicU64,
}

struct ThreadState {
    /// Id of the job this thread runs, 0 when idle.
    job: AtomicU64,
    /// Python's thread ident (for the stack dump and the async exception).
    tid: AtomicU64,
    /// The watchdog raised RequestTimeout in this job.
    interrupted: AtomicU64,
}

struct PoolShared {
    workers: Vec<ThreadState>,
    stats: Arc<PoolStats>,
    queue_timeout: Duration,
    stopping: AtomicBool,
}

pub struct Pool {
    tx: crossbeam_channel::Sender<Job>,
    shared: Arc<PoolShared>,
    next_id: AtomicU64,
    watchdog: std::sync::mpsc::Sender<(u64, String)>,
    sources: Vec<PathBuf>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads())
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Imports the app (in the calling thread, so an import error stops the cell before it
    /// serves) and starts its threads.
    pub fn start(s: Settings) -> Result<Pool, AppError> {
        python::init();
        let (app, sources) = Python::attach(|py| -> Result<_, AppError> {
            let app = python::load_app(
                py,
                &s.spec,
                &LoadPaths {
                    base_dir: &s.base_dir,
                    python_path: &s.python_path,
                    venv: s.venv.as_deref(),
                },
            )?;
            let mut sources = python::app_source_files(py);
            // `reload = true` also follows the .ini: a changed pipeline is a changed app.
            if let AppSpec::Paste { path, .. } = &s.spec {
                sources.push(s.base_dir.join(path));
            }
            Ok((app, sources))
        })?;
        let app = Arc::new(app);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(s.max_queue.max(1));
        let shared = Arc::new(PoolShared {
            workers: (0..s.threads)
                .map(|_| ThreadState {
                    job: AtomicU64::new(0),
                    tid: AtomicU64::new(0),
                    interrupted: AtomicU64::new(0),
                })
                .collect(),
            stats: Arc::new(PoolStats::default()),
            queue_timeout: s.queue_timeout,
            stopping: AtomicBool::new(false),
        });
        let settings = Arc::new(s);
        for idx in 0..settings.threads {
            let rx = rx.clone();
            let app = app.clone();
            let shared = shared.clone();
            let settings = settings.clone();
            std::thread::Builder::new()
                .name(format!("wsgi-{idx}"))
                .spawn(move || worker(idx, rx, app, shared, settings))?;
        }
        let (wtx, wrx) = std::sync::mpsc::channel::<(u64, String)>();
        {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("wsgi-watchdog".into())
                .spawn(move || watchdog(wrx, shared))?;
        }
        Ok(Pool {
            tx,
            shared,
            next_id: AtomicU64::new(1),
            watchdog: wtx,
            sources,
        })
    }

    /// Queues a job; returns its id. A full queue is the caller's 503.
    pub fn submit(&self, mut job: Job) -> Result<u64, SubmitError> {
        let id = self.next_id.fetch_add(1, Relaxed);
        job.id = id;
        match self.tx.try_send(job) {
            Ok(()) => Ok(id),
            Err(crossbeam_channel::TrySendError::Full(_)) => Err(SubmitError::QueueFull),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
    }

    /// Asks the watchdog to log the stack of job `id` (the request `what`) and raise
    /// RequestTimeout in it.
    pub fn interrupt(&self, id: u64, what: String) {
        self.shared.stats.request_timeouts.fetch_add(1, Relaxed);
        let _ = self.watchdog.send((id, what));
    }

    /// Whether a thread is still running job `id`.
    pub fn running(&self, id: u64) -> bool {
        self.shared
            .workers
            .iter()
            .any(|w| w.job.load(Relaxed) == id)
    }

    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    pub fn threads(&self) -> usize {
        self.shared.workers.len()
    }

    pub fn stats(&self) -> &PoolStats {
        &self.shared.stats
    }

    /// Python source files of the app (for `reload = true`).
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Relaxed);
    }
}

fn worker(
    idx: usize,
    rx: crossbeam_channel::Receiver<Job>,
    app: Arc<Py<PyAny>>,
    shared: Arc<PoolShared>,
    settings: Arc<Settings>,
) {
    Python::attach(|py| {
        let mut consts = match request::Consts::new(py, &settings) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    "WSGI thread {idx} failed to start:\n{}",
                    python::format_err(py, &e)
                );
                return;
            }
        };
        if let Ok(tid) = py
            .import("threading")
            .and_then(|t| t.call_method0("get_ident"))
            .and_then(|t| t.extract::<u64>())
        {
            shared.workers[idx].tid.store(tid, Relaxed);
        }
        let me = &shared.workers[idx];
        loop {
            let job = match rx.try_recv() {
                Ok(j) => j,
                Err(crossbeam_channel::TryRecvError::Empty) => match py.detach(|| rx.recv()) {
                    Ok(j) => j,
                    Err(_) => return,
                },
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
            };
            if shared.stopping.load(Relaxed) {
                return;
            }
            if job.enqueued.elapsed() > shared.queue_timeout {
                shared.stats.queue_timeouts.fetch_add(1, Relaxed);
                let _ = job.reply.send(Reply::Error {
                    status: http::StatusCode::SERVICE_UNAVAILABLE,
                    retry_after: true,
                });
                continue;
            }
            if job.reply.is_closed() {
                // The client left while the request waited in the queue.
                continue;
            }
            me.job.store(job.id, Relaxed);
            shared.stats.busy_threads.fetch_add(1, Relaxed);
            let id = job.id;
            let began = Instant::now();
            if let Some(o) = &settings.observer {
                o.started(began.saturating_duration_since(job.enqueued));
            }
            let ok = request::run(py, &app, job, &mut consts, &settings);
            if !ok {
                shared.stats.app_errors.fetch_add(1, Relaxed);
            }
            if let Some(o) = &settings.observer {
                o.finished(began.elapsed(), !ok);
            }
            me.job.store(0, Relaxed);
            shared.stats.busy_threads.fetch_sub(1, Relaxed);
            if me.interrupted.load(Relaxed) == id {
                // A RequestTimeout raised too late to fire must not hit the next request.
                let tid = me.tid.load(Relaxed);
                let _ = consts
                    .helper
                    .bind(py)
                    .call_method1("clear_interrupt", (tid,));
                let _ = PyErr::take(py);
            }
        }
    });
}

fn watchdog(rx: std::sync::mpsc::Receiver<(u64, String)>, shared: Arc<PoolShared>) {
    while let Ok((id, what)) = rx.recv() {
        let Some(w) = shared.workers.iter().find(|w| w.job.load(Relaxed) == id) else {
            continue;
        };
        let tid = w.tid.load(Relaxed);
        Python::attach(|py| {
            // Re-checked under the GIL: the thread cannot finish this job in between.
            if w.job.load(Relaxed) != id {
                return;
            }
            let Ok(helper) = python::helper(py) else {
                return;
            };
            let stack = helper
                .call_method1("stack", (tid,))
                .and_then(|s| s.extract::<String>())
                .unwrap_or_default();
            tracing::error!(
                "{what} ran past request_timeout; raising RequestTimeout in its thread. Stack:\n{}",
                stack.trim_end()
            );
            w.interrupted.store(id, Relaxed);
            if let Err(e) = helper.call_method1("interrupt", (tid,)) {
                tracing::error!("could not interrupt the thread: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::BodyOut;

    fn settings(dir: &std::path::Path, module: &str) -> Settings {
        Settings {
            spec: format!("{module}:app").parse().unwrap(),
            base_dir: dir.to_path_buf(),
            python_path: Vec::new(),
            venv: None,
            environ: vec![("EXTRA".into(), "yes".into())],
            script_name: "/mount".into(),
            threads: 1,
            max_queue: 4,
            queue_timeout: Duration::from_secs(5),
            trusted_proxies: Vec::new(),
            pass_authorization: true,
            multiprocess: false,
            observer: None,
        }
    }

    fn pool(dir: &std::path::Path, module: &str, src: &str, threads: usize) -> Pool {
        std::fs::write(dir.join(format!("{module}.py")), src).unwrap();
        Pool::start(Settings {
            threads,
            ..settings(dir, module)
        })
        .unwrap()
    }

    fn job(path: &str) -> (Job, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            method: Method::GET,
            uri: format!("/mount{path}").parse().unwrap(),
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            conn: Arc::new(ConnInfo {
                tls: false,
                remote_ip: None,
                remote_addr: "10.0.0.1".into(),
                remote_port: 1234,
                local_addr: "127.0.0.1".into(),
                local_port: 80,
            }),
            path_info: path.into(),
            body: None,
            reply: tx,
            enqueued: Instant::now(),
            id: 0,
        };
        (job, rx)
    }

    fn body(r: Reply) -> (u16, Vec<u8>) {
        match r {
            Reply::Response(h, BodyOut::Full(chunks)) => (h.status.as_u16(), chunks.concat()),
            Reply::Response(h, _) => (h.status.as_u16(), b"(stream)".to_vec()),
            Reply::Error { status, .. } => (status.as_u16(), Vec::new()),
        }
    }

    #[test]
    fn runs_the_app_with_a_pep_3333_environ() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(
            dir.path(),
            "unit_env_app",
            "def app(e, s):\n    s('200 OK', [('Content-Type', 'text/plain')])\n    return [('%s|%s|%s|%s' % (e['SCRIPT_NAME'], e['PATH_INFO'], e['EXTRA'], e['REMOTE_ADDR'])).encode()]\n",
            1,
        );
        let (j, rx) = job("/a%20b");
        p.submit(j).unwrap();
        let (status, b) = body(rx.blocking_recv().unwrap());
        assert_eq!(status, 200);
        assert_eq!(b, b"/mount|/a b|yes|10.0.0.1");
    }

    #[test]
    fn request_timeout_interrupts_python_code() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(
            dir.path(),
            "unit_slow_app",
            "import time\ndef app(e, s):\n    try:\n        for _ in range(200):\n            time.sleep(0.05)\n    except BaseException as ex:\n        s('200 OK', [])\n        return [type(ex).__name__.encode()]\n    s('200 OK', [])\n    return [b'finished']\n",
            1,
        );
        let (j, rx) = job("/");
        let id = p.submit(j).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.running(id) {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        p.interrupt(id, "GET /".into());
        let (_, b) = body(rx.blocking_recv().unwrap());
        assert_eq!(b, b"RequestTimeout");
        // The thread is free again (it marks itself idle just after replying).
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.running(id) {
            assert!(Instant::now() < deadline, "the thread never came back");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn import_errors_carry_the_traceback() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("unit_broken.py"), "x = (\n").unwrap();
        let err = Pool::start(settings(dir.path(), "unit_broken")).expect_err("import fails");
        let text = err.to_string();
        assert!(
            text.contains("SyntaxError") && text.contains("unit_broken.py"),
            "{text}"
        );
    }
}
