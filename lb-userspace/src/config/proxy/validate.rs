//! The checks of `[[upstream]]` groups and `proxy` routes (part of `Config::validate`).
use super::{ProxyConfig, Redirect, Relay, UpstreamConfig, parse_proxy_url};
use crate::config::units::parse_cidr;

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
        && (!path.starts_with('/') || path[1..].starts_with(['/', '\\']))
    {
        // `//x` (or `/\x`) as a Location reads as the host `x`: redirects could not be
        // mapped back.
        bad(
            key("proxy.path"),
            format!("{path:?} must start with one '/' (not two)"),
        );
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
    if p.buffering && p.buffer_limit.0 == 0 {
        bad(
            key("proxy.buffer_limit"),
            "must be more than 0 with buffering = true (or set buffering = false)".into(),
        );
    }
    if p.relay != Relay::Copy && !p.websocket {
        bad(
            key("proxy.relay"),
            format!(
                "{:?} relays tunnels, and this route has none (set websocket = true)",
                p.relay.as_str()
            ),
        );
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
    let total: usize = upstreams.iter().map(|u| u.servers.len()).sum();
    if total > crate::metrics::MAX_UPSTREAM_SERVERS {
        bad(
            "upstream".into(),
            format!(
                "{total} servers in all; at most {} (each has its block of shared metrics counters)",
                crate::metrics::MAX_UPSTREAM_SERVERS
            ),
        );
    }
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
        } else if u.servers.iter().all(|s| s.backup) {
            bad(
                key("servers"),
                "at least one server must not be a backup".into(),
            );
        }
        for (j, s) in u.servers.iter().enumerate() {
            if !(1..=1000).contains(&s.weight) {
                bad(
                    key(&format!("servers[{j}].weight")),
                    "must be 1 to 1000".into(),
                );
            }
        }
        if let Some(h) = &u.health_check {
            if !h.path.starts_with('/') || h.path.parse::<http::Uri>().is_err() {
                bad(
                    key("health_check.path"),
                    format!("{:?} must be a path starting with '/'", h.path),
                );
            }
            if h.interval.0.is_zero() {
                bad(key("health_check.interval"), "must be more than 0".into());
            }
            for (name, n) in [("fails", h.fails), ("passes", h.passes)] {
                if n == 0 {
                    bad(
                        key(&format!("health_check.{name}")),
                        "must be at least 1".into(),
                    );
                }
            }
        }
        if u.fail_timeout.0.is_zero() {
            bad(key("fail_timeout"), "must be more than 0".into());
        }
        if u.keepalive < 0 {
            bad(key("keepalive"), "cannot be negative".into());
        }
        for (name, d) in [
            ("connect_timeout", u.connect_timeout),
            ("send_timeout", u.send_timeout),
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
    use crate::config::proxy::Balance;

    /// Parses leniently and validates: the configuration and every problem, by key.
    fn validate(text: &str) -> (crate::config::Config, Vec<(String, String)>) {
        let (mut cfg, parse_errors) = crate::config::Config::parse_lenient(text, "t.toml");
        let mut errors: Vec<(String, String)> = parse_errors
            .into_iter()
            .map(|e| (e.key, e.message))
            .collect();
        if let Err(e) = cfg.validate() {
            errors.extend(e.0.into_iter().map(|e| (e.key, e.message)));
        }
        (cfg, errors)
    }

    #[test]
    fn servers_are_strings_or_tables() {
        let (cfg, errors) = validate(
            r#"
            [[upstream]]
            name = "u"
            servers = ["127.0.0.1:1", { addr = "unix:/run/u.sock", weight = 3 }, { addr = "127.0.0.1:2", backup = true }]
            balance = "p2c-ewma"
            [[upstream]]
            name = "v"
            servers = [{ addr = "127.0.0.1:3", backup = true }, { addr = "127.0.0.1:4", weight = 0 }]
            balance = "random"
            "#,
        );
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["upstream[1].balance", "upstream[1].servers[1].weight"],
            "{errors:?}"
        );
        let u = &cfg.upstreams[0];
        assert_eq!(u.balance, Balance::P2cEwma);
        assert_eq!(
            u.servers
                .iter()
                .map(|s| (s.weight, s.backup))
                .collect::<Vec<_>>(),
            [(1, false), (3, false), (1, true)]
        );
        let json = serde_json::to_string(&cfg).unwrap();
        let back: crate::config::Config = serde_json::from_str(&json).unwrap();
        assert_eq!(back.upstreams, cfg.upstreams);
        let (_, errors) = validate(
            r#"
            [[upstream]]
            name = "v"
            servers = [{ addr = "127.0.0.1:3", backup = true }, { addr = "127.0.0.1:4", weight = 0, backup = true }]
            "#,
        );
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["upstream[0].servers", "upstream[0].servers[1].weight"]
        );
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
            [[route]]
            prefix = "/e/"
            proxy = "http://127.0.0.1:5//x"
            [[route]]
            prefix = "/f/"
            proxy = { upstream = "app", path = "/\\x" }
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
            "route[4].proxy.path",
            "route[5].proxy.path",
            "upstream[0].servers",
            "upstream[0].keepalive",
            "upstream[0].read_timeout",
            "upstream[1].name",
        ] {
            assert!(keys.contains(&want), "{want} missing from {errors:#?}");
        }
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
    fn buffering_is_off_by_default_and_its_limit_is_checked() {
        let (cfg, errors) = validate(
            r#"
            [[route]]
            prefix = "/a/"
            proxy = "http://127.0.0.1:8001/"
            [[route]]
            prefix = "/b/"
            proxy = { url = "http://127.0.0.1:8001/", buffering = true, buffer_limit = "64k" }
            [[route]]
            prefix = "/c/"
            proxy = { url = "http://127.0.0.1:8001/", buffering = true, buffer_limit = 0 }
            "#,
        );
        let got: Vec<(bool, u64)> = cfg
            .routes
            .iter()
            .map(|r| {
                let p = r.proxy.as_ref().unwrap();
                (p.buffering, p.buffer_limit.0)
            })
            .collect();
        assert_eq!(got, [(false, 1 << 20), (true, 64 << 10), (true, 0)]);
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["route[2].proxy.buffer_limit"], "{errors:?}");
    }

    #[test]
    fn relay_is_copy_by_default_and_needs_websocket() {
        let (cfg, errors) = validate(
            r#"
            [[route]]
            prefix = "/a/"
            proxy = { url = "http://127.0.0.1:8001/", websocket = true }
            [[route]]
            prefix = "/b/"
            proxy = { url = "http://127.0.0.1:8001/", websocket = true, relay = "splice" }
            [[route]]
            prefix = "/c/"
            proxy = { url = "http://127.0.0.1:8001/", websocket = true, relay = "sockmap" }
            [[route]]
            prefix = "/d/"
            proxy = { url = "http://127.0.0.1:8001/", relay = "splice" }
            [[route]]
            prefix = "/e/"
            proxy = { url = "http://127.0.0.1:8001/", websocket = true, relay = "io_uring" }
            "#,
        );
        let got: Vec<Relay> = cfg
            .routes
            .iter()
            .filter_map(|r| Some(r.proxy.as_ref()?.relay))
            .collect();
        assert_eq!(
            got[..4],
            [Relay::Copy, Relay::Splice, Relay::Sockmap, Relay::Splice]
        );
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"route[3].proxy.relay"), "{errors:?}");
        assert!(
            keys.iter().any(|k| k.starts_with("route[4].proxy")),
            "{errors:?}"
        );
    }

    #[test]
    fn health_checks_are_checked() {
        let (cfg, errors) = validate(
            r#"
            [[upstream]]
            name = "u"
            servers = ["127.0.0.1:1"]
            health_check = { path = "/healthz" }
            [[upstream]]
            name = "v"
            servers = ["127.0.0.1:2"]
            health_check = { path = "healthz", interval = 0, fails = 0, passes = 0 }
            "#,
        );
        let h = cfg.upstreams[0].health_check.as_ref().unwrap();
        assert_eq!((h.interval.0.as_secs(), h.fails, h.passes), (5, 3, 2));
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "upstream[1].health_check.path",
                "upstream[1].health_check.interval",
                "upstream[1].health_check.fails",
                "upstream[1].health_check.passes"
            ]
        );
    }
}
