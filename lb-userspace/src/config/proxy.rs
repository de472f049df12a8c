//! Reverse-proxy configuration: `[[upstream]]` groups of servers, and `proxy` routes (a table,
//! or the shorthand `proxy = "http://host:port/path"` / `"unix:/path.sock"`).
use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{Dur, ListenAddr, parse_cidr};

/// A group of servers the proxy routes of a cell share a connection pool for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// `host:port` or `unix:/path`, tried in turn (round-robin).
    pub servers: Vec<ListenAddr>,
    /// Idle pooled connections kept per cell and server.
    #[serde(default = "default_keepalive")]
    pub keepalive: i64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Longest wait for the response head (504 past it), and between response bytes.
    #[serde(default = "default_io_timeout")]
    pub read_timeout: Dur,
    /// Pooled connections idle this long are closed, before a typical upstream keep-alive
    /// timeout closes them under a request.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
}

fn default_keepalive() -> i64 {
    32
}
fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_io_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_idle_timeout() -> Dur {
    Dur(Duration::from_secs(50))
}

impl UpstreamConfig {
    /// An upstream of one server with the defaults (the `proxy = "URL"` shorthand).
    pub fn single(name: String, server: ListenAddr) -> Self {
        UpstreamConfig {
            name,
            servers: vec![server],
            keepalive: default_keepalive(),
            connect_timeout: default_connect_timeout(),
            read_timeout: default_io_timeout(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// How `Location` and `Refresh` response headers are mapped back to the client's URL space.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Redirect {
    /// The upstream path (`path`) is replaced by the route prefix, once.
    #[default]
    Default,
    Off,
    /// Explicit `[from, to]` prefix pairs, tried in order.
    Pairs(Vec<(String, String)>),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RedirectRepr {
    Word(String),
    Pairs(Vec<(String, String)>),
}

impl TryFrom<RedirectRepr> for Redirect {
    type Error = String;
    fn try_from(r: RedirectRepr) -> Result<Self, String> {
        match r {
            RedirectRepr::Word(w) if w == "default" => Ok(Redirect::Default),
            RedirectRepr::Word(w) if w == "off" => Ok(Redirect::Off),
            RedirectRepr::Word(w) => Err(format!(
                "{w:?}: expected \"default\", \"off\" or [[from, to], ...]"
            )),
            RedirectRepr::Pairs(p) => Ok(Redirect::Pairs(p)),
        }
    }
}

impl From<Redirect> for RedirectRepr {
    fn from(r: Redirect) -> Self {
        match r {
            Redirect::Default => RedirectRepr::Word("default".into()),
            Redirect::Off => RedirectRepr::Word("off".into()),
            Redirect::Pairs(p) => RedirectRepr::Pairs(p),
        }
    }
}

impl Serialize for Redirect {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RedirectRepr::from(self.clone()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Redirect {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RedirectRepr::deserialize(d)?
            .try_into()
            .map_err(serde::de::Error::custom)
    }
}

/// A proxy route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The `[[upstream]]` by name; set by `validate()` for a `url`.
    #[serde(default)]
    pub upstream: String,
    /// `http://host:port/path` or `unix:/path.sock`: one server (and `path` from the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Replaces the route prefix in the request path (nginx's `proxy_pass` URI part); None:
    /// the request target is passed unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub redirect: Redirect,
    /// Request headers to set (`$host`, `$remote_addr` and `$scheme` are replaced).
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    /// Peers whose X-Forwarded-* / X-Real-IP / Forwarded headers are kept (and appended to);
    /// from any other peer they are replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Tunnel `Connection: upgrade` requests (WebSocket): the upstream's 101 reaches the
    /// client and the cell relays bytes both ways. Off: Upgrade is dropped like any
    /// hop-by-hop field.
    #[serde(default)]
    pub websocket: bool,
}

/// `proxy = "URL"` or `proxy = { ... }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ProxyRepr {
    Url(String),
    Table(Box<ProxyTable>),
}

/// The table form, as written (deserialised apart so the URL form stays a plain string).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyTable {
    #[serde(default)]
    upstream: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    redirect: Redirect,
    #[serde(default)]
    set_headers: BTreeMap<String, String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    websocket: bool,
}

impl ProxyConfig {
    pub fn from_url(url: String) -> Self {
        ProxyConfig {
            upstream: String::new(),
            url: Some(url),
            path: None,
            redirect: Redirect::Default,
            set_headers: BTreeMap::new(),
            trusted_proxies: Vec::new(),
            websocket: false,
        }
    }
}

/// Deserialises a route's `proxy` in either form.
pub fn deserialize_proxy<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<ProxyConfig>, D::Error> {
    Ok(Some(match ProxyRepr::deserialize(d)? {
        ProxyRepr::Url(u) => ProxyConfig::from_url(u),
        ProxyRepr::Table(t) => ProxyConfig {
            upstream: t.upstream,
            url: t.url,
            path: t.path,
            redirect: t.redirect,
            set_headers: t.set_headers,
            trusted_proxies: t.trusted_proxies,
            websocket: t.websocket,
        },
    }))
}

/// A proxy URL: the one server it names, and its path part (None when it has none).
pub fn parse_proxy_url(url: &str) -> Result<(ListenAddr, Option<String>), String> {
    if url.starts_with("unix:") {
        return Ok((url.parse()?, None));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "{url:?}: expected http://host:port[/path] or unix:/path.sock (https upstreams are not supported)"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_string())),
        None => (rest, None),
    };
    let addr: ListenAddr = authority
        .parse()
        .map_err(|_| format!("{url:?}: the server must be an IP address and port"))?;
    if let ListenAddr::Unix(_) = addr {
        return Err(format!("{url:?}: expected host:port after http://"));
    }
    Ok((addr, path))
}

/// A proxy route: a `url` becomes an upstream of one server (shared by routes with the same
/// server) and the path part; the upstream must exist; headers must be valid.
pub fn validate_proxy(
    p: &mut ProxyConfig,
    upstreams: &mut Vec<UpstreamConfig>,
    key: &dyn Fn(&str) -> String,
    bad: &mut dyn FnMut(String, String),
) {
    match (p.url.take(), p.upstream.is_empty()) {
        (Some(_), false) => bad(key("proxy"), "give `upstream` or `url`, not both".into()),
        (None, true) => bad(
            key("proxy.upstream"),
            "is required (the name of an [[upstream]]), or give `url`".into(),
        ),
        (Some(url), true) => match parse_proxy_url(&url) {
            Err(e) => bad(key("proxy"), e),
            Ok((server, path)) => {
                let name = server.to_string();
                if !upstreams.iter().any(|u| u.name == name) {
                    upstreams.push(UpstreamConfig::single(name.clone(), server));
                }
                p.upstream = name;
                if p.path.is_none() {
                    p.path = path;
                }
            }
        },
        (None, false) => {
            if !upstreams.iter().any(|u| u.name == p.upstream) {
                bad(
                    key("proxy.upstream"),
                    format!("no [[upstream]] is named {:?}", p.upstream),
                );
            }
        }
    }
    if let Some(path) = &p.path
        && !path.starts_with('/')
    {
        bad(key("proxy.path"), format!("{path:?} must start with '/'"));
    }
    if let Redirect::Pairs(pairs) = &p.redirect {
        for (j, (from, _)) in pairs.iter().enumerate() {
            if from.is_empty() {
                bad(
                    key(&format!("proxy.redirect[{j}]")),
                    "`from` cannot be empty".into(),
                );
            }
        }
    }
    for (name, value) in &p.set_headers {
        let k = key(&format!("proxy.set_headers.{name}"));
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            bad(k.clone(), "is not a valid header name".into());
        }
        let mut rest = value.as_str();
        while let Some(i) = rest.find('$') {
            let var: String = rest[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !PROXY_VARIABLES.contains(&var.as_str()) {
                bad(
                    k.clone(),
                    format!("unknown variable ${var} (known: $host, $remote_addr, $scheme)"),
                );
            }
            rest = &rest[i + 1 + var.len()..];
        }
        if http::HeaderValue::from_str(value).is_err() {
            bad(k, format!("{value:?} is not a valid header value"));
        }
    }
    for (j, cidr) in p.trusted_proxies.iter().enumerate() {
        if let Err(e) = parse_cidr(cidr) {
            bad(key(&format!("proxy.trusted_proxies[{j}]")), e);
        }
    }
}

/// Variables a `set_headers` value may use.
pub const PROXY_VARIABLES: [&str; 3] = ["host", "remote_addr", "scheme"];

pub fn validate_upstreams(upstreams: &[UpstreamConfig], bad: &mut dyn FnMut(String, String)) {
    let mut names = std::collections::HashSet::new();
    for (i, u) in upstreams.iter().enumerate() {
        let key = |k: &str| format!("upstream[{i}].{k}");
        if u.name.is_empty() {
            bad(key("name"), "is required".into());
        } else if !names.insert(u.name.as_str()) {
            bad(
                key("name"),
                format!("{:?} is used by another upstream", u.name),
            );
        }
        if u.servers.is_empty() {
            bad(key("servers"), "at least one server is needed".into());
        }
        if u.keepalive < 0 {
            bad(key("keepalive"), "cannot be negative".into());
        }
        for (name, d) in [
            ("connect_timeout", u.connect_timeout),
            ("read_timeout", u.read_timeout),
            ("idle_timeout", u.idle_timeout),
        ] {
            if d.0.is_zero() {
                bad(key(name), "must be more than 0".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls() {
        let (a, p) = parse_proxy_url("http://127.0.0.1:8001/").unwrap();
        assert_eq!(
            (a.to_string(), p.as_deref()),
            ("127.0.0.1:8001".into(), Some("/"))
        );
        let (a, p) = parse_proxy_url("http://[::1]:80").unwrap();
        assert_eq!((a.to_string(), p), ("[::1]:80".into(), None));
        let (a, p) = parse_proxy_url("unix:/run/d.sock").unwrap();
        assert_eq!((a.to_string(), p), ("unix:/run/d.sock".into(), None));
        for bad in [
            "https://127.0.0.1:1/",
            "http://example.com:80/",
            "127.0.0.1:80",
            "http://127.0.0.1/",
        ] {
            assert!(parse_proxy_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redirect_forms_round_trip() {
        for r in [
            Redirect::Default,
            Redirect::Off,
            Redirect::Pairs(vec![("/a/".into(), "/b/".into())]),
        ] {
            let j = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Redirect>(&j).unwrap(), r);
        }
        assert!(serde_json::from_str::<Redirect>("\"sometimes\"").is_err());
    }

    fn validate(text: &str) -> (crate::config::Config, Vec<(String, String)>) {
        let mut cfg = crate::config::Config::parse(text, "t.toml").expect("parses");
        let errors = match cfg.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| (e.key, e.message)).collect(),
        };
        (cfg, errors)
    }

    #[test]
    fn websocket_is_off_unless_a_table_turns_it_on() {
        let (cfg, errors) = validate(
            r#"
            [[route]]
            prefix = "/a/"
            proxy = "http://127.0.0.1:8001/"
            [[route]]
            prefix = "/b/"
            proxy = { url = "http://127.0.0.1:8001/", websocket = true }
            "#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let ws: Vec<bool> = cfg
            .routes
            .iter()
            .map(|r| r.proxy.as_ref().unwrap().websocket)
            .collect();
        assert_eq!(ws, [false, true]);
    }

    #[test]
    fn url_shorthands_become_upstreams() {
        let (cfg, errors) = validate(
            r#"
            [[route]]
            prefix = "/a/"
            proxy = "http://127.0.0.1:8001/"
            [[route]]
            prefix = "/b/"
            proxy = { url = "http://127.0.0.1:8001/v2/", redirect = "off" }
            [[route]]
            prefix = "/c"
            proxy = "unix:/run/c.sock"
            "#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<&str> = cfg.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            ["127.0.0.1:8001", "unix:/run/c.sock"],
            "one upstream per server"
        );
        let p = |i: usize| cfg.routes[i].proxy.as_ref().unwrap();
        assert_eq!(
            (p(0).upstream.as_str(), p(0).path.as_deref()),
            ("127.0.0.1:8001", Some("/"))
        );
        assert_eq!(p(1).path.as_deref(), Some("/v2/"));
        assert_eq!(p(1).redirect, Redirect::Off);
        assert_eq!(p(2).path, None);
        assert!(p(0).url.is_none(), "resolved before the cells see it");
    }

    #[test]
    fn every_proxy_problem_is_reported() {
        let (_, errors) = validate(
            r#"
            [[upstream]]
            name = "app"
            servers = []
            keepalive = -1
            read_timeout = 0
            [[upstream]]
            name = "app"
            servers = ["127.0.0.1:1"]
            [[route]]
            prefix = "/a/"
            proxy = { upstream = "nope", path = "x", set_headers = { "X-Y" = "$bogus", "bad name" = "v" }, trusted_proxies = ["10.0.0.0/99"] }
            [[route]]
            prefix = "/b/"
            proxy = { upstream = "app", url = "http://127.0.0.1:2/" }
            [[route]]
            prefix = "/c/"
            proxy = "https://127.0.0.1:3/"
            [[route]]
            prefix = "/d/"
            proxy = "http://127.0.0.1:4/"
            static = { root = "/tmp" }
            "#,
        );
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        for want in [
            "route[0].proxy.upstream",
            "route[0].proxy.path",
            "route[0].proxy.set_headers.X-Y",
            "route[0].proxy.set_headers.bad name",
            "route[0].proxy.trusted_proxies[0]",
            "route[1].proxy",
            "route[2].proxy",
            "route[3]",
            "upstream[0].servers",
            "upstream[0].keepalive",
            "upstream[0].read_timeout",
            "upstream[1].name",
        ] {
            assert!(keys.contains(&want), "{want} missing from {errors:#?}");
        }
    }
}
