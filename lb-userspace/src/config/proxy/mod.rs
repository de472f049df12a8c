//! Reverse-proxy configuration: `[[upstream]]` groups of servers, and `proxy` routes (a table,
//! or the shorthand `proxy = "http://host:port/path"` / `"unix:/path.sock"`).
use std::collections::BTreeMap;
use std::time::Duration;

pub mod validate;

use serde::{Deserialize, Serialize};

use super::units::{Dur, ListenAddr, Size};

/// A group of servers the proxy routes of a cell share a connection pool for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// `"host:port"`, `"unix:/path"`, or `{ addr, weight, backup }`.
    pub servers: Vec<UpstreamServer>,
    /// Which server takes a request.
    #[serde(default)]
    pub balance: Balance,
    /// Idle pooled connections kept per cell and server.
    #[serde(default = "default_keepalive")]
    pub keepalive: i64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Longest a write to the server may make no progress (it stopped reading): 504.
    #[serde(default = "default_io_timeout")]
    pub send_timeout: Dur,
    /// Longest wait for the response head (504 past it), and between response bytes.
    #[serde(default = "default_io_timeout")]
    pub read_timeout: Dur,
    /// Pooled connections idle this long are closed, before a typical upstream keep-alive
    /// timeout closes them under a request.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Failures (connect errors, timeouts, invalid responses) within `fail_timeout` that take
    /// a server out for `fail_timeout` (0: never).
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: Dur,
    /// Active checks: each cell asks every server for `path` every `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// A server passes a check when it answers `path` with a 2xx or 3xx within the upstream's
/// `connect_timeout` and `read_timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    #[serde(default = "default_check_interval")]
    pub interval: Dur,
    /// Failed checks in a row that take a server out.
    #[serde(default = "default_check_fails")]
    pub fails: u32,
    /// Passed checks in a row that bring it back.
    #[serde(default = "default_check_passes")]
    pub passes: u32,
}

fn default_check_interval() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_check_fails() -> u32 {
    3
}
fn default_check_passes() -> u32 {
    2
}

/// How a cell chooses among an upstream's servers that are up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Smooth weighted round-robin (nginx's).
    #[default]
    RoundRobin,
    /// Fewest requests in flight per unit of weight.
    LeastConn,
    /// Two random choices, the lower peak-EWMA latency times load.
    P2cEwma,
    /// By client address (rendezvous hashing): a client keeps its server while it is up.
    Hash,
}

/// One server of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ServerRepr")]
pub struct UpstreamServer {
    pub addr: ListenAddr,
    pub weight: u32,
    /// Used only while every other server is down.
    pub backup: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ServerRepr {
    Addr(ListenAddr),
    Table(ServerTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerTable {
    addr: ListenAddr,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    backup: bool,
}

fn default_weight() -> u32 {
    1
}
fn default_max_fails() -> u32 {
    1
}
fn default_fail_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

impl TryFrom<ServerRepr> for UpstreamServer {
    type Error = String;
    fn try_from(r: ServerRepr) -> Result<Self, String> {
        Ok(match r {
            ServerRepr::Addr(addr) => UpstreamServer {
                addr,
                weight: 1,
                backup: false,
            },
            ServerRepr::Table(t) => UpstreamServer {
                addr: t.addr,
                weight: t.weight,
                backup: t.backup,
            },
        })
    }
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
            servers: vec![UpstreamServer {
                addr: server,
                weight: 1,
                backup: false,
            }],
            balance: Balance::RoundRobin,
            max_fails: default_max_fails(),
            fail_timeout: default_fail_timeout(),
            health_check: None,
            keepalive: default_keepalive(),
            connect_timeout: default_connect_timeout(),
            send_timeout: default_io_timeout(),
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
    /// Read the upstream's response body ahead of the client, up to `buffer_limit`, so a
    /// slow client frees the upstream connection early (nginx's `proxy_buffering`). Off: bytes
    /// pass as they arrive. The upstream's `X-Accel-Buffering: yes|no` overrides it.
    #[serde(default)]
    pub buffering: bool,
    /// The most response bytes held per request when buffering; past it the body streams.
    #[serde(default = "default_buffer_limit")]
    pub buffer_limit: Size,
    /// How a tunnel's bytes move between the client and the upstream (`websocket = true`).
    #[serde(default)]
    pub relay: Relay,
}

/// How a cell relays a tunnel (an upgraded connection) once the upstream's 101 is through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Relay {
    /// Userspace copy through a buffer per direction.
    #[default]
    Copy,
    /// splice(2) through a pipe per direction: the bytes stay in the kernel.
    Splice,
    /// Both sockets in a SOCKHASH and the `tunnel_relay` sk_skb program redirects between
    /// them; `copy` where the master could not load it.
    Sockmap,
}

impl Relay {
    /// The name in the configuration and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Relay::Copy => "copy",
            Relay::Splice => "splice",
            Relay::Sockmap => "sockmap",
        }
    }
}

fn default_buffer_limit() -> Size {
    Size(1 << 20)
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
    #[serde(default)]
    buffering: bool,
    #[serde(default = "default_buffer_limit")]
    buffer_limit: Size,
    #[serde(default)]
    relay: Relay,
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
            buffering: false,
            buffer_limit: default_buffer_limit(),
            relay: Relay::Copy,
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
            buffering: t.buffering,
            buffer_limit: t.buffer_limit,
            relay: t.relay,
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

    #[test]
    fn relay_names() {
        for r in [Relay::Copy, Relay::Splice, Relay::Sockmap] {
            let j = serde_json::to_string(&r).unwrap();
            assert_eq!(j, format!("{:?}", r.as_str()));
            assert_eq!(serde_json::from_str::<Relay>(&j).unwrap(), r);
        }
        assert!(serde_json::from_str::<Relay>("\"io_uring\"").is_err());
    }
}
