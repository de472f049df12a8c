//! A `[[tls]]` listener as rustls runs it: the certificate for the name the client asks for
//! (exact, then `*.` one label up, then the default or a refusal), the versions from
//! `min_version`, ALPN, shared session tickets, and the cipher suite: AES-128-GCM unless the
//! client lists ChaCha20 first.
use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{cipher_suite as cs, default_provider};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, ServerConfig, SupportedCipherSuite};

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

/// The server's order: AES-128-GCM first, whose SHA-256 key schedule runs on the CPU's SHA
/// instructions where SHA-384's does not (about a fifth of a handshake's CPU on AMD), and whose
/// bulk cipher is the fastest with AES hardware.
static SERVER_ORDER: &[SupportedCipherSuite] = &[
    cs::TLS13_AES_128_GCM_SHA256,
    cs::TLS13_AES_256_GCM_SHA384,
    cs::TLS13_CHACHA20_POLY1305_SHA256,
    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// One TLS listener's rustls configurations, alike but for who orders the cipher suites: the
/// server (AES-128-GCM first), or the client when it lists ChaCha20 first, which clients without
/// AES hardware do (the choice BoringSSL and Go servers make). Both share the certificates, the
/// session cache and the ticketer, so a session resumes under either.
#[derive(Debug)]
pub struct ServerConfigs {
    server_order: Arc<ServerConfig>,
    client_order: Arc<ServerConfig>,
}

impl ServerConfigs {
    /// The configuration to finish this client's handshake with.
    pub fn for_hello(&self, hello: &ClientHello<'_>) -> &Arc<ServerConfig> {
        if prefers_chacha(hello.cipher_suites()) {
            &self.client_order
        } else {
            &self.server_order
        }
    }
}

/// Whether the first suite the client offers that Portico has is a ChaCha20 one.
fn prefers_chacha(offered: &[CipherSuite]) -> bool {
    offered
        .iter()
        .find(|c| SERVER_ORDER.iter().any(|s| s.suite() == **c))
        .is_some_and(|c| {
            matches!(
                c,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                    | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        })
}

/// The rustls configurations of one TLS listener. `tickets`: the shared ticketer (None: session
/// IDs only, remembered per cell). `on_unknown` counts names refused by `unknown_name = "reject"`.
pub fn server_config(
    t: &TlsConfig,
    tickets: Option<Arc<dyn ProducesTickets>>,
    on_unknown: Box<dyn Fn() + Send + Sync>,
) -> Result<ServerConfigs, String> {
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
    let resolver: Arc<dyn ResolvesServerCert> = Arc::new(resolver);
    let sessions = ServerSessionMemoryCache::new(SESSION_CACHE);
    let tickets = tickets.filter(|_| t.session_tickets);
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: SERVER_ORDER.to_vec(),
        ..default_provider()
    });
    let build = |ignore_client_order: bool| {
        let mut cfg = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        cfg.ignore_client_order = ignore_client_order;
        cfg.alpn_protocols = t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        cfg.session_storage = sessions.clone();
        if let Some(tickets) = &tickets {
            cfg.ticketer = tickets.clone();
            // One ticket per full handshake is enough for a browser's next connection.
            cfg.send_tls13_tickets = 1;
        }
        Ok::<_, String>(Arc::new(cfg))
    };
    Ok(ServerConfigs {
        server_order: build(true)?,
        client_order: build(false)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chacha_only_when_the_client_lists_it_before_aes() {
        use CipherSuite as C;
        assert!(!prefers_chacha(&[
            C::TLS13_AES_256_GCM_SHA384,
            C::TLS13_CHACHA20_POLY1305_SHA256
        ]));
        assert!(prefers_chacha(&[
            C::TLS13_CHACHA20_POLY1305_SHA256,
            C::TLS13_AES_128_GCM_SHA256
        ]));
        // Suites Portico does not have (GREASE, CBC) do not count.
        assert!(prefers_chacha(&[
            C::Unknown(0x0a0a),
            C::TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
            C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        ]));
        assert!(!prefers_chacha(&[C::Unknown(0x0a0a)]));
        assert!(!prefers_chacha(&[]));
    }

    #[test]
    fn the_server_order_has_every_default_suite() {
        let default = default_provider().cipher_suites;
        assert_eq!(SERVER_ORDER.len(), default.len());
        assert!(default.iter().all(|d| SERVER_ORDER.contains(d)));
    }
}
