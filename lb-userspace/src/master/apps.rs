//! What the master does about the Python apps before it starts cells: which interface an APP
//! speaks (WSGI or ASGI), and what of a PasteDeploy file it leaves unused.
use crate::config::{Config, Overrides};

/// `--interface auto` with an APP on the command line: imports it in a throw-away child and
/// turns the route at `/` into an ASGI route when the app is one. False: the import failed.
pub(super) fn apply_interface(cfg: &mut Config, overrides: &Overrides) -> anyhow::Result<bool> {
    let (Some(app), crate::config::Interface::Auto) = (&overrides.app, overrides.interface) else {
        return Ok(true);
    };
    match super::spawn::detect_interface(cfg)? {
        None => {
            tracing::error!("{app} failed to import (traceback above); not starting");
            Ok(false)
        }
        Some(true) => {
            tracing::info!("{app} is an ASGI application (--interface auto)");
            for r in cfg.routes.iter_mut().filter(|r| r.prefix == "/") {
                if let Some(w) = r.wsgi.take() {
                    r.asgi = Some(w.to_asgi());
                }
            }
            Ok(true)
        }
        Some(false) => {
            tracing::info!("{app} is a WSGI application (--interface auto)");
            Ok(true)
        }
    }
}

/// Portico is the server: a PasteDeploy file's `[server:*]` sections go unused, which the log
/// says once per file (not once per cell).
pub(super) fn note_paste_servers(cfg: &Config) {
    for r in &cfg.routes {
        let Some(path) = r.wsgi.as_ref().and_then(|w| w.paste.as_deref()) else {
            continue;
        };
        // A file that cannot be read now fails the import check with the reason.
        if let Ok(sections) = crate::config::paste::server_sections(path)
            && !sections.is_empty()
        {
            tracing::info!(
                "route {}: [{}] of {} ignored: Portico is the server",
                r.prefix,
                sections.join("], ["),
                path.display()
            );
        }
    }
}
