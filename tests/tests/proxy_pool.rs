//! The proxy's connection pool against a keep-alive upstream (Python's `http.server` with
//! HTTP/1.1): connections are reused, and one the upstream closed while idle is replaced
//! without the client seeing an error.
use std::time::Duration;

use portico_tests::*;

/// The upstream-side `<tag> <client port>` each of `n` requests came on.
fn answers(p: &Portico, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = get(p.addr, "/k/x").unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.text()
        })
        .collect()
}

#[test]
fn proxy_pool_reuses_upstream_connections() {
    let site = Site::new();
    let b = tagged_backend("a", 30.0, site.path().join("a.log"));
    let url = format!("/k/=http://{}/", b.addr());
    let p = Portico::start(&["--proxy", &url, "--workers", "1"]);
    let seen = answers(&p, 5);
    assert!(
        seen.iter().all(|s| *s == seen[0]),
        "every request on one pooled connection: {seen:?}"
    );
}

#[test]
fn proxy_pool_replaces_a_connection_the_upstream_closed() {
    let site = Site::new();
    let b = tagged_backend("a", 0.5, site.path().join("a.log"));
    let url = format!("/k/=http://{}/", b.addr());
    let p = Portico::start(&["--proxy", &url, "--workers", "1"]);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.extend(answers(&p, 1));
        // Longer than the upstream's keep-alive timeout (the scenario itself): the pooled
        // connection is closed by the upstream before the next request takes it.
        std::thread::sleep(Duration::from_millis(800));
    }
    assert_eq!(seen.len(), 3, "no request failed");
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]),
        "each request after the upstream's timeout on a new connection: {seen:?}"
    );
}
