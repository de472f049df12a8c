//! Active health checks: every `interval` a cell asks each server of a group for the check's
//! path on a fresh connection; the results feed the group's balancer (out after `fails`
//! failures in a row, back after `passes` passes).
use std::rc::Rc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Uri};

use super::pool::{Server, UpBody, Upstream, Upstreams};
use crate::config::{HealthCheck, ListenAddr, UpstreamConfig};

/// Starts the active health checks of the groups that have them (on the cell's loop).
pub fn start(upstreams: &Upstreams, cfgs: &[UpstreamConfig]) {
    for cfg in cfgs {
        if let (Some(check), Some(u)) = (&cfg.health_check, upstreams.get(&cfg.name)) {
            tokio::task::spawn_local(run(u, check.clone()));
        }
    }
}

/// Checks `upstream`'s servers for as long as the cell runs.
async fn run(upstream: Rc<Upstream>, check: HealthCheck) {
    let Ok(uri) = check.path.parse::<Uri>() else {
        return; // validate() refuses such a path
    };
    let mut tick = tokio::time::interval(check.interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (i, server) in upstream.servers.iter().enumerate() {
            let ok = probe(&upstream, server, &uri).await;
            let changed = upstream
                .balancer
                .borrow_mut()
                .checked(i, ok, check.fails, check.passes);
            upstream.publish(i, Instant::now());
            if changed {
                if ok {
                    tracing::info!(
                        "upstream {} server {}: health checks pass again; back in the group",
                        upstream.name,
                        server.addr
                    );
                } else {
                    tracing::warn!(
                        "upstream {} server {}: health checks of {} fail; out of the group",
                        upstream.name,
                        server.addr,
                        check.path
                    );
                }
            }
        }
    }
}

/// One check: a 2xx or 3xx answer within the group's timeouts.
async fn probe(upstream: &Upstream, server: &Server, uri: &Uri) -> bool {
    let Ok(mut sender) = server
        .connect(upstream.connect_timeout, upstream.send_timeout)
        .await
    else {
        return false;
    };
    let host = match &server.addr {
        ListenAddr::Tcp(a) => a.to_string(),
        ListenAddr::Unix(_) => "localhost".into(),
    };
    let mut req = Request::new(UpBody::Empty);
    *req.uri_mut() = uri.clone();
    if let Ok(v) = HeaderValue::from_str(&host) {
        req.headers_mut().insert(header::HOST, v);
    }
    match tokio::time::timeout(upstream.read_timeout, sender.send_request(req)).await {
        Ok(Ok(resp)) => resp.status().is_success() || resp.status().is_redirection(),
        _ => false,
    }
}
