//! A `[[tls]]` listener as rustls runs it: the certificate for the name the client asks for
//! (exact, then `*.` one label up, then the default or a refusal), the versions from
//! `min_version`, ALPN, and shared session tickets.
use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;

use crate::config::{TlsConfig, UnknownName, tls::load_pair};

/// Session IDs a cell remembers for TLS 1.2 clients that do not take tickets.
const SESSION_CACHE: usize = 1024;

/// Picks the certificate by SNI name.
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    reject_unknown: bool,
    on_unknown: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("reject_unknown", &self.reject_unknown)
            .finish_non_exhaustive()
    }
}

impl SniResolver {
    fn add(&mut self, names: &[String], key: &Arc<CertifiedKey>) {
        for n in names {
            match n.strip_prefix("*.") {
                Some(parent) => self.wildcard.insert(parent.to_string(), key.clone()),
                None => self.exact.insert(n.clone(), key.clone()),
            };
        }
    }

    /// The certificate for `name`, if one covers it.
    pub fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.exact.get(&name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI (an IP address, an old client): the default certificate.
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        match self.find(name) {
            Some(k) => Some(k.clone()),
            None if self.reject_unknown => {
                (self.on_unknown)();
                None
            }
            None => Some(self.default.clone()),
        }
    }
}

/// The rustls configuration of one TLS listener. `tickets`: the shared ticketer (None: session
/// IDs only, remembered per cell). `on_unknown` counts names refused by `unknown_name = "reject"`.
pub fn server_config(
    t: &TlsConfig,
    tickets: Option<Arc<dyn ProducesTickets>>,
    on_unknown: Box<dyn Fn() + Send + Sync>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let default = load_pair(&t.cert, &t.key)?;
    let mut resolver = SniResolver {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default: default.key.clone(),
        reject_unknown: t.unknown_name == UnknownName::Reject,
        on_unknown,
    };
    // The default certificate's own names count as known; `[[tls.sni]]` entries win over them.
    resolver.add(&default.names, &default.key);
    for s in &t.sni {
        let c = load_pair(&s.cert, &s.key)?;
        resolver.add(&s.names, &c.key);
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if t.min_version == "1.3" {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    cfg.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    if let Some(tickets) = tickets.filter(|_| t.session_tickets) {
        cfg.ticketer = tickets;
        // One ticket per full handshake is enough for a browser's next connection.
        cfg.send_tls13_tickets = 1;
    }
    Ok(Arc::new(cfg))
}
