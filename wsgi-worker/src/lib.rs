//! The embedded-Python WSGI gateway (pyo3) for Portico cells.
//!
//! A cell owns one [`Pool`] per WSGI route: Python threads pinned with the cell take requests
//! from a bounded queue, build the PEP 3333 environ, call the application and hand the response
//! back to the cell's event loop over channels, so the event loop never waits on Python. An
//! ASGI route instead gets one asyncio loop on its own thread (`asgi`).
#![forbid(unsafe_code)]

use std::path::PathBuf;

pub mod asgi;
mod environ;
mod objects;
mod pool;
mod python;
mod request;
mod response;

pub use environ::{Cidr, ConnInfo, Forwarded, forwarded};
pub use objects::BodySource;
pub use pool::{Job, Observer, Pool, PoolStats, Settings, SubmitError};
pub use python::{AppError, LoadPaths, interpreter_version};
pub use response::{BodyOut, Head, Piece, Reply};

/// How a WSGI application is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSpec {
    /// `module:callable`, e.g. `mysite.wsgi:application`.
    Callable { module: String, attr: String },
    /// `module:factory()`: called once to build the application.
    Factory { module: String, attr: String },
    /// A WSGI script file whose `application` is the app (mod_wsgi's WSGIScriptAlias).
    Script(PathBuf),
    /// A PasteDeploy `.ini` (absolute path) and the app, pipeline or composite in it to load.
    Paste { path: PathBuf, name: String },
}

impl std::fmt::Display for AppSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppSpec::Callable { module, attr } => write!(f, "{module}:{attr}"),
            AppSpec::Factory { module, attr } => write!(f, "{module}:{attr}()"),
            AppSpec::Script(p) => write!(f, "{}", p.display()),
            AppSpec::Paste { path, name } => write!(f, "config:{}#{name}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppSpecError {
    #[error("{0:?}: expected module:callable, module:factory() or a path to a .wsgi/.py script")]
    Shape(String),
    #[error("{spec:?}: {part:?} is not a Python identifier path")]
    Identifier { spec: String, part: String },
}

fn is_dotted_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|p| {
            let mut c = p.chars();
            matches!(c.next(), Some(f) if f == '_' || f.is_alphabetic())
                && c.all(|x| x == '_' || x.is_alphanumeric())
        })
}

impl std::str::FromStr for AppSpec {
    type Err = AppSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let s = spec.trim();
        if s.ends_with(".wsgi") || s.ends_with(".py") || s.contains('/') {
            return Ok(AppSpec::Script(PathBuf::from(s)));
        }
        let (module, attr) = s
            .split_once(':')
            .ok_or_else(|| AppSpecError::Shape(spec.into()))?;
        let (attr, factory) = match attr.strip_suffix("()") {
            Some(a) => (a, true),
            None => (attr, false),
        };
        for part in [module, attr] {
            if !is_dotted_identifier(part) {
                return Err(AppSpecError::Identifier {
                    spec: spec.into(),
                    part: part.into(),
                });
            }
        }
        let (module, attr) = (module.to_string(), attr.to_string());
        Ok(if factory {
            AppSpec::Factory { module, attr }
        } else {
            AppSpec::Callable { module, attr }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_shapes() {
        assert_eq!(
            "mysite.wsgi:application".parse(),
            Ok(AppSpec::Callable {
                module: "mysite.wsgi".into(),
                attr: "application".into()
            })
        );
        assert_eq!(
            "app:create_app()".parse(),
            Ok(AppSpec::Factory {
                module: "app".into(),
                attr: "create_app".into()
            })
        );
        assert_eq!(
            "site/app.wsgi".parse(),
            Ok(AppSpec::Script("site/app.wsgi".into()))
        );
    }

    #[test]
    fn names_a_paste_app_as_its_config_url() {
        let spec = AppSpec::Paste {
            path: "/srv/site/production.ini".into(),
            name: "main".into(),
        };
        assert_eq!(spec.to_string(), "config:/srv/site/production.ini#main");
    }

    #[test]
    fn rejects_malformed_specs() {
        assert!(matches!(
            "justamodule".parse::<AppSpec>(),
            Err(AppSpecError::Shape(_))
        ));
        assert!(matches!(
            "my-site:app".parse::<AppSpec>(),
            Err(AppSpecError::Identifier { .. })
        ));
        assert!(matches!(
            "m:1app".parse::<AppSpec>(),
            Err(AppSpecError::Identifier { .. })
        ));
        assert!(matches!(
            "m:".parse::<AppSpec>(),
            Err(AppSpecError::Identifier { .. })
        ));
    }
}
