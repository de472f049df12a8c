//! The interpreter: started once per process, the app imported with the user's sys.path, and the
//! small helper module (timeouts, stacks, file wrapper) that is simplest written in Python.
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Once;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList};

use crate::AppSpec;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The app failed to import or build: the Python traceback, as Python prints it.
    #[error("loading the application {spec} failed:\n{traceback}")]
    Import { spec: String, traceback: String },
    #[error("the application {spec} is not callable (got {kind})")]
    NotCallable { spec: String, kind: String },
    /// An ASGI app's lifespan startup failed (`lifespan.startup.failed`, or it raised with
    /// `lifespan = "on"`).
    #[error("ASGI application {spec}: {message}")]
    Lifespan { spec: String, message: String },
    #[error("starting a WSGI thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Python source of the helper module `_portico`.
const HELPER: &str = r#"
import ctypes, sys, traceback, os, stat

class RequestTimeout(BaseException):
    """Raised inside a request's thread when it runs past request_timeout.

    A BaseException (like KeyboardInterrupt), so an application's `except Exception`
    does not swallow it and keep the thread busy."""

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)

def interrupt(tid):
    return _set_async_exc(tid, RequestTimeout)

def clear_interrupt(tid):
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)

def stack(tid):
    frame = sys._current_frames().get(tid)
    if frame is None:
        return "  (no Python frame: the thread is in C code or between requests)\n"
    return "".join(traceback.format_stack(frame))

def format_exception(etype, value, tb):
    return "".join(traceback.format_exception(etype, value, tb))

class FileWrapper:
    """wsgi.file_wrapper: a regular file is sent by the server without a copy; anything
    else with read() is iterated in blocks."""
    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close
    def __iter__(self):
        return self
    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration

def regular_file(wrapper):
    """(fd, offset, size) when the wrapped object is a regular file, else None."""
    f = wrapper.filelike
    try:
        fd = f.fileno()
        st = os.fstat(fd)
    except Exception:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        offset = f.tell()
    except Exception:
        offset = 0
    return fd, offset, st.st_size

def load_script(path):
    import runpy
    ns = runpy.run_path(path, run_name="_portico_wsgi_script")
    if "application" not in ns:
        raise AttributeError(f"{path} defines no 'application'")
    return ns["application"]

def load_paste(path, name):
    """Like gunicorn's and uWSGI's --paste: the file's logging first, then the app (with its
    filters and pipelines) from PasteDeploy. Its [server:*] sections are not used."""
    import configparser, logging.config, os
    here = os.path.dirname(path)
    defaults = {"here": here, "__file__": path}
    parser = configparser.ConfigParser(defaults=defaults)
    with open(path, encoding="utf-8") as f:
        parser.read_file(f)
    if parser.has_section("loggers"):
        logging.config.fileConfig(path, defaults=defaults, disable_existing_loggers=False)
    try:
        from paste.deploy import loadapp
    except ImportError as e:
        raise ImportError(
            f"{path}: PasteDeploy is not importable here (pip install PasteDeploy in the app's venv): {e}"
        ) from e
    return loadapp("config:" + path, name=name, relative_to=here, global_conf=dict(defaults))

def resolve(module, attr):
    import importlib
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
"#;

static INIT: Once = Once::new();

/// Starts the interpreter once per process (pyo3's auto-initialize is off: the cell decides when).
pub fn init() {
    INIT.call_once(|| {
        Python::initialize();
    });
}

/// "3.11.7 (main, ...)" for logs and build info.
pub fn interpreter_version() -> String {
    init();
    Python::attach(|py| py.version().to_string())
}

static HELPER_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The helper module, built once per process (threads starting together must not see it half
/// executed).
pub(crate) fn helper(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    HELPER_MODULE
        .get_or_try_init(py, || {
            let code = CString::new(HELPER).expect("helper has no NUL");
            let m = PyModule::from_code(py, &code, c"<portico>", c"_portico")?;
            // Importable by apps: `from _portico import RequestTimeout`.
            py.import("sys")?
                .getattr("modules")?
                .set_item("_portico", &m)?;
            Ok::<_, PyErr>(m.unbind())
        })
        .map(|m| m.bind(py).clone())
}

/// The traceback of `err` as Python prints it.
pub fn format_err(py: Python<'_>, err: &PyErr) -> String {
    helper(py)
        .and_then(|h| {
            h.call_method1(
                "format_exception",
                (err.get_type(py), err.value(py), err.traceback(py)),
            )
        })
        .and_then(|s| s.extract::<String>())
        .unwrap_or_else(|_| format!("{err}\n"))
}

/// Where an app's modules come from.
#[derive(Debug)]
pub struct LoadPaths<'a> {
    pub base_dir: &'a Path,
    pub python_path: &'a [PathBuf],
    pub venv: Option<&'a Path>,
}

/// site-packages of a virtualenv for this interpreter's version.
fn venv_site_packages(py: Python<'_>, venv: &Path) -> PathBuf {
    let v = py.version_info();
    venv.join("lib")
        .join(format!("python{}.{}", v.major, v.minor))
        .join("site-packages")
}

/// Imports the application: sys.path gets the base directory, `python_path` and the venv's
/// site-packages first (like gunicorn's --chdir/--pythonpath and mod_wsgi's python-home).
pub fn load_app(
    py: Python<'_>,
    spec: &AppSpec,
    paths: &LoadPaths<'_>,
) -> Result<Py<PyAny>, AppError> {
    let spec_text = spec.to_string();
    let import_err = |e: PyErr| AppError::Import {
        spec: spec_text.clone(),
        traceback: format_err(py, &e),
    };
    let run = || -> PyResult<Bound<'_, PyAny>> {
        let sys = py.import("sys")?;
        let path = sys.getattr("path")?.cast_into::<PyList>()?;
        let mut front: Vec<String> = Vec::new();
        for p in paths.python_path {
            front.push(paths.base_dir.join(p).to_string_lossy().into_owned());
        }
        front.push(paths.base_dir.to_string_lossy().into_owned());
        for p in front.iter().rev() {
            if !path.contains(p)? {
                path.insert(0, p)?;
            }
        }
        let venv = paths
            .venv
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("VIRTUAL_ENV").map(PathBuf::from));
        if let Some(v) = venv {
            let sp = venv_site_packages(py, &paths.base_dir.join(v));
            let site = py.import("site")?;
            // addsitedir appends (and processes .pth files); move what it added to the front,
            // after the app's own directories, so the venv wins over the base interpreter.
            let before = path.len();
            site.call_method1("addsitedir", (sp.to_string_lossy().as_ref(),))?;
            let added: Vec<Bound<'_, PyAny>> = (before..path.len())
                .filter_map(|i| path.get_item(i).ok())
                .collect();
            for _ in before..path.len() {
                path.del_item(before)?;
            }
            for (k, item) in added.into_iter().enumerate() {
                path.insert(front.len() + k, item)?;
            }
        }
        let h = helper(py)?;
        Ok(match spec {
            AppSpec::Callable { module, attr } => h.call_method1("resolve", (module, attr))?,
            AppSpec::Factory { module, attr } => {
                h.call_method1("resolve", (module, attr))?.call0()?
            }
            AppSpec::Script(p) => {
                let p = paths.base_dir.join(p);
                h.call_method1("load_script", (p.to_string_lossy().as_ref(),))?
            }
            AppSpec::Paste { path, name } => {
                let p = paths.base_dir.join(path);
                h.call_method1("load_paste", (p.to_string_lossy().as_ref(), name))?
            }
        })
    };
    let app = run().map_err(import_err)?;
    if !app.is_callable() {
        return Err(AppError::NotCallable {
            spec: spec_text,
            kind: app
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default(),
        });
    }
    Ok(app.unbind())
}

/// Files of the modules the app loaded from outside the interpreter's own prefixes and
/// site-packages: what `reload = true` watches.
pub fn app_source_files(py: Python<'_>) -> Vec<PathBuf> {
    let run = || -> PyResult<Vec<PathBuf>> {
        let code = c"
import sys, sysconfig, os
_skip = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib'])}
def _files():
    out = []
    for m in list(sys.modules.values()):
        f = getattr(m, '__file__', None)
        if not f or not f.endswith('.py'):
            continue
        r = os.path.realpath(f)
        if 'site-packages' in r or any(r.startswith(s + os.sep) for s in _skip):
            continue
        out.append(r)
    return out
";
        let ns = PyDict::new(py);
        py.run(code, Some(&ns), None)?;
        let f = ns.get_item("_files")?.expect("defined above");
        f.call0()?.extract::<Vec<PathBuf>>()
    };
    run().unwrap_or_default()
}
