//! `[[tls]]`: TLS on a listener (rustls): the default certificate, more by SNI name, ALPN,
//! the lowest version, session tickets; `[server.redirect_https]`: a plain listener that
//! answers every request with a redirect to https. Certificates are checked here (readable,
//! key matching, expiry) so `portico check` and a reload reject a bad pair before any port.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::units::ListenAddr;

/// One TLS listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Which of `server.listen` speaks TLS.
    pub listen: ListenAddr,
    /// PEM: the certificate chain (leaf first) and its private key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// More certificates, chosen by the name the client asks for (SNI).
    #[serde(default)]
    pub sni: Vec<SniConfig>,
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    #[serde(default = "default_min_version")]
    pub min_version: String,
    /// A name no certificate covers: the default certificate, or a handshake failure.
    #[serde(default)]
    pub unknown_name: UnknownName,
    /// Stateless resumption with the master's shared, rotated ticket keys.
    #[serde(default = "yes")]
    pub session_tickets: bool,
}

impl TlsConfig {
    /// TLS on `listen` with one certificate and every other setting at its default.
    pub fn new(listen: ListenAddr, cert: PathBuf, key: PathBuf) -> Self {
        TlsConfig {
            listen,
            cert,
            key,
            sni: Vec::new(),
            alpn: default_alpn(),
            min_version: default_min_version(),
            unknown_name: UnknownName::Default,
            session_tickets: true,
        }
    }
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}
fn default_min_version() -> String {
    "1.2".into()
}
fn yes() -> bool {
    true
}

/// `[[tls.sni]]`: a certificate for some names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniConfig {
    /// Exact names or `*.example.com` (one label).
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownName {
    #[default]
    Default,
    Reject,
}

/// `[server.redirect_https]`: requests on `listen` get `301` to `https://host[:port]/target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectHttps {
    pub listen: ListenAddr,
    /// The https port named in the redirect; 443 is left out of the URL.
    #[serde(default = "https_port")]
    pub port: u16,
}

fn https_port() -> u16 {
    443
}

/// ALPN protocols Portico can speak.
pub const ALPN: [&str; 2] = ["h2", "http/1.1"];

/// A certificate chain and key that belong together, and what the checks and metrics need.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// The leaf's notAfter, seconds since the epoch.
    pub not_after: i64,
    /// DNS names of the leaf (subjectAltName, or the CN without one).
    pub names: Vec<String>,
}

/// Reads a PEM chain and key and checks that they match; the message says which file failed.
pub fn load_pair(cert: &Path, key: &Path) -> Result<LoadedCert, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| format!("{}: {}", cert.display(), pem_error(&e)))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: {}", key.display(), pem_error(&e)))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, der, &provider).map_err(|e| {
        format!(
            "{} and {} do not make a pair: {e}",
            cert.display(),
            key.display()
        )
    })?;
    let (not_after, names) = leaf_info(&certified.cert[0])
        .map_err(|e| format!("{}: unreadable certificate: {e}", cert.display()))?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        not_after,
        names,
    })
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("bad PEM: {other:?}"),
    }
}

/// The leaf's expiry and DNS names.
fn leaf_info(der: &CertificateDer<'_>) -> Result<(i64, Vec<String>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let not_after = cert.validity().not_after.timestamp();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok((not_after, names))
}

/// Checks `[[tls]]` and `redirect_https` against the listeners; resolves relative paths.
pub fn validate_tls(
    tls: &mut [TlsConfig],
    listen: &[ListenAddr],
    redirect: Option<&RedirectHttps>,
    base: &Path,
    bad: &mut dyn FnMut(String, String),
) {
    let mut seen = Vec::new();
    for (i, t) in tls.iter_mut().enumerate() {
        let key = |k: &str| format!("tls[{i}].{k}");
        match &t.listen {
            ListenAddr::Unix(_) => bad(key("listen"), "TLS needs a TCP listener".into()),
            a if !listen.contains(a) => {
                bad(key("listen"), format!("{a} is not one of server.listen"));
            }
            a if seen.contains(a) => bad(key("listen"), format!("{a} has TLS twice")),
            a => seen.push(a.clone()),
        }
        if redirect.is_some_and(|r| r.listen == t.listen) {
            bad(
                key("listen"),
                "also server.redirect_https.listen: a listener redirects or speaks TLS".into(),
            );
        }
        if !matches!(t.min_version.as_str(), "1.2" | "1.3") {
            bad(
                key("min_version"),
                format!("{:?}: expected \"1.2\" or \"1.3\"", t.min_version),
            );
        }
        if t.alpn.is_empty() {
            bad(key("alpn"), "empty: list \"http/1.1\" at least".into());
        }
        for p in &t.alpn {
            if !ALPN.contains(&p.as_str()) {
                bad(key("alpn"), format!("{p:?}: expected one of {ALPN:?}"));
            }
        }
        resolve_pair(&mut t.cert, &mut t.key, base, &key("cert"), bad);
        let mut names = Vec::new();
        for (j, s) in t.sni.iter_mut().enumerate() {
            let sk = |k: &str| format!("tls[{i}].sni[{j}].{k}");
            if s.names.is_empty() {
                bad(sk("names"), "empty".into());
            }
            for n in &mut s.names {
                *n = n.to_ascii_lowercase();
                if !valid_name(n) {
                    bad(sk("names"), format!("{n:?} is not a DNS name or *.name"));
                } else if names.contains(n) {
                    bad(sk("names"), format!("{n:?} is listed twice"));
                } else {
                    names.push(n.clone());
                }
            }
            resolve_pair(&mut s.cert, &mut s.key, base, &sk("cert"), bad);
        }
    }
    if let Some(r) = redirect {
        if !listen.contains(&r.listen) {
            bad(
                "server.redirect_https.listen".into(),
                format!("{} is not one of server.listen", r.listen),
            );
        }
        if tls.is_empty() {
            bad(
                "server.redirect_https".into(),
                "no [[tls]] listener to redirect to".into(),
            );
        }
    }
}

fn resolve_pair(
    cert: &mut PathBuf,
    key: &mut PathBuf,
    base: &Path,
    at: &str,
    bad: &mut dyn FnMut(String, String),
) {
    *cert = base.join(&*cert);
    *key = base.join(&*key);
    if let Err(m) = load_pair(cert, key) {
        bad(at.into(), m);
    }
}

/// A DNS name of letters, digits, `-` and dots, or `*.` and such a name.
fn valid_name(n: &str) -> bool {
    let n = n.strip_prefix("*.").unwrap_or(n);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Warnings for certificates that load but will not be accepted by clients for long.
pub fn tls_warnings(tls: &[TlsConfig], now: i64) -> Vec<String> {
    let mut out = Vec::new();
    for (i, t) in tls.iter().enumerate() {
        let pairs = std::iter::once((format!("tls[{i}].cert"), &t.cert, &t.key)).chain(
            t.sni
                .iter()
                .enumerate()
                .map(|(j, s)| (format!("tls[{i}].sni[{j}].cert"), &s.cert, &s.key)),
        );
        for (at, cert, key) in pairs {
            let Ok(c) = load_pair(cert, key) else {
                continue;
            };
            let days = (c.not_after - now) / 86_400;
            if c.not_after <= now {
                out.push(format!(
                    "{at}: {} expired {} days ago: clients will refuse it",
                    cert.display(),
                    -days
                ));
            } else if days < 14 {
                out.push(format!("{at}: {} expires in {days} days", cert.display()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("example.com"));
        assert!(valid_name("*.example.com"));
        assert!(valid_name("localhost"));
        assert!(!valid_name("*"));
        assert!(!valid_name("a..b"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a.*.b"));
    }

    #[test]
    fn unreadable_pair_is_named() {
        let e = load_pair(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .unwrap_err();
        assert!(e.starts_with("/nonexistent/c.pem: "), "{e}");
    }
}
