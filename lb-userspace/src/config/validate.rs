//! `validate()`: every value checked at once, each problem under its key, and relative paths
//! made absolute against the base directory.
use std::net::SocketAddr;
use std::path::Path;

use super::error::{ConfigError, ConfigErrors};
use super::limits::MaxConnections;
use super::proxy::validate::{validate_proxy, validate_upstreams};
use super::schema::{Config, EbpfConfig, EbpfMode, Recycling, Workers, WsgiConfig};
use super::units::parse_cidr;

impl Config {
    /// Checks every value and makes paths absolute. Returns every problem found.
    pub fn validate(&mut self) -> Result<(), ConfigErrors> {
        let source = self
            .origin
            .as_ref()
            .map_or_else(|| "command line".into(), |p| p.display().to_string());
        let mut errors = Vec::new();
        let mut bad = |key: String, message: String| {
            errors.push(ConfigError {
                source: source.clone(),
                key,
                message,
            });
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
        if l.send_timeout.0.is_zero() {
            bad("limits.send_timeout".into(), "must be more than 0".into());
        }
        if let MaxConnections::Count(n) = l.max_connections
            && !(1..=MaxConnections::MAX).contains(&n)
        {
            let max = MaxConnections::MAX;
            let why = format!("{n} is out of range (1..={max} or \"auto\")");
            bad("limits.max_connections".into(), why);
        }
        l.validate_http2(&mut bad);
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
        super::privilege::validate_privilege(&mut self.server, &base, &mut bad);

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
        let mut loops = std::collections::BTreeSet::new();
        for (i, r) in self.routes.iter_mut().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            if !r.prefix.starts_with('/') || r.prefix[1..].starts_with(['/', '\\']) {
                // `//x` (or `/\x`) in a mapped redirect would read as the host `x`.
                bad(
                    key("prefix"),
                    format!("{:?} must start with one '/' (not two)", r.prefix),
                );
            }
            if !prefixes.insert(r.prefix.clone()) {
                bad(
                    key("prefix"),
                    format!("{:?} is used by another route", r.prefix),
                );
            }
            let handlers = [
                r.static_files.is_some(),
                r.wsgi.is_some(),
                r.asgi.is_some(),
                r.proxy.is_some(),
            ];
            if handlers.iter().filter(|h| **h).count() > 1 {
                bad(
                    format!("route[{i}]"),
                    "has more than one of `static`, `wsgi`, `asgi` and `proxy`; a route serves one"
                        .into(),
                );
            }
            if let Some(p) = &mut r.proxy {
                validate_proxy(p, &mut self.upstreams, &key, &mut bad);
            }
            if let Some(w) = &mut r.wsgi {
                validate_wsgi(w, &base, &key, &mut bad);
                optimize.insert(w.optimize);
            }
            if let Some(a) = &mut r.asgi {
                super::asgi::validate(a, &base, &key, &mut bad);
                loops.insert(a.event_loop as u8);
            }
            if let Some(limits) = r.recycling() {
                let kind = if r.wsgi.is_some() { "wsgi" } else { "asgi" };
                validate_recycling(&limits, kind, &key, &mut bad);
            }
            match &mut r.static_files {
                None if r.wsgi.is_none() && r.asgi.is_none() && r.proxy.is_none() => bad(
                    format!("route[{i}]"),
                    "needs `static = {{ root = ... }}`, `wsgi = {{ app = ... }}`, `asgi = {{ app = ... }}` or `proxy = ...`"
                        .into(),
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
        validate_upstreams(&self.upstreams, &mut bad);
        super::tls::validate_tls(
            &mut self.tls,
            &self.server.listen,
            self.server.redirect_https.as_ref(),
            &base,
            &mut bad,
        );
        if optimize.len() > 1 {
            bad(
                "route.wsgi.optimize".into(),
                "every WSGI route must use the same `optimize` (one interpreter per cell)".into(),
            );
        }
        if loops.len() > 1 {
            bad(
                "route.asgi.loop".into(),
                "every ASGI route must use the same `loop` (one event loop per cell)".into(),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
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
        if let Err(m) = parse_cidr(c) {
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

/// The recycling limits of an app route (`kind`: `wsgi` or `asgi`), the same checks for both.
fn validate_recycling(
    r: &Recycling,
    kind: &str,
    key: &dyn Fn(&str) -> String,
    bad: &mut dyn FnMut(String, String),
) {
    for (name, d) in [
        ("lifetime", r.lifetime),
        ("inactivity_timeout", r.inactivity_timeout),
    ] {
        if d.is_some_and(|d| d.0.is_zero()) {
            bad(
                key(&format!("{kind}.{name}")),
                "must be more than 0 (leave it out to disable)".into(),
            );
        }
    }
}

/// Checks one WSGI route and makes its paths absolute.
fn validate_wsgi(
    w: &mut WsgiConfig,
    base: &Path,
    key: &dyn Fn(&str) -> String,
    bad: &mut dyn FnMut(String, String),
) {
    match (&w.app, &w.script, &w.paste) {
        (None, None, None) => bad(
            key("wsgi.app"),
            "is required (module:callable, module:factory(), `script = \"path.wsgi\"` or `paste = \"production.ini\"`)".into(),
        ),
        (Some(a), None, None) => match a.parse::<wsgi_worker::AppSpec>() {
            Ok(wsgi_worker::AppSpec::Script(p)) => {
                w.script = Some(p);
                w.app = None;
            }
            Ok(_) => {}
            Err(e) => bad(key("wsgi.app"), e.to_string()),
        },
        (None, Some(_), None) | (None, None, Some(_)) => {}
        _ => bad(
            key("wsgi"),
            "give one of `app`, `script` or `paste`, not several".into(),
        ),
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
    super::paste::validate(w, &dir, key, bad);
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
    for (j, p) in w.trusted_proxies.iter().enumerate() {
        if let Err(e) = parse_cidr(p) {
            bad(key(&format!("wsgi.trusted_proxies[{j}]")), e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::SteeringPolicy;

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
            max_connections = 0
            send_timeout = 0
            [[route]]
            prefix = "static"
            static = { root = "/definitely/not/here" }
            [[route]]
            prefix = "static"
            static = { root = "/" , cache_control = "bad\nvalue" }
            [[route]]
            prefix = "//x/"
            static = { root = "/" }
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
            "limits.max_connections",
            "limits.send_timeout",
            "route[0].prefix",
            "route[0].static.root",
            "route[1].prefix",
            "route[1].static.cache_control",
            "route[2].prefix",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
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
}
