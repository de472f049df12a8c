//! Command-line flags that override the file (`portico serve APP --listen ... --static ...`).
use std::path::{Path, PathBuf};

use super::error::ConfigError;
use super::proxy::ProxyConfig;
use super::schema::{Config, RouteConfig, StaticConfig, SteeringPolicy, Workers, WsgiConfig};
use super::units::{Dur, parse_duration};

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub app: Option<String>,
    /// `--interface`: how APP is called.
    pub interface: Interface,
    /// `--paste FILE[#NAME]`: a PasteDeploy app mounted at `/`, instead of APP.
    pub paste: Option<String>,
    /// `--threads`, `--request-timeout`, `--max-requests`, `--reload`, `--python-path`,
    /// `--venv`: applied to the app given as APP or `--paste`.
    pub threads: Option<i64>,
    pub request_timeout: Option<String>,
    pub max_requests: Option<u64>,
    pub reload: bool,
    pub python_path: Vec<PathBuf>,
    pub venv: Option<PathBuf>,
    pub listen: Vec<String>,
    pub statics: Vec<String>,
    /// `--proxy PREFIX=URL` (repeatable).
    pub proxies: Vec<String>,
    pub workers: Option<String>,
    pub admin: Option<String>,
    pub chdir: Option<PathBuf>,
    pub access_log: Option<String>,
    pub log_format: Option<String>,
    pub steering: Option<SteeringPolicy>,
    /// `--h2c`: `[server] h2c = true`.
    pub h2c: bool,
    /// `--tls-cert FILE --tls-key FILE`: TLS on every TCP listener.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// `--interface asgi|wsgi|auto`: the protocol APP speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Interface {
    /// Import APP and look: a coroutine function (or an object whose `__call__` is one) is ASGI.
    #[default]
    Auto,
    Asgi,
    Wsgi,
}

impl Config {
    /// Applies command-line overrides; values that do not parse become errors.
    pub fn apply(&mut self, o: &Overrides) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut bad = |key: &str, message: String| {
            errors.push(ConfigError {
                source: "command line".into(),
                key: key.into(),
                message,
            });
        };
        let mut cli_app = None;
        if let Some(app) = &o.app {
            let mut w = WsgiConfig::default();
            match app.parse::<wsgi_worker::AppSpec>() {
                Err(e) => bad("APP", e.to_string()),
                Ok(wsgi_worker::AppSpec::Script(p)) => w.script = Some(absolute(&p)),
                Ok(_) => w.app = Some(app.clone()),
            }
            cli_app = Some(w);
        }
        if let Some(flag) = &o.paste {
            if o.app.is_some() {
                bad("--paste", "give APP or --paste, not both".into());
            }
            match super::paste::split_flag(flag) {
                Ok((file, name)) => {
                    cli_app = Some(WsgiConfig {
                        paste: Some(absolute(&file)),
                        app_name: name,
                        ..WsgiConfig::default()
                    });
                }
                Err(e) => bad("--paste", e),
            }
        }
        if cli_app.is_none() && o.interface != Interface::Auto {
            bad(
                "--interface",
                "applies to an APP given on the command line".into(),
            );
        }
        if let Some(mut w) = cli_app {
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
            let (wsgi, asgi) = if o.interface == Interface::Asgi {
                if o.paste.is_some() {
                    bad(
                        "--interface",
                        "a PasteDeploy app is WSGI; drop --interface asgi".into(),
                    );
                }
                (None, Some(w.to_asgi()))
            } else {
                // `auto` starts as WSGI; the master looks at the imported app before serving.
                (Some(w), None)
            };
            self.routes.push(RouteConfig {
                prefix: "/".into(),
                static_files: None,
                wsgi,
                asgi,
                proxy: None,
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
                "--threads, --request-timeout, --max-requests, --reload, --python-path and --venv apply to an APP or --paste given on the command line".into(),
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
        match (&o.tls_cert, &o.tls_key) {
            (Some(cert), Some(key)) => {
                self.tls = self
                    .server
                    .listen
                    .iter()
                    .filter(|l| matches!(l, super::units::ListenAddr::Tcp(_)))
                    .map(|l| super::tls::TlsConfig::new(l.clone(), absolute(cert), absolute(key)))
                    .collect();
            }
            (None, None) => {}
            _ => bad(
                "--tls-cert",
                "give --tls-cert and --tls-key together".into(),
            ),
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
                        asgi: None,
                        proxy: None,
                    });
                }
                _ => bad(
                    "--static",
                    format!("{s:?} is not PREFIX=DIR (e.g. /static/=./static)"),
                ),
            }
        }
        for s in &o.proxies {
            match s.split_once('=') {
                Some((prefix, url)) if !prefix.is_empty() && !url.is_empty() => {
                    self.routes.retain(|r| r.prefix != prefix);
                    self.routes.push(RouteConfig {
                        prefix: prefix.to_string(),
                        static_files: None,
                        wsgi: None,
                        asgi: None,
                        proxy: Some(ProxyConfig::from_url(url.to_string())),
                    });
                }
                _ => bad(
                    "--proxy",
                    format!("{s:?} is not PREFIX=URL (e.g. /api/=http://127.0.0.1:8001/)"),
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
        if o.h2c {
            self.server.h2c = true;
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
}

/// A command-line path made absolute against the current directory.
fn absolute(p: &Path) -> PathBuf {
    std::env::current_dir().map_or_else(|_| p.to_path_buf(), |d| d.join(p))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn overrides_replace_file_values() {
        let mut cfg = Config::default();
        let errs = cfg.apply(&Overrides {
            listen: vec!["127.0.0.1:0".into(), "unix:/tmp/x.sock".into()],
            statics: vec!["/s/=.".into(), "broken".into()],
            workers: Some("3".into()),
            admin: Some("off".into()),
            log_format: Some("xml".into()),
            h2c: true,
            ..Default::default()
        });
        assert!(cfg.server.h2c);
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
    fn interface_asgi_mounts_an_asgi_route_at_root() {
        let mut cfg = Config::default();
        let errs = cfg.apply(&Overrides {
            app: Some("site.asgi:application".into()),
            interface: Interface::Asgi,
            request_timeout: Some("5s".into()),
            ..Default::default()
        });
        assert!(errs.is_empty(), "{errs:?}");
        let r = &cfg.routes[0];
        assert!(r.wsgi.is_none());
        let a = r.asgi.as_ref().unwrap();
        assert_eq!(a.app.as_deref(), Some("site.asgi:application"));
        assert_eq!(a.request_timeout.0, Duration::from_secs(5));
        let errs = Config::default().apply(&Overrides {
            interface: Interface::Wsgi,
            ..Default::default()
        });
        assert_eq!(errs[0].key, "--interface", "{errs:?}");
    }

    #[test]
    fn paste_mounts_a_pastedeploy_app_at_root() {
        let mut cfg = Config::default();
        let errs = cfg.apply(&Overrides {
            paste: Some("site/production.ini#admin".into()),
            threads: Some(4),
            ..Default::default()
        });
        assert!(errs.is_empty(), "{errs:?}");
        let w = cfg.routes[0].wsgi.as_ref().unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(w.paste, Some(cwd.join("site/production.ini")));
        assert_eq!(w.app_name.as_deref(), Some("admin"));
        assert_eq!((w.app.as_ref(), w.threads), (None, 4));
        assert_eq!(w.chdir.as_ref(), Some(&cwd));

        let mut cfg = Config::default();
        cfg.apply(&Overrides {
            paste: Some("production.ini".into()),
            ..Default::default()
        });
        let w = cfg.routes[0].wsgi.as_ref().unwrap();
        assert_eq!(w.app_name, None, "PasteDeploy's default name");

        let errs = Config::default().apply(&Overrides {
            app: Some("site.wsgi:application".into()),
            paste: Some("prod.ini#".into()),
            ..Default::default()
        });
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["--paste", "--paste"], "{errs:?}");
    }
}
