//! Configuration: TOML file + command-line overrides, one `validate()` that reports every
//! problem at once (file, key, why) before anything is bound.
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Exit code for a configuration that does not validate (sysexits EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where it came from: the file path, or "command line".
    pub source: String,
    /// Dotted key, e.g. `route[1].static.root`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.source, self.key, self.message)
    }
}

/// Every problem found, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem{}):",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// A listen address: TCP `host:port` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("{s:?} is not host:port (IP literal, e.g. 127.0.0.1:8080 or [::1]:8080) or unix:/path"))
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ListenAddr> for String {
    fn from(a: ListenAddr) -> String {
        a.to_string()
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

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

/// A duration written as seconds (`30`, `0.5`) or with a unit (`500ms`, `30s`, `5m`, `2h`, `30d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DurationRepr", into = "DurationRepr")]
pub struct Dur(pub Duration);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Int(i64),
    Float(f64),
    Str(String),
}

impl TryFrom<DurationRepr> for Dur {
    type Error = String;
    fn try_from(r: DurationRepr) -> Result<Self, String> {
        match r {
            DurationRepr::Int(n) if n >= 0 => Ok(Dur(Duration::from_secs(n as u64))),
            DurationRepr::Float(f) if f >= 0.0 && f.is_finite() => {
                Ok(Dur(Duration::from_secs_f64(f)))
            }
            DurationRepr::Int(_) | DurationRepr::Float(_) => {
                Err("a duration cannot be negative".into())
            }
            DurationRepr::Str(s) => parse_duration(&s).map(Dur),
        }
    }
}

impl From<Dur> for DurationRepr {
    fn from(d: Dur) -> Self {
        DurationRepr::Str(format!("{}ms", d.0.as_millis()))
    }
}

/// Parses `500ms`, `30s`, `5m`, `2h`, `30d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 500ms, 5m, 2h, 30d)"))?;
    let mult = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    Ok(Duration::from_secs_f64(n * mult))
}

/// A size written as bytes (`1048576`) or with a unit (`64k`, `10M`, `1GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "SizeRepr")]
pub struct Size(pub u64);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Int(i64),
    Str(String),
}

impl TryFrom<SizeRepr> for Size {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<Self, String> {
        match r {
            SizeRepr::Int(n) if n >= 0 => Ok(Size(n as u64)),
            SizeRepr::Int(_) => Err("a size cannot be negative".into()),
            SizeRepr::Str(s) => parse_size(&s).map(Size),
        }
    }
}

impl From<Size> for SizeRepr {
    fn from(s: Size) -> Self {
        SizeRepr::Int(s.0 as i64)
    }
}

/// Parses `1024`, `64k`, `10M`, `1G` (also `KiB`, `MB`...: all binary multiples, as nginx).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 10M, 64k, 1048576)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (k, M, G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest request target; longer gets 414.
    pub max_uri_length: Size,
    /// Request line + headers; larger gets 431.
    pub max_header_size: Size,
    /// Most header fields; more gets 431.
    pub max_headers: i64,
    /// Largest request body; larger gets 413.
    pub max_body_size: Size,
    /// Time to receive a complete request head; then 408 and close.
    pub header_timeout: Dur,
    /// Idle time allowed between requests on a keep-alive connection.
    pub keepalive_timeout: Dur,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_uri_length: Size(8192),
            max_header_size: Size(32 * 1024),
            max_headers: 100,
            max_body_size: Size(10 << 20),
            header_timeout: Dur(Duration::from_secs(30)),
            keepalive_timeout: Dur(Duration::from_secs(75)),
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

impl WsgiConfig {
    /// The application, parsed (validate() has checked it).
    pub fn spec(&self) -> Option<wsgi_worker::AppSpec> {
        match (&self.app, &self.script) {
            (Some(a), None) => a.parse().ok(),
            (None, Some(s)) => Some(wsgi_worker::AppSpec::Script(s.clone())),
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
    /// Where the configuration came from (for messages and relative paths); not a key.
    #[serde(skip)]
    pub origin: Option<PathBuf>,
}

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub app: Option<String>,
    /// `--threads`, `--request-timeout`, `--max-requests`, `--reload`, `--python-path`,
    /// `--venv`: applied to the app given as APP.
    pub threads: Option<i64>,
    pub request_timeout: Option<String>,
    pub max_requests: Option<u64>,
    pub reload: bool,
    pub python_path: Vec<PathBuf>,
    pub venv: Option<PathBuf>,
    pub listen: Vec<String>,
    pub statics: Vec<String>,
    pub workers: Option<String>,
    pub admin: Option<String>,
    pub chdir: Option<PathBuf>,
    pub access_log: Option<String>,
    pub log_format: Option<String>,
    pub steering: Option<SteeringPolicy>,
}

impl Config {
    /// Parses TOML, collecting an error for each section that does not deserialize (and for each
    /// unknown top-level key) instead of stopping at the first.
    #[cfg(test)]
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigErrors> {
        let (cfg, errors) = Config::parse_lenient(text, source);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Like `parse`, but keeps defaults for the sections that failed, so `validate()` can still
    /// report the problems in the others.
    pub fn parse_lenient(text: &str, source: &str) -> (Config, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                let err = ConfigError {
                    source: source.into(),
                    key: "(syntax)".into(),
                    message: e.message().to_string() + &span_hint(text, e.span()),
                };
                return (Config::default(), vec![err]);
            }
        };
        let mut cfg = Config::default();
        for (key, value) in table {
            let mut push = |k: String, e: toml::de::Error| {
                errors.push(ConfigError {
                    source: source.into(),
                    key: k,
                    message: e.message().trim().to_string(),
                })
            };
            match key.as_str() {
                "server" => match value.try_into() {
                    Ok(v) => cfg.server = v,
                    Err(e) => push(key, e),
                },
                "limits" => match value.try_into() {
                    Ok(v) => cfg.limits = v,
                    Err(e) => push(key, e),
                },
                "log" => match value.try_into() {
                    Ok(v) => cfg.log = v,
                    Err(e) => push(key, e),
                },
                "ebpf" => match value.try_into() {
                    Ok(v) => cfg.ebpf = v,
                    Err(e) => push(key, e),
                },
                "metrics" => match value.try_into() {
                    Ok(v) => cfg.metrics = v,
                    Err(e) => push(key, e),
                },
                "route" => match value {
                    toml::Value::Array(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            match item.try_into::<RouteConfig>() {
                                Ok(r) => cfg.routes.push(r),
                                Err(e) => push(format!("route[{i}]"), e),
                            }
                        }
                    }
                    _ => errors.push(ConfigError {
                        source: source.into(),
                        key,
                        message: "must be an array of tables ([[route]])".into(),
                    }),
                },
                _ => errors.push(ConfigError {
                    source: source.into(),
                    key,
                    message: "unknown section (expected server, limits, log, ebpf, metrics, route)"
                        .into(),
                }),
            }
        }
        (cfg, errors)
    }

    /// Reads and parses a file (leniently: see `parse_lenient`).
    pub fn load(path: &Path) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                source: source.clone(),
                key: "(file)".into(),
                message: e.to_string(),
            }])
        })?;
        let (mut cfg, errors) = Config::parse_lenient(&text, &source);
        cfg.origin = Some(path.to_path_buf());
        Ok((cfg, errors))
    }

    /// File (if any) + overrides + validation: the configuration, or every problem at once.
    pub fn resolve(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let (mut cfg, mut errors) = match path {
            Some(p) => Config::load(p)?,
            None => (Config::default(), Vec::new()),
        };
        errors.extend(cfg.apply(overrides));
        if let Err(e) = cfg.validate() {
            errors.extend(e.0);
        }
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Applies command-line overrides; values that do not parse become errors.
    pub fn apply(&mut self, o: &Overrides) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut bad = |key: &str, message: String| {
            errors.push(ConfigError {
                source: "command line".into(),
                key: key.into(),
                message,
            })
        };
        if let Some(app) = &o.app {
            let mut w = WsgiConfig::default();
            match app.parse::<wsgi_worker::AppSpec>() {
                Err(e) => bad("APP", e.to_string()),
                Ok(wsgi_worker::AppSpec::Script(p)) => w.script = Some(absolute(&p)),
                Ok(_) => w.app = Some(app.clone()),
            }
            if let Some(t) = o.threads {
                w.threads = t;
            }
            if let Some(t) = &o.request_timeout {
                match parse_duration(t) {
                    Ok(d) => w.request_timeout = Dur(d),
                    Err(e) => bad("--request-timeout", e),
                }
            }
            if let Some(m) = o.max_requests {
                w.max_requests = m;
            }
            w.reload = o.reload;
            w.python_path = o.python_path.iter().map(|p| absolute(p)).collect();
            w.venv = o.venv.as_deref().map(absolute);
            if w.chdir.is_none() && self.server.chdir.is_none() && o.chdir.is_none() {
                // Like gunicorn: the app is imported from the directory portico was started in.
                w.chdir = std::env::current_dir().ok();
            }
            self.routes.retain(|r| r.prefix != "/");
            self.routes.push(RouteConfig {
                prefix: "/".into(),
                static_files: None,
                wsgi: Some(w),
            });
        } else if o.threads.is_some()
            || o.request_timeout.is_some()
            || o.max_requests.is_some()
            || o.reload
            || !o.python_path.is_empty()
            || o.venv.is_some()
        {
            bad(
                "APP",
                "--threads, --request-timeout, --max-requests, --reload, --python-path and --venv apply to an APP given on the command line".into(),
            );
        }
        if !o.listen.is_empty() {
            let mut listen = Vec::new();
            for l in &o.listen {
                match l.parse() {
                    Ok(a) => listen.push(a),
                    Err(e) => bad("--listen", e),
                }
            }
            self.server.listen = listen;
        }
        for s in &o.statics {
            match s.split_once('=') {
                Some((prefix, dir)) if !prefix.is_empty() && !dir.is_empty() => {
                    let root = absolute(Path::new(dir));
                    self.routes.retain(|r| r.prefix != prefix);
                    self.routes.push(RouteConfig {
                        prefix: prefix.to_string(),
                        static_files: Some(StaticConfig {
                            root,
                            ..StaticConfig::default()
                        }),
                        wsgi: None,
                    });
                }
                _ => bad(
                    "--static",
                    format!("{s:?} is not PREFIX=DIR (e.g. /static/=./static)"),
                ),
            }
        }
        if let Some(w) = &o.workers {
            match w.as_str() {
                "auto" => self.server.workers = Workers::Auto,
                n => match n.parse::<i64>() {
                    Ok(n) => self.server.workers = Workers::Count(n),
                    Err(_) => bad("--workers", format!("{w:?} is not a number or \"auto\"")),
                },
            }
        }
        if let Some(p) = o.steering {
            self.ebpf.steering = p;
        }
        if let Some(a) = &o.admin {
            self.server.admin = a.clone();
        }
        if let Some(c) = &o.chdir {
            self.server.chdir = Some(c.clone());
        }
        if let Some(l) = &o.access_log {
            self.log.access_log = l.clone();
        }
        if let Some(f) = &o.log_format {
            match f.parse() {
                Ok(f) => self.log.format = f,
                Err(e) => bad("--log-format", e),
            }
        }
        errors
    }

    /// Directory that relative paths in the file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        if let Some(c) = &self.server.chdir {
            return c.clone();
        }
        match self.origin.as_ref().and_then(|p| p.parent()) {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Checks every value and makes paths absolute. Returns every problem found.
    pub fn validate(&mut self) -> Result<(), ConfigErrors> {
        let source = self
            .origin
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "command line".into());
        let mut errors = Vec::new();
        let mut bad = |key: String, message: String| {
            errors.push(ConfigError {
                source: source.clone(),
                key,
                message,
            })
        };

        if let Some(c) = &self.server.chdir
            && !c.is_dir()
        {
            bad(
                "server.chdir".into(),
                format!("{} is not a directory", c.display()),
            );
        }
        if self.server.listen.is_empty() {
            bad(
                "server.listen".into(),
                "at least one listen address is needed".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, l) in self.server.listen.iter().enumerate() {
            if !seen.insert(l.clone()) {
                bad(
                    format!("server.listen[{i}]"),
                    format!("{l} is listed twice"),
                );
            }
        }
        if let Workers::Count(n) = self.server.workers
            && !(1..=lb_common::MAX_CELLS as i64).contains(&n)
        {
            bad(
                "server.workers".into(),
                format!(
                    "{n} is out of range (1..={} or \"auto\")",
                    lb_common::MAX_CELLS
                ),
            );
        }
        if self.server.admin != "off" && self.server.admin.parse::<SocketAddr>().is_err() {
            bad(
                "server.admin".into(),
                format!("{:?} is not host:port or \"off\"", self.server.admin),
            );
        }
        validate_ebpf(&self.ebpf, &mut bad);
        if !(1..=65535).contains(&self.server.backlog) {
            bad(
                "server.backlog".into(),
                format!("{} is out of range (1..=65535)", self.server.backlog),
            );
        }

        let l = &self.limits;
        if l.max_uri_length.0 < 64 {
            bad(
                "limits.max_uri_length".into(),
                "must be at least 64 bytes".into(),
            );
        }
        if l.max_header_size.0 < 1024 {
            bad(
                "limits.max_header_size".into(),
                "must be at least 1k".into(),
            );
        }
        if l.max_uri_length.0 + l.max_header_size.0 > 16 << 20 {
            bad(
                "limits.max_header_size".into(),
                "max_uri_length + max_header_size must stay under 16M".into(),
            );
        }
        if !(1..=1000).contains(&l.max_headers) {
            bad(
                "limits.max_headers".into(),
                format!("{} is out of range (1..=1000)", l.max_headers),
            );
        }
        if l.header_timeout.0.is_zero() {
            bad("limits.header_timeout".into(), "must be more than 0".into());
        }
        if l.keepalive_timeout.0.is_zero() {
            bad(
                "limits.keepalive_timeout".into(),
                "must be more than 0".into(),
            );
        }
        if self.log.access_log.is_empty() {
            bad(
                "log.access_log".into(),
                "use \"-\" for stdout, \"off\", or a file path".into(),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            bad("log.level".into(), format!("{:?}: {e}", self.log.level));
        }

        let base = self.base_dir();
        if !matches!(self.log.access_log.as_str(), "-" | "off") {
            let p = base.join(&self.log.access_log);
            match p.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => bad(
                    "log.access_log".into(),
                    format!("directory {} does not exist", dir.display()),
                ),
                _ => self.log.access_log = p.to_string_lossy().into_owned(),
            }
        }

        if self.routes.len() > crate::metrics::MAX_ROUTES {
            bad(
                "route".into(),
                format!(
                    "{} routes; at most {} are supported",
                    self.routes.len(),
                    crate::metrics::MAX_ROUTES
                ),
            );
        }
        let mut prefixes = std::collections::HashSet::new();
        let mut optimize = std::collections::BTreeSet::new();
        for (i, r) in self.routes.iter_mut().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            if !r.prefix.starts_with('/') {
                bad(key("prefix"), format!("{:?} must start with '/'", r.prefix));
            }
            if !prefixes.insert(r.prefix.clone()) {
                bad(
                    key("prefix"),
                    format!("{:?} is used by another route", r.prefix),
                );
            }
            if r.wsgi.is_some() && r.static_files.is_some() {
                bad(
                    format!("route[{i}]"),
                    "has both `static` and `wsgi`; a route serves one of them".into(),
                );
            }
            if let Some(w) = &mut r.wsgi {
                validate_wsgi(w, &base, &key, &mut bad);
                optimize.insert(w.optimize);
            }
            match &mut r.static_files {
                None if r.wsgi.is_none() => bad(
                    format!("route[{i}]"),
                    "needs `static = {{ root = ... }}` or `wsgi = {{ app = ... }}`".into(),
                ),
                None => {}
                Some(s) => {
                    if s.root.as_os_str().is_empty() {
                        bad(key("static.root"), "is required".into());
                    } else {
                        let root = base.join(&s.root);
                        match root.canonicalize() {
                            Ok(p) if p.is_dir() => s.root = p,
                            Ok(p) => bad(
                                key("static.root"),
                                format!("{} is not a directory", p.display()),
                            ),
                            Err(e) => bad(key("static.root"), format!("{}: {e}", root.display())),
                        }
                    }
                    if let Some(cc) = &s.cache_control
                        && http::HeaderValue::from_str(cc).is_err()
                    {
                        bad(
                            key("static.cache_control"),
                            format!("{cc:?} is not a valid header value"),
                        );
                    }
                    for (j, idx) in s.index.iter().enumerate() {
                        if idx.is_empty() || idx.contains('/') || idx.starts_with('.') {
                            bad(
                                format!("route[{i}].static.index[{j}]"),
                                format!("{idx:?} must be a plain file name"),
                            );
                        }
                    }
                }
            }
        }
        if optimize.len() > 1 {
            bad(
                "route.wsgi.optimize".into(),
                "every WSGI route must use the same `optimize` (one interpreter per cell)".into(),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The WSGI routes' shared `optimize` level (0 without WSGI routes).
    pub fn python_optimize(&self) -> i64 {
        self.routes
            .iter()
            .filter_map(|r| r.wsgi.as_ref())
            .map(|w| w.optimize)
            .max()
            .unwrap_or(0)
    }

    pub fn has_wsgi(&self) -> bool {
        self.routes.iter().any(|r| r.wsgi.is_some())
    }

    /// Number of cells for `workers` and the usable CPUs.
    pub fn cell_count(&self, usable_cpus: usize) -> usize {
        match self.server.workers {
            Workers::Auto => usable_cpus.max(1),
            Workers::Count(n) => n.max(1) as usize,
        }
    }
}

/// Checks `[ebpf]` and `[ebpf.xdp]`.
fn validate_ebpf(e: &EbpfConfig, bad: &mut dyn FnMut(String, String)) {
    if let Some(i) = &e.instance
        && (i.is_empty()
            || i.len() > 64
            || !i
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            || i.starts_with('.'))
    {
        bad(
            "ebpf.instance".into(),
            format!(
                "{i:?}: use 1-64 of A-Z a-z 0-9 - _ . (a directory name under /sys/fs/bpf/portico)"
            ),
        );
    }
    let Some(x) = &e.xdp else { return };
    if e.mode == EbpfMode::Off {
        bad(
            "ebpf.xdp".into(),
            "the XDP guard needs eBPF, but [ebpf] mode = \"off\"".into(),
        );
    }
    if x.interface.is_empty() {
        bad(
            "ebpf.xdp.interface".into(),
            "is required (the network interface to guard, e.g. \"eth0\")".into(),
        );
    } else if x.interface.len() >= 16 || x.interface.contains('/') {
        bad(
            "ebpf.xdp.interface".into(),
            format!("{:?} is not an interface name", x.interface),
        );
    } else if !Path::new("/sys/class/net").join(&x.interface).exists() {
        bad(
            "ebpf.xdp.interface".into(),
            format!("no network interface named {:?} on this host", x.interface),
        );
    }
    for (i, c) in x.blocklist.iter().enumerate() {
        if let Err(m) = c.parse::<wsgi_worker::Cidr>() {
            bad(format!("ebpf.xdp.blocklist[{i}]"), m);
        }
    }
    if x.syn_rate > 0 && x.syn_burst == 0 {
        bad(
            "ebpf.xdp.syn_burst".into(),
            "must be at least 1 when syn_rate is set".into(),
        );
    }
    if x.blocklist.len() > lb_common::xdp::BLOCK_ENTRIES as usize {
        bad(
            "ebpf.xdp.blocklist".into(),
            format!("at most {} entries", lb_common::xdp::BLOCK_ENTRIES),
        );
    }
}

/// Checks one WSGI route and makes its paths absolute.
fn validate_wsgi(
    w: &mut WsgiConfig,
    base: &Path,
    key: &dyn Fn(&str) -> String,
    bad: &mut dyn FnMut(String, String),
) {
    match (&w.app, &w.script) {
        (Some(_), Some(_)) => bad(key("wsgi"), "give `app` or `script`, not both".into()),
        (None, None) => bad(
            key("wsgi.app"),
            "is required (module:callable, module:factory(), or `script = \"path.wsgi\"`)".into(),
        ),
        (Some(a), None) => match a.parse::<wsgi_worker::AppSpec>() {
            Ok(wsgi_worker::AppSpec::Script(p)) => {
                w.script = Some(p);
                w.app = None;
            }
            Ok(_) => {}
            Err(e) => bad(key("wsgi.app"), e.to_string()),
        },
        (None, Some(_)) => {}
    }
    let dir = match &w.chdir {
        Some(c) => {
            let d = base.join(c);
            if d.is_dir() {
                w.chdir = Some(d.clone());
                d
            } else {
                bad(
                    key("wsgi.chdir"),
                    format!("{} is not a directory", d.display()),
                );
                base.to_path_buf()
            }
        }
        None => {
            w.chdir = Some(base.to_path_buf());
            base.to_path_buf()
        }
    };
    if let Some(s) = &w.script {
        let p = dir.join(s);
        if p.is_file() {
            w.script = Some(p);
        } else {
            bad(key("wsgi.script"), format!("{} is not a file", p.display()));
        }
    }
    for (j, p) in w.python_path.iter_mut().enumerate() {
        let abs = dir.join(&*p);
        if !abs.is_dir() {
            bad(
                key(&format!("wsgi.python_path[{j}]")),
                format!("{} is not a directory", abs.display()),
            );
        }
        *p = abs;
    }
    if let Some(v) = &w.venv {
        let abs = dir.join(v);
        if !abs.join("pyvenv.cfg").is_file() {
            bad(
                key("wsgi.venv"),
                format!("{} is not a virtualenv (no pyvenv.cfg)", abs.display()),
            );
        }
        w.venv = Some(abs);
    }
    if !(0..=2).contains(&w.optimize) {
        bad(
            key("wsgi.optimize"),
            format!("{} is not 0, 1 or 2", w.optimize),
        );
    }
    for k in w.environ.keys() {
        if k.is_empty() {
            bad(key("wsgi.environ"), "keys cannot be empty".into());
        }
    }
    if !(1..=256).contains(&w.threads) {
        bad(
            key("wsgi.threads"),
            format!("{} is out of range (1..=256)", w.threads),
        );
    }
    if !(1..=1_000_000).contains(&w.max_queue) {
        bad(
            key("wsgi.max_queue"),
            format!("{} is out of range (1..=1000000)", w.max_queue),
        );
    }
    for (name, d) in [
        ("queue_timeout", w.queue_timeout),
        ("request_timeout", w.request_timeout),
        ("request_timeout_grace", w.request_timeout_grace),
    ] {
        if d.0.is_zero() {
            bad(key(&format!("wsgi.{name}")), "must be more than 0".into());
        }
    }
    for (name, d) in [
        ("lifetime", w.lifetime),
        ("inactivity_timeout", w.inactivity_timeout),
    ] {
        if d.is_some_and(|d| d.0.is_zero()) {
            bad(
                key(&format!("wsgi.{name}")),
                "must be more than 0 (leave it out to disable)".into(),
            );
        }
    }
    for (j, p) in w.trusted_proxies.iter().enumerate() {
        if let Err(e) = p.parse::<wsgi_worker::Cidr>() {
            bad(key(&format!("wsgi.trusted_proxies[{j}]")), e);
        }
    }
}

/// A command-line path made absolute against the current directory.
fn absolute(p: &Path) -> PathBuf {
    std::env::current_dir()
        .map(|d| d.join(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// " (line L, column C)" for a byte span of `text`.
fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count() + 1)
        .unwrap_or(1);
    format!(" (line {line}, column {col})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_readme_sketch() {
        let cfg = Config::parse(
            r#"
            [server]
            listen = ["127.0.0.1:8080", "unix:/tmp/p.sock"]
            workers = "auto"
            admin = "127.0.0.1:9090"
            shutdown_timeout = "10s"
            [limits]
            max_body_size = "1M"
            [[route]]
            prefix = "/static/"
            static = { root = "static", cache_control = "public, max-age=2592000", expires = "30d" }
            "#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(cfg.server.listen.len(), 2);
        assert_eq!(cfg.server.listen[1], ListenAddr::Unix("/tmp/p.sock".into()));
        assert_eq!(cfg.server.workers, Workers::Auto);
        assert_eq!(cfg.server.shutdown_timeout.0, Duration::from_secs(10));
        assert_eq!(cfg.limits.max_body_size.0, 1 << 20);
        let s = cfg.routes[0].static_files.as_ref().unwrap();
        assert_eq!(s.expires.unwrap().0, Duration::from_secs(30 * 86400));
    }

    #[test]
    fn collects_errors_from_every_section() {
        let err = Config::parse(
            r#"
            bogus = 1
            [server]
            workers = "many"
            [limits]
            max_body_size = "10 parsecs"
            [[route]]
            prefix = "/"
            nonsense = true
            "#,
            "t.toml",
        )
        .unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"bogus"), "{keys:?}");
        assert!(keys.contains(&"server"), "{keys:?}");
        assert!(keys.contains(&"limits"), "{keys:?}");
        assert!(keys.contains(&"route[0]"), "{keys:?}");
    }

    #[test]
    fn validate_reports_every_ebpf_problem() {
        let mut cfg = Config::parse(
            r#"
            [ebpf]
            mode = "off"
            steering = "hash"
            instance = "../etc"
            [ebpf.xdp]
            interface = "no-such-nic0"
            blocklist = ["10.0.0.0/8", "10.0.0.0/33", "not an address"]
            syn_rate = 10
            syn_burst = 0
            [[route]]
            prefix = "/"
            static = { root = "/" }
            "#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(cfg.ebpf.steering, SteeringPolicy::Hash);
        let err = cfg.validate().unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "ebpf.instance",
            "ebpf.xdp",
            "ebpf.xdp.interface",
            "ebpf.xdp.blocklist[1]",
            "ebpf.xdp.blocklist[2]",
            "ebpf.xdp.syn_burst",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(!keys.contains(&"ebpf.xdp.blocklist[0]"));
        let bad = Config::parse("[ebpf]\nsteering = \"random\"\n", "t.toml");
        assert!(bad.is_err(), "an unknown policy is rejected");
        assert_eq!(
            "least-loaded".parse::<SteeringPolicy>(),
            Ok(SteeringPolicy::LeastLoaded)
        );
        assert_eq!(EbpfConfig::default().steering, SteeringPolicy::Cpu);
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut cfg = Config::parse(
            r#"
            [server]
            listen = []
            workers = 0
            admin = "nowhere"
            [limits]
            max_headers = 0
            header_timeout = 0
            [[route]]
            prefix = "static"
            static = { root = "/definitely/not/here" }
            [[route]]
            prefix = "static"
            static = { root = "/" , cache_control = "bad\nvalue" }
            "#,
            "t.toml",
        )
        .unwrap();
        let err = cfg.validate().unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "server.listen",
            "server.workers",
            "server.admin",
            "limits.max_headers",
            "limits.header_timeout",
            "route[0].prefix",
            "route[0].static.root",
            "route[1].prefix",
            "route[1].static.cache_control",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn overrides_replace_file_values() {
        let mut cfg = Config::default();
        let errs = cfg.apply(&Overrides {
            listen: vec!["127.0.0.1:0".into(), "unix:/tmp/x.sock".into()],
            statics: vec!["/s/=.".into(), "broken".into()],
            workers: Some("3".into()),
            admin: Some("off".into()),
            log_format: Some("xml".into()),
            ..Default::default()
        });
        assert_eq!(cfg.server.listen.len(), 2);
        assert_eq!(cfg.server.workers, Workers::Count(3));
        assert_eq!(cfg.server.admin, "off");
        assert_eq!(cfg.routes.len(), 1);
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["--static", "--log-format"]);
    }

    #[test]
    fn app_mounts_a_wsgi_route_at_root() {
        let mut cfg = Config::default();
        let errs = cfg.apply(&Overrides {
            app: Some("site.wsgi:application".into()),
            threads: Some(8),
            request_timeout: Some("5s".into()),
            ..Default::default()
        });
        assert!(errs.is_empty(), "{errs:?}");
        let w = cfg.routes[0].wsgi.as_ref().unwrap();
        assert_eq!(cfg.routes[0].prefix, "/");
        assert_eq!(w.app.as_deref(), Some("site.wsgi:application"));
        assert_eq!(w.threads, 8);
        assert_eq!(w.request_timeout.0, Duration::from_secs(5));
        let errs = Config::default().apply(&Overrides {
            app: Some("not an app".into()),
            ..Default::default()
        });
        assert_eq!(errs.len(), 1);
        let errs = Config::default().apply(&Overrides {
            threads: Some(2),
            ..Default::default()
        });
        assert_eq!(errs.len(), 1, "WSGI flags without APP are refused");
    }

    #[test]
    fn wsgi_routes_are_validated() {
        let text = r#"
[[route]]
prefix = "/app/"
wsgi = { app = "x:y", script = "a.wsgi", threads = 0, max_queue = 0, optimize = 3, trusted_proxies = ["10.0.0.0/99"], queue_timeout = 0 }

[[route]]
prefix = "/b/"
wsgi = { app = "mysite.wsgi:application", venv = "/nonexistent-venv", python_path = ["/nonexistent-dir"] }
static = { root = "." }

[[route]]
prefix = "/c/"
wsgi = { }
"#;
        let mut cfg = Config::parse(text, "t.toml").unwrap();
        let errs = cfg.validate().unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "route[0].wsgi",
            "route[0].wsgi.threads",
            "route[0].wsgi.max_queue",
            "route[0].wsgi.optimize",
            "route[0].wsgi.trusted_proxies[0]",
            "route[0].wsgi.queue_timeout",
            "route[1]",
            "route[1].wsgi.venv",
            "route[1].wsgi.python_path[0]",
            "route[2].wsgi.app",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3w").is_err());
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

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
        });
        let json = serde_json::to_string(&cfg).unwrap();
        let back: Config = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
    }
}
