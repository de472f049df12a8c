//! How a proxy route's upstream group shares requests: weights, backups, servers taken out
//! after failures, hashing by client, and retries of what may be sent again.
use portico_tests::*;

/// Starts portico with `upstream` (the `[[upstream]]` body after `name`) behind `/u/`.
fn serve(site: &Site, upstream: &str) -> Portico {
    let cfg = format!(
        "[server]\nworkers = 1\n[[upstream]]\nname = \"u\"\n{upstream}\n[[route]]\nprefix = \"/u/\"\nproxy = {{ upstream = \"u\", path = \"/\" }}\n"
    );
    site.file("p.toml", cfg.as_bytes());
    Portico::start(&["-c", &site.root("p.toml")])
}

/// Backends `a` and `b`, and portico with both as the group's servers and `extra` keys.
fn pair(site: &Site, extra: &str) -> (Upstream, Upstream, Portico) {
    let a = tagged_backend("a", 30.0, site.path().join("a.log"));
    let b = tagged_backend("b", 30.0, site.path().join("b.log"));
    let servers = format!("servers = [\"{}\", \"{}\"]\n{extra}", a.addr(), b.addr());
    let p = serve(site, &servers);
    (a, b, p)
}

/// Which backends (`<tag>`) took `n` GETs of `path`.
fn tags(p: &Portico, path: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = get(p.addr, path).unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.text().split(' ').next().unwrap_or_default().to_string()
        })
        .collect()
}

fn count(v: &[String], tag: &str) -> usize {
    v.iter().filter(|t| *t == tag).count()
}

#[test]
fn proxy_balance_follows_weights_and_keeps_backups_for_outages() {
    let site = Site::new();
    let a = tagged_backend("a", 30.0, site.path().join("a.log"));
    let b = tagged_backend("b", 30.0, site.path().join("b.log"));
    let c = tagged_backend("c", 30.0, site.path().join("c.log"));
    let p = serve(
        &site,
        &format!(
            "servers = [{{ addr = \"{}\", weight = 3 }}, \"{}\", {{ addr = \"{}\", backup = true }}]",
            a.addr(),
            b.addr(),
            c.addr()
        ),
    );
    let seen = tags(&p, "/u/x", 40);
    assert_eq!(
        (count(&seen, "a"), count(&seen, "b"), count(&seen, "c")),
        (30, 10, 0)
    );
    // Both primaries gone: the backup serves, with no client error.
    drop(a);
    drop(b);
    let seen = tags(&p, "/u/x", 10);
    assert_eq!(count(&seen, "c"), 10, "{seen:?}");
    wait_until(
        std::time::Duration::from_secs(5),
        "the outage logged",
        || {
            p.stderr_text()
                .contains("out of the group for fail_timeout")
        },
    );
}

#[test]
fn proxy_balance_takes_a_dead_server_out_and_loses_no_request() {
    let site = Site::new();
    let (a, _b, p) = pair(&site, "max_fails = 1\nfail_timeout = \"30s\"");
    assert_eq!(count(&tags(&p, "/u/x", 4), "a"), 2);
    drop(a);
    // Every request succeeds (the refused one goes to b), and a is tried once only.
    let seen = tags(&p, "/u/x", 20);
    assert_eq!(count(&seen, "b"), 20);
    wait_until(
        std::time::Duration::from_secs(5),
        "the refusal logged",
        || p.stderr_text().contains("connect failed"),
    );
    let refusals = p.stderr_text().matches("connect failed").count();
    assert_eq!(refusals, 1, "{}", p.stderr_text());
}

#[test]
fn proxy_balance_hash_keeps_a_client_on_one_server() {
    let site = Site::new();
    let (_a, _b, p) = pair(&site, "balance = \"hash\"");
    let seen = tags(&p, "/u/x", 10);
    assert!(seen.iter().all(|t| *t == seen[0]), "{seen:?}");
}

#[test]
fn proxy_balance_least_conn_and_p2c_serve() {
    for policy in ["least-conn", "p2c-ewma"] {
        let site = Site::new();
        let (_a, _b, p) = pair(&site, &format!("balance = \"{policy}\""));
        let seen = tags(&p, "/u/x", 10);
        assert_eq!(count(&seen, "a") + count(&seen, "b"), 10, "{policy}");
    }
}

#[test]
fn proxy_balance_retries_a_timed_out_get_but_never_a_post() {
    let site = Site::new();
    // Both servers are slow: the GET is tried on each (504 after both), the POST once.
    let (_a, _b, p) = pair(&site, "read_timeout = \"1s\"\nmax_fails = 0");
    let r = get(p.addr, "/u/slow?s=3").unwrap();
    assert_eq!(r.status, 504);
    // One line per server tried (the log reaches the test a little after the response).
    let tries = |p: &Portico| {
        p.stderr_text()
            .lines()
            .filter(|l| l.contains(" server 127.0.0.1:") && l.contains("no response within"))
            .count()
    };
    wait_until(
        std::time::Duration::from_secs(5),
        "both servers tried",
        || tries(&p) >= 2,
    );
    let r = request(p.addr, "POST", "/u/slow?s=3", &[("Content-Length", "0")]).unwrap();
    assert_eq!(r.status, 504);
    wait_until(std::time::Duration::from_secs(5), "the POST tried", || {
        tries(&p) >= 3
    });
    // A fast path on the same group still works, and the POST was not sent again.
    assert_eq!(get(p.addr, "/u/x").unwrap().status, 200);
    assert_eq!(tries(&p), 3, "{}", p.stderr_text());
}

#[test]
fn proxy_balance_metrics_count_per_server() {
    let site = Site::new();
    let a = tagged_backend("a", 30.0, site.path().join("a.log"));
    let b = tagged_backend("b", 30.0, site.path().join("b.log"));
    let (a_addr, b_addr) = (a.addr(), b.addr());
    let p = serve(
        &site,
        &format!("servers = [\"{a_addr}\", \"{b_addr}\"]\nfail_timeout = \"30s\""),
    );
    drop(a);
    assert_eq!(count(&tags(&p, "/u/x", 6), "b"), 6);
    let series = |name: &str, server: std::net::SocketAddr, extra: &str| {
        format!("{name}{{upstream=\"u\",server=\"{server}\"{extra}}}")
    };
    let text = p.wait_metrics(std::time::Duration::from_secs(5), |m| {
        metric_value(
            m,
            &series(
                "portico_upstream_requests_total",
                b_addr,
                ",status_class=\"2xx\"",
            ),
        ) == Some(6.0)
    });
    assert_eq!(
        metric_value(
            &text,
            &series("portico_upstream_connect_errors_total", a_addr, "")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, &series("portico_upstream_server_up", a_addr, "")),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&text, &series("portico_upstream_server_up", b_addr, "")),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            &series("portico_upstream_response_header_seconds_count", b_addr, "")
        ),
        Some(6.0)
    );
    // The status page's table says the same.
    let status = get(p.admin.unwrap(), "/status.json").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    let ups = v["upstreams"].as_array().unwrap();
    let row = |addr: std::net::SocketAddr| {
        ups.iter()
            .find(|u| u["server"] == addr.to_string())
            .unwrap_or_else(|| panic!("{addr} not in {ups:?}"))
    };
    assert_eq!(row(a_addr)["up"], false);
    assert_eq!(row(a_addr)["connect_errors"], 1);
    assert_eq!(
        (
            row(b_addr)["up"].clone(),
            row(b_addr)["responses"][1].clone()
        ),
        (true.into(), 6.into())
    );
    // The names and help texts pass Prometheus's own checks.
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(
            !said.contains("portico_upstream"),
            "promtool on the upstream series:\n{said}"
        );
    } else {
        skip_part(
            "proxy_balance_metrics_count_per_server",
            "promtool",
            "promtool not installed (cargo xtask test installs it)",
        );
    }
}

#[test]
fn proxy_balance_health_checks_take_a_server_out_and_back() {
    let site = Site::new();
    let (a, _b, p) = pair(
        &site,
        "health_check = { path = \"/healthz\", interval = \"200ms\", fails = 2, passes = 2 }",
    );
    // a's checks start failing: it is out (requests keep succeeding, all on b).
    site.file("a.down", b"");
    wait_until(
        std::time::Duration::from_secs(10),
        "a out of the group",
        || {
            p.stderr_text()
                .contains("health checks of /healthz fail; out of the group")
        },
    );
    assert_eq!(count(&tags(&p, "/u/x", 10), "b"), 10);
    let up = format!(
        "portico_upstream_server_up{{upstream=\"u\",server=\"{}\"}}",
        a.addr()
    );
    assert_eq!(metric_value(&p.metrics(), &up), Some(0.0));
    // Healthy again: back after two passing checks, and taking its share.
    std::fs::remove_file(site.path().join("a.down")).unwrap();
    wait_until(
        std::time::Duration::from_secs(10),
        "a back in the group",
        || {
            p.stderr_text()
                .contains("health checks pass again; back in the group")
        },
    );
    let seen = tags(&p, "/u/x", 10);
    assert_eq!((count(&seen, "a"), count(&seen, "b")), (5, 5), "{seen:?}");
}
