//! Headers on the way through: hop-by-hop fields removed both ways (RFC 9110 section 7.6.1),
//! the forwarded fields set from what this cell saw, and the route's `set_headers`.
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// Fields that describe one connection, never the message. (`Trailer` is not one: it names
/// the message's trailer fields, and hyper sends only the trailers it names.)
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Removes the hop-by-hop fields, those the Connection field names first.
pub fn remove_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        h.remove(name);
    }
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
    let proxy: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        h.remove(name);
    }
}

/// The `Upgrade` value of a message that asks for an upgrade (`Connection: upgrade` and an
/// `Upgrade` field), else None.
pub fn upgrade_of(h: &HeaderMap) -> Option<HeaderValue> {
    let asks = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let value = h.get(header::UPGRADE)?;
    (asks && !value.is_empty()).then(|| value.clone())
}

/// Removes the hop-by-hop fields of a message that goes through a tunnel, except the two
/// that make the upgrade: `Connection: upgrade` and its `Upgrade`.
pub fn remove_hop_by_hop_keep_upgrade(h: &mut HeaderMap, upgrade: HeaderValue) {
    remove_hop_by_hop(h);
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, upgrade);
}

/// Fields a client could use to lie about where a request came from.
const FORWARDED: [HeaderName; 5] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
];

/// Sets X-Forwarded-For (appended to a trusted peer's), X-Forwarded-Proto and X-Real-IP. From
/// a peer that is not trusted, incoming forwarded fields are dropped first.
pub fn set_forwarded(
    h: &mut HeaderMap,
    peer: Option<IpAddr>,
    peer_text: &str,
    trusted: bool,
    tls: bool,
) {
    let chain = if trusted {
        h.get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        for name in &FORWARDED {
            h.remove(name);
        }
        String::new()
    };
    let me = peer.map_or_else(|| peer_text.to_string(), |ip| ip.to_string());
    let xff = if chain.is_empty() {
        me.clone()
    } else {
        format!("{chain}, {me}")
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    if !trusted || !h.contains_key("x-forwarded-proto") {
        h.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static(scheme(tls)),
        );
    }
    if (!trusted || !h.contains_key("x-real-ip"))
        && let Ok(v) = HeaderValue::from_str(&me)
    {
        h.insert(HeaderName::from_static("x-real-ip"), v);
    }
}

/// A response framed by both Content-Length and Transfer-Encoding (RFC 9112 section 6.3): hyper
/// reads it as chunked, another hop may trust the length, so it is a smuggling vector.
pub fn ambiguous_length(h: &HeaderMap) -> bool {
    h.contains_key(header::CONTENT_LENGTH) && h.contains_key(header::TRANSFER_ENCODING)
}

/// The client's scheme.
fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

/// A `set_headers` value with `$host`, `$remote_addr` and `$scheme` replaced.
pub fn expand(template: &str, host: &str, remote: &str, tls: bool) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let name: String = rest[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        match name.as_str() {
            "host" => out.push_str(host),
            "remote_addr" => out.push_str(remote),
            "scheme" => out.push_str(scheme(tls)),
            other => {
                // validate() refuses unknown names; keep the text as written.
                out.push('$');
                out.push_str(other);
            }
        }
        rest = &rest[i + 1 + name.len()..];
    }
    out.push_str(rest);
    out
}

/// Whether the client's `TE` accepts trailer fields (`TE: trailers`): then the upstream is told
/// so too, and the trailers it sends reach the client.
pub fn accepts_trailers(h: &HeaderMap) -> bool {
    h.get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["accept"]
        );
    }

    #[test]
    fn trailer_names_stay_and_te_trailers_is_recognised() {
        let mut h = map(&[("trailer", "x-checksum"), ("te", "gzip;q=0.5, Trailers")]);
        assert!(accepts_trailers(&h));
        remove_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["trailer"]
        );
        assert!(!accepts_trailers(&map(&[("te", "gzip")])));
        assert!(!accepts_trailers(&HeaderMap::new()));
    }

    #[test]
    fn a_tunnelled_message_keeps_its_upgrade_and_nothing_else_hop_by_hop() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade, X-Secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("proxy-authorization", "Basic x"),
        ]);
        let up = upgrade_of(&h).expect("asks for an upgrade");
        assert_eq!(up, "websocket");
        remove_hop_by_hop_keep_upgrade(&mut h, up);
        let mut keys = h.keys().map(HeaderName::as_str).collect::<Vec<_>>();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "connection",
                "sec-websocket-key",
                "sec-websocket-version",
                "upgrade"
            ]
        );
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn an_upgrade_needs_both_fields() {
        assert!(upgrade_of(&map(&[("upgrade", "websocket")])).is_none());
        assert!(upgrade_of(&map(&[("connection", "upgrade")])).is_none());
        assert!(upgrade_of(&map(&[("connection", "keep-alive"), ("upgrade", "h2c")])).is_none());
        assert!(upgrade_of(&map(&[("connection", "UPGRADE"), ("upgrade", "h2c")])).is_some());
    }

    #[test]
    fn forwarded_fields_from_untrusted_peers_are_replaced() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "1.2.3.4")]);
        set_forwarded(&mut h, Some(ip), "127.0.0.1", false, false);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(&mut h, Some(ip), "127.0.0.1", true, false);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn a_length_with_a_transfer_encoding_is_ambiguous() {
        let both = map(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
        assert!(ambiguous_length(&both));
        assert!(!ambiguous_length(&map(&[("content-length", "5")])));
        assert!(!ambiguous_length(&map(&[("transfer-encoding", "chunked")])));
        assert!(!ambiguous_length(&map(&[])));
    }

    #[test]
    fn variables_expand() {
        assert_eq!(
            expand("$host", "example.com:8080", "10.0.0.1", false),
            "example.com:8080"
        );
        assert_eq!(
            expand("for=$remote_addr;proto=$scheme", "h", "10.0.0.1", true),
            "for=10.0.0.1;proto=https"
        );
        assert_eq!(expand("plain", "h", "r", false), "plain");
    }
}
