//! The master's part of TLS: the session ticket keys every cell shares (created at start,
//! rotated every `tickets::ROTATION`, kept across reloads so resumption survives them), and
//! the expiry of the certificates the configuration serves, for `/metrics`.
use std::rc::Rc;

use crate::config::{Config, tls::load_pair};
use crate::metrics::CertExpiry;
use crate::tls::TicketKeys;
use crate::tls::tickets::ROTATION;

/// Creates the ticket keys and starts their rotation on the master's event loop.
pub fn start_tickets() -> anyhow::Result<Rc<TicketKeys>> {
    let keys = Rc::new(TicketKeys::create()?);
    let k = keys.clone();
    tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + ROTATION, ROTATION);
        loop {
            tick.tick().await;
            k.rotate();
            tracing::debug!("TLS session ticket keys rotated");
        }
    });
    Ok(keys)
}

/// Every certificate of every `[[tls]]` listener with its notAfter (validation loaded them
/// already; one that no longer loads is left out and logged).
pub fn cert_expiries(cfg: &Config) -> Vec<CertExpiry> {
    let mut out = Vec::new();
    for t in &cfg.tls {
        let pairs =
            std::iter::once((&t.cert, &t.key)).chain(t.sni.iter().map(|s| (&s.cert, &s.key)));
        for (cert, key) in pairs {
            match load_pair(cert, key) {
                Ok(c) => out.push(CertExpiry {
                    listener: t.listen.to_string(),
                    cert: cert.display().to_string(),
                    not_after: c.not_after,
                }),
                Err(e) => tracing::warn!("tls: {e}"),
            }
        }
    }
    out
}
