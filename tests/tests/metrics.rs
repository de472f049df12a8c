//! `/metrics` end to end: request-duration histograms by route, WSGI timings, per-cell process
//! numbers, and the exposition passing `promtool check metrics`.
use std::process::{Command, Stdio};
use std::time::Duration;

use portico_tests::*;

const APP: &str = "def application(e, s):\n    if e['PATH_INFO'] == '/boom':\n        raise ValueError('x')\n    s('200 OK', [('Content-Type', 'text/plain')])\n    return [b'hello']\n";

fn start() -> (Site, Portico) {
    let site = Site::new();
    site.file("www/a.txt", b"static!");
    site.file("app/app.py", APP.as_bytes());
    let cfg = format!(
        "[server]\nworkers = 2\n[[route]]\nprefix = \"/static/\"\nstatic = {{ root = \"{}\" }}\n[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"app:application\", chdir = \"{}\" }}\n",
        site.root("www"),
        site.root("app")
    );
    site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("p.toml")]);
    (site, p)
}

#[test]
fn request_histograms_by_route_and_wsgi_timings() {
    let (_site, p) = start();
    for _ in 0..10 {
        assert_eq!(get(p.addr, "/static/a.txt").unwrap().status, 200);
        assert_eq!(get(p.addr, "/hello").unwrap().status, 200);
    }
    assert_eq!(get(p.addr, "/static/missing").unwrap().status, 404);
    assert_eq!(get(p.addr, "/boom").unwrap().status, 500);
    // Every counter asserted below is recorded after the response leaves: wait for all of them.
    let m = p.wait_metrics(Duration::from_secs(5), |m| {
        let at_least = |series: &str, n: f64| metric_value(m, series).unwrap_or(0.0) >= n;
        metric_sum(m, "http_server_request_duration_seconds_count{") >= 22.0
            && at_least("portico_wsgi_queue_wait_seconds_count{route=\"/\"}", 11.0)
            && at_least("portico_wsgi_app_duration_seconds_count{route=\"/\"}", 11.0)
            && at_least("portico_wsgi_app_exceptions_total{route=\"/\"}", 1.0)
    });
    let static_ok = "http_server_request_duration_seconds_count{route=\"/static/\",method=\"GET\",status_class=\"2xx\"}";
    assert_eq!(metric_value(&m, static_ok), Some(10.0), "{m}");
    assert_eq!(
        metric_value(
            &m,
            "portico_http_requests_total{route=\"/static/\",status_class=\"4xx\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "portico_http_requests_total{route=\"/\",status_class=\"5xx\"}"
        ),
        Some(1.0)
    );
    // Static answers land in the sub-millisecond buckets.
    let sub_ms = "http_server_request_duration_seconds_bucket{route=\"/static/\",method=\"GET\",status_class=\"2xx\",le=\"0.001\"}";
    assert!(metric_value(&m, sub_ms).unwrap_or(0.0) >= 8.0, "{m}");
    assert_eq!(
        metric_value(
            &m,
            "portico_http_response_body_bytes_total{route=\"/static/\"}"
        ),
        Some(70.0 + "404 Not Found\n".len() as f64)
    );
    assert_eq!(
        metric_value(&m, "portico_wsgi_queue_wait_seconds_count{route=\"/\"}"),
        Some(11.0)
    );
    assert_eq!(
        metric_value(&m, "portico_wsgi_app_duration_seconds_count{route=\"/\"}"),
        Some(11.0)
    );
    assert_eq!(
        metric_value(&m, "portico_wsgi_app_exceptions_total{route=\"/\"}"),
        Some(1.0)
    );
    for series in [
        "portico_cell_rss_bytes{cell=\"0\"}",
        "portico_cell_cpu_seconds_total{cell=\"1\"}",
        "portico_wsgi_queue_depth{cell=\"0\"}",
        "portico_wsgi_threads_busy{cell=\"1\"}",
        "process_resident_memory_bytes",
    ] {
        assert!(metric_value(&m, series).is_some(), "{series} missing:\n{m}");
    }
    assert!(
        m.contains("portico_listen_queue_length{cell=\"0\",listener="),
        "{m}"
    );
    assert!(m.contains("portico_build_info{kernel="), "{m}");
}

#[test]
fn exposition_passes_promtool() {
    let (_site, p) = start();
    for path in ["/static/a.txt", "/hello", "/boom", "/nothing"] {
        get(p.addr, path).unwrap();
    }
    let m = p.metrics();
    match promtool_check(&m) {
        Some((passed, text)) => assert!(passed, "promtool: {text}"),
        None => skip("exposition_passes_promtool", PROMTOOL_MISSING),
    }
}

#[test]
fn openmetrics_when_the_scraper_asks_for_it() {
    let (_site, p) = start();
    for path in ["/static/a.txt", "/hello", "/boom"] {
        get(p.addr, path).unwrap();
    }
    let admin = p.admin.expect("admin");
    // What Prometheus 2.x sends.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let r = request(admin, "GET", "/metrics", &[("Accept", accept)]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let om = r.text();
    for want in [
        "# TYPE portico_cell_requests counter\n",
        "# TYPE portico_build info\n",
        "# TYPE http_server_request_duration_seconds histogram\n",
        "le=\"+Inf\"",
    ] {
        assert!(om.contains(want), "{want:?} missing:\n{om}");
    }
    assert!(om.ends_with("# EOF\n"), "{om}");
    // Without the header: text 0.0.4, as before.
    let r = get(admin, "/metrics").unwrap();
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(
        r.text()
            .contains("# TYPE portico_cell_requests_total counter")
    );

    // The reference client's strict OpenMetrics parser accepts every line.
    let Some(venv) = test_venv() else {
        skip_part(
            "openmetrics_when_the_scraper_asks_for_it",
            "strict parser check",
            "no test venv (cargo xtask test creates it)",
        );
        return;
    };
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\nprint(sum(1 for _ in parse(sys.stdin.read())))\n";
    let mut child = Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(om.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "OpenMetrics parser: {}\n{om}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(families >= 20, "{families} families parsed");
}

#[test]
fn histograms_can_be_turned_off() {
    let site = Site::new();
    site.file("www/a.txt", b"x");
    site.file(
        "p.toml",
        format!(
            "[metrics]\nenabled = false\n[[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\" }}\n",
            site.root("www")
        )
        .as_bytes(),
    );
    let p = Portico::start(&["-c", &site.root("p.toml")]);
    assert_eq!(get(p.addr, "/a.txt").unwrap().status, 200);
    let m = p.wait_metrics(Duration::from_secs(5), |m| {
        metric_sum(m, "portico_cell_requests_total{") >= 1.0
    });
    assert!(!m.contains("http_server_request_duration_seconds"), "{m}");
    assert_eq!(
        metric_sum(&m, "portico_cell_requests_total{"),
        1.0,
        "per-cell counters stay on:\n{m}"
    );
}
