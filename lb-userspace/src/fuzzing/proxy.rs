//! `location_rewrite` and `forwarded`: what a proxy route maps and what the forwarded fields
//! say, in the cell (`cell::proxy`) and in the Python gateways (`wsgi_worker::forwarded`).
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use wsgi_worker::{Cidr, ConnInfo};

use crate::cell::proxy::headers::set_forwarded;
use crate::cell::proxy::rewrite::{redirect, refresh, upstream_target};
use crate::config::Redirect;

/// Lines: route prefix, upstream `path` (empty: none), then a request path below the prefix,
/// then a `Location` value. The target goes to the upstream under `path`; a redirect the
/// upstream sends back to that same place maps to the original target; and a redirect that
/// means this site never comes back as a network-path (`//host`) that would leave it.
pub fn location_rewrite(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(4, '\n');
    let (prefix, path, below, location) = (
        lines.next().unwrap_or(""),
        lines.next().unwrap_or(""),
        lines.next().unwrap_or(""),
        lines.next().unwrap_or(""),
    );
    // What validate() lets through: both start with one '/' (`path` may be absent).
    let one_slash = |p: &str| p.starts_with('/') && !p[1..].starts_with(['/', '\\']);
    if !one_slash(prefix) || !(path.is_empty() || one_slash(path)) {
        return;
    }
    let path = (!path.is_empty()).then_some(path);
    let hosts = ["example.com", "127.0.0.1:8001"];
    let rule = Redirect::Default;

    let target = format!("{}/{below}", prefix.trim_end_matches('/'));
    let upstream = upstream_target(&target, prefix, path);
    if let Some(p) = path {
        assert!(upstream.starts_with(p), "{target:?} -> {upstream:?}");
    } else {
        assert_eq!(upstream, target);
    }
    // The round trip, where the request path is a plain one (no empty segment, query or
    // fragment) and the upstream's redirect does not already look like the client's space.
    let plain = !below.is_empty()
        && below
            .split('/')
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'));
    if let Some(p) = path
        && plain
        && !upstream.starts_with(prefix)
    {
        let back = redirect(&upstream, &rule, prefix, Some(p), &hosts);
        assert_eq!(back.as_deref(), Some(target.as_str()), "{upstream:?}");
        let absolute = format!("http://example.com{upstream}");
        let back = redirect(&absolute, &rule, prefix, Some(p), &hosts);
        assert_eq!(back.as_deref(), Some(target.as_str()), "{absolute:?}");
    }

    if let Some(mapped) = redirect(location, &rule, prefix, path, &hosts) {
        assert!(
            mapped.starts_with('/') && !mapped[1..].starts_with(['/', '\\']),
            "{location:?} under {prefix:?} / {path:?} -> {mapped:?}: not a path on this site"
        );
    }
    let pairs = Redirect::Pairs(vec![(prefix.to_string(), below.to_string())]);
    if let Some(mapped) = redirect(location, &pairs, prefix, path, &hosts) {
        assert_eq!(mapped, format!("{below}{}", &location[prefix.len()..]));
    }
    let page = format!("0; URL={location}");
    if let Some(r) = refresh(&page, |u| redirect(u, &rule, prefix, path, &hosts)) {
        assert!(r.starts_with("0; URL="), "{page:?} -> {r:?}");
    }
    let _ = refresh(location, |u| Some(u.to_string()));
}

/// Fields `forwarded` reads, chosen by a line's first byte.
const NAMES: [&str; 6] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-prefix",
    "x-real-ip",
    "forwarded",
];

/// First line: the peer's address; second: the trusted blocks (comma-separated); then one
/// header field a line (its first byte picks the name). For the Python gateways: nothing is
/// believed from a peer that is not trusted, the client address is a hop of the header with
/// only trusted proxies after it, and scheme, host and prefix keep their shapes. In the cell:
/// an untrusted peer's fields are replaced, a trusted one's chain is extended by the peer.
pub fn forwarded(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let peer_text = lines.next().unwrap_or("").trim();
    let peer: Option<IpAddr> = peer_text.parse().ok();
    let trusted: Vec<Cidr> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let mut h = HeaderMap::new();
    for line in lines {
        let Some((&pick, value)) = line.as_bytes().split_first() else {
            continue;
        };
        let name = HeaderName::from_static(NAMES[usize::from(pick) % NAMES.len()]);
        if let Ok(v) = HeaderValue::from_bytes(value) {
            h.append(name, v);
        }
    }
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));

    let conn = ConnInfo {
        remote_ip: peer,
        remote_addr: peer_text.to_string(),
        remote_port: 4000,
        local_addr: "127.0.0.1".into(),
        local_port: 8080,
        tls: false,
    };
    let f = wsgi_worker::forwarded(&h, &conn, &trusted);
    if !peer.is_some_and(is_trusted) {
        assert_eq!(f, wsgi_worker::Forwarded::default());
    }
    if let Some(addr) = &f.remote_addr {
        let ip: IpAddr = addr.parse().expect("an address");
        let hops: Vec<&str> = h
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        // The rightmost untrusted hop; when every hop is a trusted proxy, the first.
        let at = if is_trusted(ip) {
            0
        } else {
            hops.iter()
                .rposition(|h| h.parse::<IpAddr>().ok() == Some(ip))
                .expect("one of the hops")
        };
        assert_eq!(
            hops[at].parse::<IpAddr>().ok(),
            Some(ip),
            "{addr} in {hops:?}"
        );
        // Only trusted proxies after it: anything else there could have been written by the
        // client (the whole header is the client's when every hop is trusted).
        assert!(
            hops[at + 1..]
                .iter()
                .all(|h| h.parse().is_ok_and(is_trusted)),
            "{addr} chosen from {hops:?}"
        );
    }
    assert!(matches!(f.scheme, None | Some("http" | "https")));
    if let Some(host) = &f.host {
        assert!(
            !host.is_empty() && !host.contains(['/', ' ', ',']),
            "{host:?}"
        );
    }
    if let Some(p) = &f.prefix {
        assert!(
            p.is_empty() || (p.starts_with('/') && !p.ends_with('/')),
            "{p:?}"
        );
    }

    let trust = peer.is_some_and(is_trusted);
    let before: Vec<String> = h
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let mut out = h.clone();
    set_forwarded(&mut out, peer, peer_text, trust, false);
    let me = peer.map_or_else(|| peer_text.to_string(), |ip| ip.to_string());
    let xff: Vec<_> = out.get_all("x-forwarded-for").iter().collect();
    if HeaderValue::from_str(&me).is_ok() {
        assert_eq!(xff.len(), 1, "{xff:?}");
        // Bytes: a Unix socket peer's description may be any text.
        let xff = xff[0].as_bytes();
        let chain = before.join(", ");
        let expect = if !trust || chain.is_empty() {
            me.clone()
        } else {
            format!("{chain}, {me}")
        };
        assert_eq!(xff, expect.as_bytes());
    }
    if !trust {
        assert_eq!(
            out.get("x-forwarded-proto").map(HeaderValue::as_bytes),
            Some(&b"http"[..])
        );
        assert!(!out.contains_key("x-forwarded-host") && !out.contains_key("forwarded"));
        let real: Vec<_> = out.get_all("x-real-ip").iter().collect();
        assert!(real.len() <= 1 && real.iter().all(|v| v.as_bytes() == me.as_bytes()));
    }
}
