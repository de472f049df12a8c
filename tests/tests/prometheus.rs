//! The Prometheus side: the shipped scrape config, alert rules and Grafana dashboard are valid
//! and only use series Portico exports, and a real Prometheus server scraping Portico under
//! load computes a p99 from the request histogram that matches what the client measured.
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portico_tests::*;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Metric names (portico_*, http_server_*) used in a text, histogram suffixes removed.
fn names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if (rest.starts_with("portico_") || rest.starts_with("http_server_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let mut name = rest[..end].to_string();
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base.to_string();
                }
            }
            out.insert(name);
            i += end;
        } else {
            i += 1;
        }
    }
    out
}

fn exported(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

const APP: &str = "import time\ndef application(e, s):\n    if e['PATH_INFO'] == '/slow':\n        time.sleep(0.03)\n    s('200 OK', [('Content-Type', 'text/plain')])\n    return [b'ok']\n";

/// Portico with a static, a WSGI and a proxy route (to `upstream`, when given).
fn start(site: &Site, upstream: Option<std::net::SocketAddr>) -> Portico {
    site.file("app/app.py", APP.as_bytes());
    site.file("www/a.txt", b"a");
    let mut cfg = format!(
        "[server]\nworkers = 2\n[[route]]\nprefix = \"/static/\"\nstatic = {{ root = \"{}\" }}\n[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"app:application\", chdir = \"{}\", threads = 8 }}\n",
        site.root("www"),
        site.root("app")
    );
    if let Some(a) = upstream {
        cfg.push_str(&format!(
            "[[route]]\nprefix = \"/up/\"\nproxy = \"http://{a}/\"\n"
        ));
    }
    site.file("p.toml", cfg.as_bytes());
    Portico::start(&["-c", &site.root("p.toml")])
}

#[test]
fn shipped_rules_config_and_dashboard_are_valid_and_use_real_series() {
    let dashboard = std::fs::read_to_string(deploy("grafana/portico.json")).unwrap();
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let titles: Vec<&str> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "heatmap",
        "p50 / p99",
        "queue depth",
        "queue wait",
        "Steering share",
        "XDP",
        "Upstream servers",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no {want} panel in {titles:?}"
        );
    }

    // Every series they use is exported.
    let site = Site::new();
    let backend = tagged_backend("a", 30.0, site.path().join("backend.log"));
    let p = start(&site, Some(backend.addr()));
    for path in ["/", "/slow", "/static/a.txt", "/up/x"] {
        get(p.addr, path).unwrap();
    }
    // Cells count a request after its bytes leave: wait until all four are in.
    let m = p.wait_metrics(Duration::from_secs(5), |m| {
        metric_sum(m, "portico_cell_requests_total{") >= 4.0
    });
    let have_series = exported(&m);
    let ebpf = metric_value(&m, "portico_ebpf_enabled") == Some(1.0);
    for name in names_in(&dashboard).union(&names_in(&alerts)) {
        // XDP and TLS series arrive with the XDP guard and a TLS listener.
        if name.starts_with("portico_xdp_")
            || name.starts_with("portico_tls_")
            || (!ebpf && name.starts_with("portico_steering_"))
        {
            continue;
        }
        assert!(
            have_series.contains(name),
            "{name} is used but not exported"
        );
    }

    if !have("promtool") {
        skip_part(
            "shipped_rules_config_and_dashboard_are_valid_and_use_real_series",
            "promtool checks",
            "promtool not installed (cargo xtask test installs it)",
        );
        return;
    }
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["check", "config", "portico.yml"]);
}

/// Runs promtool in deploy/prometheus (the config names its rules file relatively).
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .current_dir(deploy("prometheus"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// GET on the Prometheus API; returns the body.
fn query(port: u16, q: &str) -> String {
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    get(addr, &format!("/api/v1/query?query={enc}"))
        .map(|r| r.text())
        .unwrap_or_default()
}

fn scalar(body: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn real_prometheus_scrapes_portico_under_load() {
    if !have("prometheus") {
        skip(
            "real_prometheus_scrapes_portico_under_load",
            "prometheus not installed (cargo xtask test installs it)",
        );
        return;
    }
    let site = Site::new();
    let p = start(&site, None);
    let admin = p.admin.unwrap();
    let port = free_port().port();
    site.file(
        "prom/prometheus.yml",
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: portico\n    static_configs:\n      - targets: [\"{admin}\"]\n"
        )
        .as_bytes(),
    );
    let mut prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            site.root("prom/prometheus.yml")
        ))
        .arg(format!("--storage.tsdb.path={}", site.root("prom/data")))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = prom.stderr.take();
    let _prom = Kill(prom);

    // Load: a route that takes ~30 ms, measured by the client, for a bounded time.
    let addr = p.addr;
    let started = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut c = Conn::open(addr).unwrap();
                while started.elapsed() < Duration::from_secs(8) {
                    let t = Instant::now();
                    assert_eq!(c.request("GET", "/slow", &[]).unwrap().status, 200);
                    lat.push(t.elapsed().as_secs_f64());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<f64> = clients
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let client_p99 = lat[(lat.len() as f64 * 0.99) as usize - 1];

    let deadline = Instant::now() + Duration::from_secs(30);
    let (up, p99) = loop {
        let up = scalar(&query(port, "up{job=\"portico\"}"));
        let p99 = scalar(&query(
            port,
            "histogram_quantile(0.99, sum by (le) (rate(http_server_request_duration_seconds_bucket{route=\"/\"}[20s])))",
        ));
        if let (Some(1.0), Some(q)) = (up, p99)
            && q.is_finite()
        {
            break (1.0, q);
        }
        if Instant::now() > deadline {
            let mut log = String::new();
            if let Some(mut e) = stderr {
                let _ = e.read_to_string(&mut log);
            }
            panic!("no answer from Prometheus (up={up:?}, p99={p99:?}):\n{log}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(up, 1.0);
    // The same bucket as the client's own p99, or the next one: the server-side time excludes
    // the network round trip (far below a bucket width on loopback), but histogram_quantile
    // interpolates linearly inside a bucket, so a p99 near a bucket boundary (here the app's
    // 30 ms sleep plus load, near 50 ms) can land on either side of it.
    let bucket = |v: f64| {
        [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ]
        .iter()
        .position(|b| v <= *b)
    };
    let (server, client) = (bucket(p99), bucket(client_p99));
    assert!(
        server.zip(client).is_some_and(|(s, c)| s.abs_diff(c) <= 1),
        "Prometheus p99 {p99:.4}s vs client p99 {client_p99:.4}s ({} requests): buckets {server:?} vs {client:?}",
        lat.len()
    );
}
