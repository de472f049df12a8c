//! The configuration's shape: the serde structs and enums, with the defaults a missing key gets.
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::asgi::AsgiConfig;
use super::limits::LimitsConfig;
use super::proxy::{ProxyConfig, UpstreamConfig};
use super::tls::{RedirectHttps, TlsConfig};
use super::units::{Dur, ListenAddr};

/// `workers = "auto"` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(untagged)]
pub enum Workers {
    #[default]
    #[serde(with = "auto_str")]
    Auto,
    Count(i64),
}

mod auto_str {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("auto")
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        let s = String::deserialize(d)?;
        if s == "auto" {
            Ok(())
        } else {
            Err(serde::de::Error::custom(format!(
                "expected \"auto\" or a number, got {s:?}"
            )))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: Vec<ListenAddr>,
    pub workers: Workers,
    /// `host:port` or `"off"`.
    pub admin: String,
    pub chdir: Option<PathBuf>,
    pub backlog: i64,
    pub shutdown_timeout: Dur,
    /// TCP_DEFER_ACCEPT on TCP listeners (nginx's `deferred`): a connection is accepted once
    /// its request has arrived, which spares a read and a wake-up per new connection.
    pub defer_accept: bool,
    /// The account the cells (and the app import check) run as when started as root.
    pub user: Option<String>,
    /// Its group; None: the user's primary group.
    pub group: Option<String>,
    /// A file with the admin endpoint's bearer token; every admin request must carry it.
    pub admin_token_file: Option<PathBuf>,
    /// A plain listener that answers every request with a redirect to https.
    pub redirect_https: Option<RedirectHttps>,
    /// HTTP/2 with prior knowledge (h2c) on plain TCP listeners: a connection that opens with
    /// the HTTP/2 preface speaks HTTP/2, any other HTTP/1.
    pub h2c: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:8080".parse().expect("static")],
            workers: Workers::Auto,
            admin: DEFAULT_ADMIN.into(),
            chdir: None,
            backlog: 4096,
            shutdown_timeout: Dur(Duration::from_secs(30)),
            defer_accept: true,
            user: None,
            group: None,
            admin_token_file: None,
            redirect_https: None,
            h2c: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Combined,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "combined" => Ok(LogFormat::Combined),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not a log format (combined, json)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"-"` (stdout), `"off"`, or a file path.
    pub access_log: String,
    pub format: LogFormat,
    /// Error log filter for `tracing` (RUST_LOG syntax), e.g. `info` or `portico=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            access_log: "-".into(),
            format: LogFormat::Combined,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EbpfMode {
    /// Use eBPF when the kernel and privileges allow; otherwise plain SO_REUSEPORT with a warning.
    #[default]
    Auto,
    /// eBPF or refuse to start.
    On,
    /// Never try.
    Off,
}

/// The admin endpoint when the configuration says nothing.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";

/// How the `steering` program picks a cell for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SteeringPolicy {
    /// The cell pinned to the CPU that processed the SYN (the default: best throughput and
    /// p99 in `cargo xtask bench steering`, and NIC queue, socket and app stay on one core).
    #[default]
    Cpu,
    /// The kernel's flow hash over the live cells.
    Hash,
    /// The local cell or a hashed one, whichever has less load (connections + Python requests).
    LeastLoaded,
    /// No program: plain SO_REUSEPORT (for comparison).
    Kernel,
}

impl SteeringPolicy {
    /// The `lb_common::steering` policy constant (None for `kernel`).
    pub fn program_value(self) -> Option<u32> {
        match self {
            SteeringPolicy::Cpu => Some(lb_common::steering::POLICY_CPU),
            SteeringPolicy::Hash => Some(lb_common::steering::POLICY_HASH),
            SteeringPolicy::LeastLoaded => Some(lb_common::steering::POLICY_LEAST_LOADED),
            SteeringPolicy::Kernel => None,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            SteeringPolicy::Cpu => "cpu",
            SteeringPolicy::Hash => "hash",
            SteeringPolicy::LeastLoaded => "least-loaded",
            SteeringPolicy::Kernel => "kernel",
        }
    }
}

impl std::str::FromStr for SteeringPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(SteeringPolicy::Cpu),
            "hash" => Ok(SteeringPolicy::Hash),
            "least-loaded" => Ok(SteeringPolicy::LeastLoaded),
            "kernel" => Ok(SteeringPolicy::Kernel),
            _ => Err(format!(
                "{s:?} is not a steering policy (cpu, hash, least-loaded, kernel)"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    pub mode: EbpfMode,
    pub steering: SteeringPolicy,
    /// Name of the pin directory `/sys/fs/bpf/portico/<instance>`; default: the first TCP
    /// listen port (unique on the host, since Portico holds it).
    pub instance: Option<String>,
    pub xdp: Option<XdpConfig>,
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode when the driver supports it, else generic.
    #[default]
    Auto,
    Native,
    Skb,
}

/// `[ebpf.xdp]`: the XDP guard on one interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    pub interface: String,
    pub mode: XdpMode,
    /// Take the place of an XDP program someone else attached.
    pub replace: bool,
    /// Sources (IPv4/IPv6 CIDRs) whose packets are dropped.
    pub blocklist: Vec<String>,
    /// SYNs per second per source to the listen ports (0: no SYN guard).
    pub syn_rate: u32,
    /// SYNs a source may send at once.
    pub syn_burst: u32,
    /// Spread the listen ports' flows over the cells' CPUs (NICs with one RX queue).
    pub cpu_redirect: bool,
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self {
            interface: String::new(),
            mode: XdpMode::Auto,
            replace: false,
            blocklist: Vec::new(),
            syn_rate: 200,
            syn_burst: 400,
            cpu_redirect: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Per-request histograms (duration by route, WSGI queue wait and app time). The per-cell
    /// counters are always kept: `/healthz` and recycling depend on them.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaticConfig {
    pub root: PathBuf,
    pub cache_control: Option<String>,
    /// nginx `expires`: adds `Expires` and, unless `cache_control` is set, `Cache-Control: max-age`.
    pub expires: Option<Dur>,
    pub index: Vec<String>,
    /// Serve `file.br` / `file.gz` when the client accepts them.
    pub precompressed: bool,
}

impl Default for StaticConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::new(),
            cache_control: None,
            expires: None,
            index: vec!["index.html".into()],
            precompressed: true,
        }
    }
}

/// A WSGI application mounted at a route (`wsgi = { app = "mysite.wsgi:application" }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsgiConfig {
    /// `module:callable` or `module:factory()`.
    pub app: Option<String>,
    /// A WSGI script file whose `application` is the app (mod_wsgi's WSGIScriptAlias).
    pub script: Option<PathBuf>,
    /// A PasteDeploy `.ini` the app is loaded from (gunicorn's and uWSGI's `--paste`).
    pub paste: Option<PathBuf>,
    /// The app, pipeline or composite of `paste` to load (PasteDeploy's default: "main").
    pub app_name: Option<String>,
    /// Directory the app is imported from (sys.path[0]); default: the config's base directory.
    pub chdir: Option<PathBuf>,
    /// Prepended to sys.path.
    pub python_path: Vec<PathBuf>,
    /// A virtualenv whose site-packages are used (default: $VIRTUAL_ENV when set).
    pub venv: Option<PathBuf>,
    /// Like `python -O` (0, 1 or 2); one value per process, so every WSGI route must agree.
    pub optimize: i64,
    /// Extra environ entries (mod_wsgi's wsgi_var).
    pub environ: std::collections::BTreeMap<String, String>,
    /// Python threads per cell for this app.
    pub threads: i64,
    /// Requests waiting for a thread, per cell; beyond it: 503.
    pub max_queue: i64,
    /// Longest wait for a thread; then 503.
    pub queue_timeout: Dur,
    /// Longest run of one request; then RequestTimeout is raised in it and the client gets 504.
    pub request_timeout: Dur,
    /// Time a timed-out request gets to return before its cell is recycled.
    pub request_timeout_grace: Dur,
    /// Recycle a cell after this many requests to this app (0: never).
    pub max_requests: u64,
    /// Up to this many more, chosen per cell, so cells do not recycle together.
    pub max_requests_jitter: u64,
    /// Recycle a cell whose resident memory exceeds this many MiB (0: never).
    pub max_rss: u64,
    /// Recycle a cell after it has run this long.
    pub lifetime: Option<Dur>,
    /// Recycle a cell that has served no request to this app for this long.
    pub inactivity_timeout: Option<Dur>,
    /// Development: replace the cells when one of the app's Python files changes.
    pub reload: bool,
    /// Peers whose X-Forwarded-* headers are believed (CIDR blocks or addresses).
    pub trusted_proxies: Vec<String>,
    /// Pass the Authorization header to the app.
    pub pass_authorization: bool,
    /// Answer Range requests for wsgi.file_wrapper responses (mod_wsgi's wsgi_allow_ranges).
    pub allow_ranges: bool,
}

impl Default for WsgiConfig {
    fn default() -> Self {
        Self {
            app: None,
            script: None,
            paste: None,
            app_name: None,
            chdir: None,
            python_path: Vec::new(),
            venv: None,
            optimize: 0,
            environ: Default::default(),
            threads: DEFAULT_WSGI_THREADS,
            max_queue: 1024,
            queue_timeout: Dur(Duration::from_secs(30)),
            request_timeout: Dur(Duration::from_secs(30)),
            request_timeout_grace: Dur(Duration::from_secs(5)),
            max_requests: 0,
            max_requests_jitter: 0,
            max_rss: 0,
            lifetime: None,
            inactivity_timeout: None,
            reload: false,
            trusted_proxies: Vec::new(),
            pass_authorization: true,
            allow_ranges: false,
        }
    }
}

/// Python threads per cell unless `threads` says otherwise (see README, "Choosing threads").
pub const DEFAULT_WSGI_THREADS: i64 = 1;

/// The app of a `paste` file loaded when `app_name` is not given (PasteDeploy's default).
pub const DEFAULT_PASTE_APP_NAME: &str = "main";

impl WsgiConfig {
    /// The ASGI route for an APP given on the command line as a WSGI one, once it turned out
    /// to be ASGI (`--interface auto`): the settings both kinds share carry over.
    pub fn to_asgi(&self) -> AsgiConfig {
        AsgiConfig {
            app: self.app.clone(),
            chdir: self.chdir.clone(),
            python_path: self.python_path.clone(),
            venv: self.venv.clone(),
            request_timeout: self.request_timeout,
            max_requests: self.max_requests,
            max_requests_jitter: self.max_requests_jitter,
            max_rss: self.max_rss,
            lifetime: self.lifetime,
            trusted_proxies: self.trusted_proxies.clone(),
            reload: self.reload,
            ..AsgiConfig::default()
        }
    }

    /// The application, parsed (validate() has checked it).
    pub fn spec(&self) -> Option<wsgi_worker::AppSpec> {
        match (&self.app, &self.script, &self.paste) {
            (Some(a), None, None) => a.parse().ok(),
            (None, Some(s), None) => Some(wsgi_worker::AppSpec::Script(s.clone())),
            (None, None, Some(p)) => Some(wsgi_worker::AppSpec::Paste {
                path: p.clone(),
                name: self
                    .app_name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_PASTE_APP_NAME.into()),
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    #[serde(rename = "static", default, skip_serializing_if = "Option::is_none")]
    pub static_files: Option<StaticConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wsgi: Option<WsgiConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asgi: Option<AsgiConfig>,
    #[serde(
        default,
        deserialize_with = "super::proxy::deserialize_proxy",
        skip_serializing_if = "Option::is_none"
    )]
    pub proxy: Option<ProxyConfig>,
}

/// The recycling limits of an app route, WSGI or ASGI: what a cell watches itself for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recycling {
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    /// MiB (0: never).
    pub max_rss: u64,
    pub lifetime: Option<Dur>,
    /// WSGI only.
    pub inactivity_timeout: Option<Dur>,
}

impl RouteConfig {
    /// The route's recycling limits; None for a route that runs no app.
    pub fn recycling(&self) -> Option<Recycling> {
        if let Some(w) = &self.wsgi {
            return Some(Recycling {
                max_requests: w.max_requests,
                max_requests_jitter: w.max_requests_jitter,
                max_rss: w.max_rss,
                lifetime: w.lifetime,
                inactivity_timeout: w.inactivity_timeout,
            });
        }
        let a = self.asgi.as_ref()?;
        Some(Recycling {
            max_requests: a.max_requests,
            max_requests_jitter: a.max_requests_jitter,
            max_rss: a.max_rss,
            lifetime: a.lifetime,
            inactivity_timeout: None,
        })
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub ebpf: EbpfConfig,
    pub metrics: MetricsConfig,
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    #[serde(rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// TLS listeners.
    pub tls: Vec<TlsConfig>,
    /// Where the configuration came from (for messages and relative paths); not a key.
    #[serde(skip)]
    pub origin: Option<PathBuf>,
}

impl Config {
    /// The WSGI routes' shared `optimize` level (0 without WSGI routes).
    pub fn python_optimize(&self) -> i64 {
        self.routes
            .iter()
            .filter_map(|r| r.wsgi.as_ref())
            .map(|w| w.optimize)
            .max()
            .unwrap_or(0)
    }

    /// Whether any route runs Python (WSGI or ASGI): the apps are imported before serving.
    pub fn has_python(&self) -> bool {
        self.routes
            .iter()
            .any(|r| r.wsgi.is_some() || r.asgi.is_some())
    }

    /// Number of cells for `workers` and the usable CPUs.
    pub fn cell_count(&self, usable_cpus: usize) -> usize {
        match self.server.workers {
            Workers::Auto => usable_cpus.max(1),
            Workers::Count(n) => n.max(1) as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json_for_cells() {
        let mut cfg = Config::default();
        cfg.routes.push(RouteConfig {
            prefix: "/".into(),
            static_files: Some(StaticConfig {
                root: "/tmp".into(),
                expires: Some(Dur(Duration::from_secs(60))),
                ..Default::default()
            }),
            wsgi: None,
            asgi: None,
            proxy: None,
        });
        cfg.routes.push(RouteConfig {
            prefix: "/app/".into(),
            static_files: None,
            wsgi: Some(WsgiConfig {
                app: Some("site.wsgi:application".into()),
                queue_timeout: Dur(Duration::from_micros(2500)),
                lifetime: Some(Dur(Duration::from_secs(86400))),
                trusted_proxies: vec!["10.0.0.0/8".into()],
                ..Default::default()
            }),
            asgi: None,
            proxy: None,
        });
        cfg.routes.push(RouteConfig {
            prefix: "/api/".into(),
            static_files: None,
            wsgi: None,
            asgi: None,
            proxy: Some(ProxyConfig {
                upstream: "api".into(),
                path: Some("/".into()),
                redirect: crate::config::Redirect::Pairs(vec![("/a".into(), "/b".into())]),
                ..ProxyConfig::from_url(String::new())
            }),
        });
        cfg.routes[2].proxy.as_mut().unwrap().url = None;
        cfg.upstreams.push(UpstreamConfig::single(
            "api".into(),
            "unix:/run/api.sock".parse().unwrap(),
        ));
        let json = serde_json::to_string(&cfg).unwrap();
        let back: Config = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn steering_policies() {
        assert_eq!(
            "least-loaded".parse::<SteeringPolicy>(),
            Ok(SteeringPolicy::LeastLoaded)
        );
        assert!("random".parse::<SteeringPolicy>().is_err());
        assert_eq!(EbpfConfig::default().steering, SteeringPolicy::Cpu);
    }
}
