//! Reading the file: TOML syntax, then a lenient deserialisation that keeps every good value and
//! reports every bad one under its own key path, so `validate()` still sees the rest.
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::error::{ConfigError, ConfigErrors};
use super::overrides::Overrides;
use super::proxy::UpstreamConfig;
use super::schema::{Config, RouteConfig};
use super::tls::TlsConfig;

impl Config {
    /// Parses TOML, collecting an error for every value that does not deserialize (and for each
    /// unknown key) instead of stopping at the first.
    #[cfg(test)]
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigErrors> {
        let (cfg, errors) = Config::parse_lenient(text, source);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Like `parse`, but returns the configuration anyway: every value that deserialized, and
    /// defaults in place of the ones that did not, so `validate()` can still check the rest.
    pub fn parse_lenient(text: &str, source: &str) -> (Config, Vec<ConfigError>) {
        let table: Table = match text.parse() {
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
        let mut bad = Vec::new();
        let mut cfg = Config::default();
        for (key, value) in table {
            match key.as_str() {
                "server" => set(&mut cfg.server, lenient(value, &key, &mut bad)),
                "limits" => set(&mut cfg.limits, lenient(value, &key, &mut bad)),
                "log" => set(&mut cfg.log, lenient(value, &key, &mut bad)),
                "ebpf" => set(&mut cfg.ebpf, lenient(value, &key, &mut bad)),
                "metrics" => set(&mut cfg.metrics, lenient(value, &key, &mut bad)),
                "route" => match value {
                    Value::Array(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let route =
                                lenient::<RouteConfig>(item, &format!("route[{i}]"), &mut bad);
                            cfg.routes.extend(route);
                        }
                    }
                    _ => bad.push((key, "must be an array of tables ([[route]])".into())),
                },
                "upstream" => match value {
                    Value::Array(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let up = lenient::<UpstreamConfig>(
                                item,
                                &format!("upstream[{i}]"),
                                &mut bad,
                            );
                            cfg.upstreams.extend(up);
                        }
                    }
                    _ => bad.push((key, "must be an array of tables ([[upstream]])".into())),
                },
                "tls" => match value {
                    Value::Array(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let t = lenient::<TlsConfig>(item, &format!("tls[{i}]"), &mut bad);
                            cfg.tls.extend(t);
                        }
                    }
                    _ => bad.push((key, "must be an array of tables ([[tls]])".into())),
                },
                _ => bad.push((
                    key,
                    "unknown section (expected server, limits, log, ebpf, metrics, route, upstream, tls)".into(),
                )),
            }
        }
        let errors = bad
            .into_iter()
            .map(|(key, message)| ConfigError {
                source: source.into(),
                key,
                message,
            })
            .collect();
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
        // A value the file got wrong was left out; validate() finding its default wanting (a
        // required `static.root`) would only say the same thing again.
        let dropped: Vec<String> = errors.iter().map(|e| e.key.clone()).collect();
        errors.extend(cfg.apply(overrides));
        if let Err(e) = cfg.validate() {
            errors.extend(e.0.into_iter().filter(|v| !dropped.contains(&v.key)));
        }
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
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
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// Deserializes a `T` from `value`, keeping every part that deserializes: each value that does
/// not is left out (the type's default takes its place) and reported as `(key path, reason)`.
/// `None` only when no `T` can be made at all (e.g. `server = 5`, or a required key missing).
fn lenient<T: DeserializeOwned>(
    value: Value,
    path: &str,
    bad: &mut Vec<(String, String)>,
) -> Option<T> {
    let first = match value.clone().try_into::<T>() {
        Ok(v) => return Some(v),
        Err(e) => e,
    };
    let before = bad.len();
    // While keys are added one at a time a required key may still be missing: that is judged
    // once, at the end.
    let mut fits = |candidate: &Value| match candidate.clone().try_into::<T>() {
        Err(e) if missing_field(&e).is_none() => Err(e.message().trim().to_string()),
        _ => Ok(()),
    };
    let kept = sift(
        value,
        path,
        first.message().trim().to_string(),
        &mut fits,
        bad,
    )?;
    match kept.try_into::<T>() {
        Ok(v) => Some(v),
        Err(e) => {
            // A required key refused above was already reported under its own path.
            let echo = missing_field(&e).is_some_and(|f| {
                let key = join(path, f);
                bad[before..].iter().any(|(k, _)| *k == key)
            });
            if !echo {
                bad.push((path.to_string(), e.message().trim().to_string()));
            }
            None
        }
    }
}

/// The field a "missing field `x`" error names (serde's wording for an absent required field).
fn missing_field(e: &toml::de::Error) -> Option<&str> {
    e.message()
        .strip_prefix("missing field `")?
        .split('`')
        .next()
}

/// `value` at `path` does not fit where it is: keeps the parts of it that do, reporting the rest.
/// `fits` tries a candidate in `value`'s place, within everything kept so far around it.
fn sift(
    value: Value,
    path: &str,
    why: String,
    fits: &mut dyn FnMut(&Value) -> Result<(), String>,
    bad: &mut Vec<(String, String)>,
) -> Option<Value> {
    match value {
        Value::Table(table) => {
            // An empty table fails when a table is wrong here at all (an unknown key, or a
            // table where a string belongs): then the table itself is the error.
            if let Err(e) = fits(&Value::Table(Table::new())) {
                bad.push((path.to_string(), e));
                return None;
            }
            let mut kept = Table::new();
            for (key, v) in table {
                let mut candidate = kept.clone();
                candidate.insert(key.clone(), v.clone());
                let why = match fits(&Value::Table(candidate)) {
                    Ok(()) => {
                        kept.insert(key, v);
                        continue;
                    }
                    Err(e) => e,
                };
                let mut fits_here = |c: &Value| {
                    let mut t = kept.clone();
                    t.insert(key.clone(), c.clone());
                    fits(&Value::Table(t))
                };
                if let Some(good) = sift(v, &join(path, &key), why, &mut fits_here, bad) {
                    kept.insert(key, good);
                }
            }
            Some(Value::Table(kept))
        }
        Value::Array(items) => {
            if let Err(e) = fits(&Value::Array(Vec::new())) {
                bad.push((path.to_string(), e));
                return None;
            }
            // Each element is tried alone (a list's elements do not depend on each other), which
            // keeps a long blocklist with one bad entry linear rather than quadratic.
            let all = items.len();
            let mut kept = Vec::new();
            for (i, v) in items.into_iter().enumerate() {
                let why = match fits(&Value::Array(vec![v.clone()])) {
                    Ok(()) => {
                        kept.push(v);
                        continue;
                    }
                    Err(e) => e,
                };
                let mut fits_here = |c: &Value| fits(&Value::Array(vec![c.clone()]));
                if let Some(good) = sift(v, &format!("{path}[{i}]"), why, &mut fits_here, bad) {
                    kept.push(good);
                }
            }
            if kept.is_empty() && all > 0 {
                // Nothing left: the default list (e.g. the default listen address) stays, rather
                // than an empty one that validate() would report as a problem of its own.
                return None;
            }
            let kept = Value::Array(kept);
            if let Err(e) = fits(&kept) {
                bad.push((path.to_string(), e));
                return None;
            }
            Some(kept)
        }
        _ => {
            bad.push((path.to_string(), why));
            None
        }
    }
}

/// `path.key`, quoting a key that is not a bare TOML key (`environ."MY VAR"`).
fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
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
        .map_or(1, |l| l.chars().count() + 1);
    format!(" (line {line}, column {col})")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::schema::{SteeringPolicy, Workers, XdpMode};
    use crate::config::units::ListenAddr;

    /// `(key, message)` of every problem `parse_lenient` finds in `text`, and the config.
    fn lenient_keys(text: &str) -> (Config, Vec<(String, String)>) {
        let (cfg, errors) = Config::parse_lenient(text, "t.toml");
        assert!(errors.iter().all(|e| e.source == "t.toml"), "{errors:?}");
        (
            cfg,
            errors.into_iter().map(|e| (e.key, e.message)).collect(),
        )
    }

    fn keys(errors: &[(String, String)]) -> Vec<&str> {
        errors.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn parses_the_readme_sketch() {
        let cfg = Config::parse(
            r#"
            [server]
            listen = ["127.0.0.1:8080", "unix:/tmp/p.sock"]
            workers = "auto"
            admin = "127.0.0.1:9090"
            shutdown_timeout = "10s"
            h2c = true
            [limits]
            max_body_size = "1M"
            http2_max_concurrent_streams = 64
            http2_window_size = "4M"
            [[route]]
            prefix = "/static/"
            static = { root = "static", cache_control = "public, max-age=2592000", expires = "30d" }
            "#,
            "t.toml",
        )
        .unwrap();
        assert!(cfg.server.h2c);
        assert_eq!(cfg.limits.http2_max_concurrent_streams, 64);
        assert_eq!(cfg.limits.http2_window_size.0, 4 << 20);
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
        assert_eq!(
            keys,
            [
                "bogus",
                "server.workers",
                "limits.max_body_size",
                "route[0].nonsense"
            ]
        );
        assert!(
            err.0[3].message.contains("unknown field `nonsense`"),
            "{err}"
        );
        assert!(err.0[2].message.contains("parsecs"), "{err}");
    }

    /// Defect 10: one bad value no longer hides the others in its table, nor takes the good ones
    /// down with it.
    #[test]
    fn every_bad_value_has_its_own_key_and_good_ones_stay() {
        let (cfg, errors) = lenient_keys(
            r#"
            [server]
            listen = ["not-an-address", "127.0.0.1:8081"]
            workers = -3
            backlog = "lots"
            admin = "off"
            colour = "blue"
            [ebpf]
            steering = "hash"
            [ebpf.xdp]
            interface = "eth0"
            mode = "turbo"
            syn_rate = 5
            [[route]]
            prefix = "/app/"
            wsgi = { app = "x:y", threads = "many", request_timeout = 1e30, environ = { A = "1", "B C" = 2 }, trusted_proxies = ["10.0.0.0/8", 7] }
            [[route]]
            prefix = "/s/"
            [route.static]
            root = "www"
            precompressed = "yes"
            bogus = 1
            [[route]]
            static = { root = "www" }
            "#,
        );
        assert_eq!(
            keys(&errors),
            [
                "server.listen[0]",
                "server.backlog",
                "server.colour",
                "ebpf.xdp.mode",
                "route[0].wsgi.threads",
                "route[0].wsgi.request_timeout",
                "route[0].wsgi.environ.\"B C\"",
                "route[0].wsgi.trusted_proxies[1]",
                "route[1].static.precompressed",
                "route[1].static.bogus",
                "route[2]",
            ],
            "{errors:#?}"
        );
        let msg = |k: &str| &errors.iter().find(|(key, _)| key == k).unwrap().1;
        assert!(msg("server.listen[0]").contains("not-an-address"));
        assert!(msg("server.colour").contains("unknown field `colour`"));
        assert!(msg("ebpf.xdp.mode").contains("turbo"));
        assert!(msg("route[0].wsgi.request_timeout").contains("too long"));
        assert!(msg("route[2]").contains("missing field `prefix`"));

        // The good values around the bad ones were kept.
        assert_eq!(cfg.server.listen, ["127.0.0.1:8081".parse().unwrap()]);
        assert_eq!(cfg.server.workers, Workers::Count(-3));
        assert_eq!(cfg.server.admin, "off");
        assert_eq!(cfg.server.backlog, 4096, "the default replaces a bad value");
        assert_eq!(cfg.ebpf.steering, SteeringPolicy::Hash);
        let x = cfg.ebpf.xdp.as_ref().unwrap();
        assert_eq!(
            (x.interface.as_str(), x.mode, x.syn_rate),
            ("eth0", XdpMode::Auto, 5)
        );
        assert_eq!(
            cfg.routes.len(),
            2,
            "the route without a prefix is left out"
        );
        let w = cfg.routes[0].wsgi.as_ref().unwrap();
        assert_eq!(w.app.as_deref(), Some("x:y"));
        assert_eq!(w.environ.get("A").map(String::as_str), Some("1"));
        assert_eq!(w.trusted_proxies, ["10.0.0.0/8"]);
        let s = cfg.routes[1].static_files.as_ref().unwrap();
        assert_eq!(s.root, Path::new("www"));
        assert!(s.precompressed);
    }

    #[test]
    fn wrong_shapes_are_reported_where_they_are() {
        let (cfg, errors) = lenient_keys(
            r#"
            server = 5
            [limits]
            header_timeout = { seconds = 3 }
            max_headers = [1]
            [log.format]
            x = 1
            [[route]]
            prefix = "/"
            static = "www"
            [[route]]
            prefix = 7
            "#,
        );
        assert_eq!(
            keys(&errors),
            [
                "server",
                "limits.header_timeout",
                "limits.max_headers",
                "log.format",
                "route[0].static",
                "route[1].prefix",
            ],
            "{errors:#?}"
        );
        assert_eq!(cfg.routes.len(), 1);
        assert_eq!(cfg.routes[0].prefix, "/");
    }

    #[test]
    fn huge_durations_are_config_errors() {
        let (_, errors) = lenient_keys(
            "[server]\nshutdown_timeout = 1e30\n[limits]\nheader_timeout = inf\nkeepalive_timeout = nan\n\
             [[route]]\nprefix = \"/\"\nwsgi = { app = \"a:b\", queue_timeout = -1.5, lifetime = \"1e30s\" }\n",
        );
        assert_eq!(
            keys(&errors),
            [
                "server.shutdown_timeout",
                "limits.header_timeout",
                "limits.keepalive_timeout",
                "route[0].wsgi.queue_timeout",
                "route[0].wsgi.lifetime",
            ],
            "{errors:#?}"
        );
    }

    #[test]
    fn validate_errors_join_the_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = [\"not-an-address\"]\nworkers = -3\n\
             [[route]]\nprefix = \"/\"\nstatic = { root = 5 }\n",
        )
        .unwrap();
        let err = Config::resolve(Some(&path), &Overrides::default()).unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        // `route[0].static.root` "is required" would echo the value refused; `listen` keeps its
        // default rather than becoming an empty list.
        assert_eq!(
            keys,
            ["server.listen[0]", "route[0].static.root", "server.workers"],
            "{err}"
        );
        assert!(err.0.iter().all(|e| e.source == path.display().to_string()));
    }

    #[test]
    fn a_long_list_with_one_bad_entry_keeps_the_rest() {
        let mut list: Vec<String> = (0..16384)
            .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
            .collect();
        list[9000] = "false".into();
        let text = format!(
            "[ebpf.xdp]\ninterface = \"lo\"\nblocklist = [{}]\n",
            list.join(",")
        );
        let (cfg, errors) = lenient_keys(&text);
        assert_eq!(keys(&errors), ["ebpf.xdp.blocklist[9000]"]);
        let x = cfg.ebpf.xdp.unwrap();
        assert_eq!(x.blocklist.len(), 16383);
        assert_eq!(x.interface, "lo");
    }

    #[test]
    fn key_paths() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "b.c"), "a.\"b.c\"");
        assert_eq!(
            join("route[0].wsgi.environ", "X_Y-1"),
            "route[0].wsgi.environ.X_Y-1"
        );
    }
}
