//! A static route as a cell serves it, with its header values computed once.
use std::path::PathBuf;
use std::time::Duration;

use http::header::HeaderValue;

use crate::config::StaticConfig;

/// One static route, with its header values computed once.
#[derive(Debug)]
pub struct StaticRoute {
    pub root: PathBuf,
    pub cache_control: Option<HeaderValue>,
    pub expires: Option<Duration>,
    pub index: Vec<String>,
    pub precompressed: bool,
}

impl StaticRoute {
    pub fn new(cfg: &StaticConfig) -> Self {
        let cache_control = match (&cfg.cache_control, cfg.expires) {
            (Some(cc), _) => HeaderValue::from_str(cc).ok(),
            (None, Some(e)) => HeaderValue::from_str(&format!("max-age={}", e.0.as_secs())).ok(),
            (None, None) => None,
        };
        Self {
            root: cfg.root.clone(),
            cache_control,
            expires: cfg.expires.map(|d| d.0),
            index: cfg.index.clone(),
            precompressed: cfg.precompressed,
        }
    }
}
