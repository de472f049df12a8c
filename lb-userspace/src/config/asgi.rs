//! ASGI routes (`asgi = { app = "mysite.asgi:application" }`): the table, its defaults, and
//! its checks (called from `validate`, like the WSGI route's).
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{Dur, Size};

/// Whether the app's `lifespan` scope runs (ASGI's startup and shutdown events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LifespanMode {
    /// Run it; an app that raises before startup does not support it (logged once).
    #[default]
    Auto,
    /// Run it; any failure stops the cell.
    On,
    Off,
}

/// The asyncio event loop implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EventLoop {
    #[default]
    Asyncio,
    /// uvloop, which must be installed in the app's environment.
    Uvloop,
}

/// An ASGI application mounted at a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsgiConfig {
    /// `module:attr` or `module:factory()`.
    pub app: Option<String>,
    pub lifespan: LifespanMode,
    /// Requests running at once per cell; beyond it: 503.
    pub max_concurrency: i64,
    /// Prefix a proxy in front strips: added to `root_path` and `path` in the scope.
    pub root_path: String,
    #[serde(rename = "loop")]
    pub event_loop: EventLoop,
    /// Directory the app is imported from (sys.path[0]); default: the config's base directory.
    pub chdir: Option<PathBuf>,
    /// Prepended to sys.path.
    pub python_path: Vec<PathBuf>,
    /// A virtualenv whose site-packages are used (default: $VIRTUAL_ENV when set).
    pub venv: Option<PathBuf>,
    /// Longest run of one request; then its task is cancelled and the client gets 504.
    pub request_timeout: Dur,
    /// Largest WebSocket message (after reassembly) a client may send; beyond it: close 1009.
    pub websocket_max_message: Size,
    /// A WebSocket with no message either way for this long closes with 1001 (None: never).
    pub websocket_idle_timeout: Option<Dur>,
    /// Recycle a cell after this many requests to its apps (0: never), as for WSGI.
    pub max_requests: u64,
    /// Up to this many more, chosen per cell, so cells do not recycle together.
    pub max_requests_jitter: u64,
    /// Recycle a cell whose resident memory exceeds this many MiB (0: never).
    pub max_rss: u64,
    /// Recycle a cell after it has run this long.
    pub lifetime: Option<Dur>,
    /// Peers whose X-Forwarded-* headers are believed (CIDR blocks or addresses).
    pub trusted_proxies: Vec<String>,
    /// Development: replace the cells when one of the app's Python files changes.
    pub reload: bool,
}

impl Default for AsgiConfig {
    fn default() -> Self {
        Self {
            app: None,
            lifespan: LifespanMode::Auto,
            max_concurrency: 1000,
            root_path: String::new(),
            event_loop: EventLoop::Asyncio,
            chdir: None,
            python_path: Vec::new(),
            venv: None,
            request_timeout: Dur(Duration::from_secs(30)),
            websocket_max_message: Size(16 << 20),
            websocket_idle_timeout: None,
            max_requests: 0,
            max_requests_jitter: 0,
            max_rss: 0,
            lifetime: None,
            trusted_proxies: Vec::new(),
            reload: false,
        }
    }
}

impl AsgiConfig {
    /// The application, parsed (validate() has checked it).
    pub fn spec(&self) -> Option<wsgi_worker::AppSpec> {
        self.app.as_deref()?.parse().ok()
    }
}

/// Checks one ASGI route and makes its paths absolute.
pub(super) fn validate(
    a: &mut AsgiConfig,
    base: &Path,
    key: &dyn Fn(&str) -> String,
    bad: &mut dyn FnMut(String, String),
) {
    match &a.app {
        None => bad(
            key("asgi.app"),
            "is required (module:attr or module:factory())".into(),
        ),
        Some(s) => match s.parse::<wsgi_worker::AppSpec>() {
            Ok(wsgi_worker::AppSpec::Callable { .. } | wsgi_worker::AppSpec::Factory { .. }) => {}
            Ok(_) => bad(
                key("asgi.app"),
                format!("{s:?}: an ASGI app is named module:attr or module:factory()"),
            ),
            Err(e) => bad(key("asgi.app"), e.to_string()),
        },
    }
    let dir = match &a.chdir {
        Some(c) => {
            let d = base.join(c);
            if !d.is_dir() {
                bad(
                    key("asgi.chdir"),
                    format!("{} is not a directory", d.display()),
                );
            }
            d
        }
        None => base.to_path_buf(),
    };
    a.chdir = Some(dir.clone());
    for (j, p) in a.python_path.iter_mut().enumerate() {
        let abs = dir.join(&*p);
        if !abs.is_dir() {
            bad(
                key(&format!("asgi.python_path[{j}]")),
                format!("{} is not a directory", abs.display()),
            );
        }
        *p = abs;
    }
    if let Some(v) = &a.venv {
        let abs = dir.join(v);
        if !abs.join("pyvenv.cfg").is_file() {
            bad(
                key("asgi.venv"),
                format!("{} is not a virtualenv (no pyvenv.cfg)", abs.display()),
            );
        }
        a.venv = Some(abs);
    }
    if !(1..=1_000_000).contains(&a.max_concurrency) {
        bad(
            key("asgi.max_concurrency"),
            format!("{} is out of range (1..=1000000)", a.max_concurrency),
        );
    }
    if !a.root_path.is_empty() && (!a.root_path.starts_with('/') || a.root_path.ends_with('/')) {
        bad(
            key("asgi.root_path"),
            format!(
                "{:?} must start with '/' and not end with one (e.g. \"/api\")",
                a.root_path
            ),
        );
    }
    if a.request_timeout.0.is_zero() {
        bad(key("asgi.request_timeout"), "must be more than 0".into());
    }
    if a.websocket_idle_timeout.is_some_and(|d| d.0.is_zero()) {
        bad(
            key("asgi.websocket_idle_timeout"),
            "must be more than 0 (leave it out to disable)".into(),
        );
    }
    for (j, p) in a.trusted_proxies.iter().enumerate() {
        if let Err(e) = super::units::parse_cidr(p) {
            bad(key(&format!("asgi.trusted_proxies[{j}]")), e);
        }
    }
    if !(1..=1 << 30).contains(&a.websocket_max_message.0) {
        bad(
            key("asgi.websocket_max_message"),
            format!("{} is out of range (1..=1G)", a.websocket_max_message.0),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn asgi_routes_are_validated() {
        let text = r#"
[[route]]
prefix = "/"
asgi = { app = "site/app.py", max_concurrency = 0, root_path = "api/", request_timeout = "0s", websocket_idle_timeout = "0s", lifetime = "0s", trusted_proxies = ["10.0.0.0/99"] }
[[route]]
prefix = "/b/"
asgi = { }
[[route]]
prefix = "/c/"
asgi = { app = "mysite.asgi:application", lifespan = "on", loop = "uvloop" }
"#;
        let mut cfg = Config::parse(text, "t.toml").unwrap();
        let keys: Vec<String> = cfg
            .validate()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(
            keys,
            [
                "route[0].asgi.app",
                "route[0].asgi.max_concurrency",
                "route[0].asgi.root_path",
                "route[0].asgi.request_timeout",
                "route[0].asgi.websocket_idle_timeout",
                "route[0].asgi.trusted_proxies[0]",
                "route[0].asgi.lifetime",
                "route[1].asgi.app",
                "route.asgi.loop",
            ]
        );
        let c = cfg.routes[2].asgi.as_ref().unwrap();
        assert_eq!(c.lifespan, crate::config::LifespanMode::On);
        assert_eq!(c.event_loop, crate::config::EventLoop::Uvloop);
        assert_eq!(c.max_concurrency, 1000);
        assert_eq!(c.websocket_idle_timeout, None, "off unless set");
        assert_eq!(
            (c.max_requests, c.max_rss, c.lifetime),
            (0, 0, None),
            "as WSGI's"
        );
    }
}
