//! One proxy route as a cell runs it: its upstream group and how URLs and headers map.
use std::rc::Rc;

use http::header::HeaderName;
use wsgi_worker::Cidr;

use super::pool::{Upstream, Upstreams};
use crate::config::{ProxyConfig, Redirect, Relay};

#[derive(Debug)]
pub struct ProxyRoute {
    pub prefix: String,
    pub upstream: Rc<Upstream>,
    pub path: Option<String>,
    pub redirect: Redirect,
    pub set_headers: Vec<(HeaderName, String)>,
    pub trusted: Vec<Cidr>,
    /// Upgrade requests are tunnelled (`websocket = true`).
    pub websocket: bool,
    /// Response bodies are read ahead of the client (`buffering = true`), up to `buffer_limit`.
    pub buffering: bool,
    pub buffer_limit: u64,
    /// How its tunnels are relayed (`relay`).
    pub relay: Relay,
}

impl ProxyRoute {
    /// None when the upstream is unknown (validate() refuses such a configuration).
    pub fn new(prefix: &str, cfg: &ProxyConfig, upstreams: &Upstreams) -> Option<Self> {
        Some(ProxyRoute {
            prefix: prefix.to_string(),
            upstream: upstreams.get(&cfg.upstream)?,
            path: cfg.path.clone(),
            redirect: cfg.redirect.clone(),
            set_headers: cfg
                .set_headers
                .iter()
                .filter_map(|(k, v)| Some((HeaderName::from_bytes(k.as_bytes()).ok()?, v.clone())))
                .collect(),
            trusted: cfg
                .trusted_proxies
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            websocket: cfg.websocket,
            buffering: cfg.buffering,
            buffer_limit: cfg.buffer_limit.0,
            relay: cfg.relay,
        })
    }
}
