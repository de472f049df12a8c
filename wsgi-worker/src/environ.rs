//! The pure parts of the PEP 3333 environ: connection facts, trusted-proxy headers, HTTP_* keys,
//! percent-decoding and latin-1 "native strings". Kept free of Python so they are unit-tested.
use std::net::IpAddr;

use http::HeaderMap;

/// What the cell knows about the connection a request arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub remote_ip: Option<IpAddr>,
    /// Text for REMOTE_ADDR (an IP, or the Unix socket peer's description).
    pub remote_addr: String,
    pub remote_port: u16,
    pub local_addr: String,
    pub local_port: u16,
    /// The client reached a TLS listener: the request's scheme is https unless a trusted
    /// proxy says otherwise.
    pub tls: bool,
}

/// An address block from `trusted_proxies`, e.g. `10.0.0.0/8` or `::1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, bits })
    }
}

impl Cidr {
    /// The block's first address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - self.bits as u32).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - self.bits as u32).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
    /// Prefix length.
    pub fn bits(&self) -> u8 {
        self.bits
    }
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.bits as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.bits as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network(), self.bits)
    }
}

/// Values taken from X-Forwarded-* when the peer is a trusted proxy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    pub remote_addr: Option<String>,
    pub scheme: Option<&'static str>,
    pub host: Option<String>,
    pub prefix: Option<String>,
}

fn last_value(h: &HeaderMap, name: &str) -> Option<String> {
    let v = h.get_all(name).iter().next_back()?.to_str().ok()?;
    let last = v.rsplit(',').next()?.trim();
    (!last.is_empty()).then(|| last.to_string())
}

/// Applies X-Forwarded-For/-Proto/-Host/-Prefix only when the peer is trusted. For the client
/// address, walks X-Forwarded-For from the right past trusted proxies (nginx's
/// `real_ip_recursive on`), so a client cannot spoof its address by sending the header itself.
pub fn forwarded(h: &HeaderMap, conn: &ConnInfo, trusted: &[Cidr]) -> Forwarded {
    let mut f = Forwarded::default();
    let Some(peer) = conn.remote_ip else {
        return f;
    };
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return f;
    }
    let mut hops: Vec<&str> = Vec::new();
    for v in h.get_all("x-forwarded-for") {
        if let Ok(s) = v.to_str() {
            hops.extend(s.split(',').map(str::trim).filter(|x| !x.is_empty()));
        }
    }
    let mut all_trusted = true;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => {}
            Ok(ip) => {
                f.remote_addr = Some(ip.to_string());
                all_trusted = false;
                break;
            }
            Err(_) => {
                // Not an address: what is left of it may be the client's own words.
                all_trusted = false;
                break;
            }
        }
    }
    if all_trusted && let Some(first) = hops.first().and_then(|h| h.parse::<IpAddr>().ok()) {
        // Every hop is a trusted proxy: the first one is the origin.
        f.remote_addr = Some(first.to_string());
    }
    f.scheme = match last_value(h, "x-forwarded-proto").as_deref() {
        // A proxy may say `wss`/`ws` for a WebSocket upgrade (uvicorn accepts both too).
        Some(p) if p.eq_ignore_ascii_case("https") || p.eq_ignore_ascii_case("wss") => {
            Some("https")
        }
        Some(p) if p.eq_ignore_ascii_case("http") || p.eq_ignore_ascii_case("ws") => Some("http"),
        _ => None,
    };
    f.host = last_value(h, "x-forwarded-host").filter(|v| !v.contains(['/', ' ']));
    f.prefix = last_value(h, "x-forwarded-prefix")
        .map(|p| format!("/{}", p.trim_matches('/')))
        .map(|p| if p == "/" { String::new() } else { p });
    f
}

/// `HTTP_USER_AGENT` for `user-agent`. Names with `_` are dropped (as nginx and gunicorn do):
/// otherwise `X_Forwarded_For` and `X-Forwarded-For` would land on the same key.
pub fn http_key(name: &str) -> Option<String> {
    if name.contains('_') {
        return None;
    }
    let mut k = String::with_capacity(5 + name.len());
    k.push_str("HTTP_");
    for c in name.chars() {
        k.push(if c == '-' {
            '_'
        } else {
            c.to_ascii_uppercase()
        });
    }
    Some(k)
}

/// A "native string" (PEP 3333): each byte becomes the code point of the same value (latin-1).
pub fn latin1(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.is_ascii() => std::borrow::Cow::Borrowed(s),
        _ => std::borrow::Cow::Owned(bytes.iter().map(|&b| b as char).collect()),
    }
}

/// PATH_INFO: the raw path percent-decoded to bytes (then read as latin-1, like every server).
pub fn decode_path(raw: &str) -> std::borrow::Cow<'_, [u8]> {
    percent_encoding::percent_decode_str(raw).into()
}

/// SERVER_NAME and SERVER_PORT from a Host header value, falling back to the listener.
pub fn split_host<'a>(host: Option<&'a str>, conn: &'a ConnInfo, https: bool) -> (&'a str, String) {
    let default_port = if https { "443" } else { "80" };
    match host {
        Some(h) if !h.is_empty() => {
            if let Some(rest) = h.strip_prefix('[') {
                // [v6]:port
                if let Some((addr, tail)) = rest.split_once(']') {
                    let port = tail.strip_prefix(':').unwrap_or(default_port);
                    return (addr, port.to_string());
                }
            }
            match h.rsplit_once(':') {
                Some((name, port)) if !name.contains(':') => (name, port.to_string()),
                _ => (h, default_port.to_string()),
            }
        }
        _ => (conn.local_addr.as_str(), conn.local_port.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(ip: &str) -> ConnInfo {
        ConnInfo {
            tls: false,
            remote_ip: ip.parse().ok(),
            remote_addr: ip.into(),
            remote_port: 4000,
            local_addr: "127.0.0.1".into(),
            local_port: 8080,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cidr_matching() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_headers_only_from_trusted_peers() {
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9, 10.0.0.5"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "example.com"),
            ("x-forwarded-prefix", "/shop/"),
        ]);
        let trusted: Vec<Cidr> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let f = forwarded(&h, &conn("127.0.0.1"), &trusted);
        assert_eq!(f.remote_addr.as_deref(), Some("203.0.113.9"));
        assert_eq!(f.scheme, Some("https"));
        assert_eq!(f.host.as_deref(), Some("example.com"));
        assert_eq!(f.prefix.as_deref(), Some("/shop"));
        // An untrusted peer's headers are ignored entirely.
        assert_eq!(
            forwarded(&h, &conn("192.0.2.1"), &trusted),
            Forwarded::default()
        );
        // No trusted proxies configured (the default): ignored.
        assert_eq!(forwarded(&h, &conn("127.0.0.1"), &[]), Forwarded::default());
    }

    #[test]
    fn a_hop_that_is_no_address_stops_the_walk() {
        // Found by the `forwarded` fuzz target: the first hop was taken as the client when an
        // unparsable hop stood between it and the trusted ones.
        let trusted: Vec<Cidr> = vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let h = headers(&[("x-forwarded-for", "1.2.3.4, garbage, 10.0.0.2")]);
        assert_eq!(
            forwarded(&h, &conn("127.0.0.1"), &trusted).remote_addr,
            None
        );
        let h = headers(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2")]);
        assert_eq!(
            forwarded(&h, &conn("127.0.0.1"), &trusted)
                .remote_addr
                .as_deref(),
            Some("10.0.0.1")
        );
    }

    #[test]
    fn spoofed_forwarded_for_is_skipped_from_the_right() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7")]);
        let trusted: Vec<Cidr> = vec!["127.0.0.1".parse().unwrap()];
        let f = forwarded(&h, &conn("127.0.0.1"), &trusted);
        assert_eq!(f.remote_addr.as_deref(), Some("198.51.100.7"));
    }

    #[test]
    fn http_keys_and_native_strings() {
        assert_eq!(http_key("user-agent").as_deref(), Some("HTTP_USER_AGENT"));
        assert_eq!(http_key("x_forwarded_for"), None);
        assert_eq!(latin1(b"abc"), "abc");
        assert_eq!(latin1(&[0x63, 0xe9]), "c\u{e9}");
        assert_eq!(&*decode_path("/a%20b/%C3%A9"), b"/a b/\xc3\xa9");
        assert_eq!(latin1(&decode_path("/%C3%A9")), "/\u{c3}\u{a9}");
    }

    #[test]
    fn host_splitting() {
        let c = conn("127.0.0.1");
        assert_eq!(
            split_host(Some("example.com:8000"), &c, false),
            ("example.com", "8000".into())
        );
        assert_eq!(
            split_host(Some("example.com"), &c, true),
            ("example.com", "443".into())
        );
        assert_eq!(split_host(Some("[::1]:9"), &c, false), ("::1", "9".into()));
        assert_eq!(split_host(None, &c, false), ("127.0.0.1", "8080".into()));
    }
}
