//! TLS termination: every route kind over https (curl, Python requests), SNI, the https
//! redirect, session resumption on another cell with the master's shared ticket keys
//! (openssl s_client), versions, handshake failures counted by reason, certificate checks in
//! `portico check`, and a certificate replaced on SIGHUP while a request is in flight.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use portico_tests::certs::{Kind, Leaf};
use portico_tests::tls_site::*;
use portico_tests::*;

#[test]
fn https_serves_static_wsgi_and_proxy_and_redirects_plain_http() {
    let Some(t) = tls_site("https_serves_static_wsgi_and_proxy_and_redirects_plain_http") else {
        return;
    };
    let (https, http) = (free_port(), free_port());
    let echo = free_port();
    let echo_backend = Upstream::start(
        {
            let mut c = Command::new("python3");
            c.args(["-c", ECHO_PROTO, &echo.port().to_string()]);
            c
        },
        Bind::Tcp(echo),
        t.site.path().join("echo.log"),
    );
    let cfg = config(
        &t,
        &format!(
            "[server.redirect_https]\nlisten = \"{http}\"\nport = {}\n\n{}\n\
             [[route]]\nprefix = \"/up/\"\nproxy = \"http://{}/\"\n",
            https.port(),
            tls_table(https, &t.leaf, ""),
            echo_backend.addr(),
        ),
    );
    let portico = start(&cfg, &[https, http], 1);
    assert!(
        portico
            .stderr_text()
            .contains(&format!("listening on https://{https}")),
        "{}",
        portico.stderr_text()
    );
    assert_eq!(
        curl(&t.ca, "localhost", https, "/a.txt", &[]),
        ("200".into(), "hello".into())
    );
    assert_eq!(
        curl(&t.ca, "localhost", https, "/app/x", &[]),
        ("200".into(), "https".into())
    );
    assert_eq!(
        curl(&t.ca, "localhost", https, "/up/x", &[]),
        ("200".into(), "https".into())
    );
    // Python requests, verifying against the CA.
    let (out, err) = python(
        &t,
        "import requests, sys; r = requests.get(sys.argv[1], verify=sys.argv[2]); print(r.status_code, r.text)",
        &format!("https://localhost:{}/app/", https.port()),
    );
    assert_eq!(out, "200 https", "{err}");
    // The plain listener sends everything to https, target kept.
    let r = raw(
        http,
        b"GET /a.txt?x=1 HTTP/1.1\r\nHost: example.test:8080\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://example.test:{}/a.txt?x=1", https.port()).as_str())
    );
    let m = portico.metrics();
    assert!(
        metric_sum(
            &m,
            "portico_tls_handshakes_total{cell=\"0\",version=\"1.3\""
        ) >= 4.0,
        "{m}"
    );
    assert!(m.contains("portico_tls_certificate_expiry_timestamp_seconds{"));
    // The TLS families pass promtool's checks too.
    match promtool_check(&m) {
        Some((passed, text)) => assert!(passed && !text.contains("tls"), "{text}"),
        None => skip_part(
            "https_serves_static_wsgi_and_proxy_and_redirects_plain_http",
            "promtool check metrics",
            PROMTOOL_MISSING,
        ),
    }
}

#[test]
fn sni_picks_the_certificate_and_unknown_names_are_refused_when_asked() {
    let Some(t) = tls_site("sni_picks_the_certificate_and_unknown_names_are_refused_when_asked")
    else {
        return;
    };
    let api =
        t.ca.leaf("api", Kind::Rsa, &["api.test", "*.api.test"], -1, 30);
    let (open, strict) = (free_port(), free_port());
    let sni = format!(
        "[[tls.sni]]\nnames = [\"api.test\", \"*.api.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        p(&api.cert),
        p(&api.key)
    );
    let cfg = config(
        &t,
        &format!(
            "{}{}",
            tls_table(open, &t.leaf, &sni),
            tls_table(
                strict,
                &t.leaf,
                &format!("unknown_name = \"reject\"\n{sni}")
            )
        ),
    );
    let portico = start(&cfg, &[open, strict], 1);
    assert!(served_subject(open, "localhost").contains("localhost"));
    assert!(served_subject(open, "api.test").contains("api.test"));
    assert!(served_subject(open, "v2.api.test").contains("api.test"));
    // An unknown name: the default certificate on one listener, a refusal on the other.
    assert!(served_subject(open, "other.test").contains("localhost"));
    assert_eq!(served_subject(strict, "other.test"), "");
    assert_eq!(
        curl(&t.ca, "api.test", strict, "/a.txt", &[]),
        ("200".into(), "hello".into())
    );
    let m = portico.wait_metrics(Duration::from_secs(10), |m| {
        metric_value(
            m,
            "portico_tls_handshake_failures_total{cell=\"0\",reason=\"unknown_name\"}",
        ) == Some(1.0)
    });
    // Four s_client handshakes and curl's, all TLS 1.3.
    assert_eq!(
        metric_sum(
            &m,
            "portico_tls_handshakes_total{cell=\"0\",version=\"1.3\""
        ),
        5.0,
        "{m}"
    );
}

#[test]
fn aes_128_is_chosen_unless_the_client_lists_chacha_first() {
    let Some(t) = tls_site("aes_128_is_chosen_unless_the_client_lists_chacha_first") else {
        return;
    };
    let addr = free_port();
    let cfg = config(&t, &tls_table(addr, &t.leaf, ""));
    let portico = start(&cfg, &[addr], 1);
    let cipher_of = |args: &[&str]| {
        let mut all = vec!["-servername", "localhost"];
        all.extend_from_slice(args);
        let out = s_client(addr, &all);
        let line = out
            .lines()
            .find(|l| l.starts_with("New, TLSv"))
            .unwrap_or_else(|| panic!("no handshake:\n{out}"));
        line.rsplit(' ').next().unwrap_or_default().to_string()
    };
    // The client's first choice is AES-256 (OpenSSL's default order): AES-128 all the same.
    let aes_256_first =
        "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";
    assert_eq!(
        cipher_of(&["-tls1_3", "-ciphersuites", aes_256_first]),
        "TLS_AES_128_GCM_SHA256"
    );
    // ChaCha20 first (a client without AES hardware): its order.
    let chacha_first = "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";
    assert_eq!(
        cipher_of(&["-tls1_3", "-ciphersuites", chacha_first]),
        "TLS_CHACHA20_POLY1305_SHA256"
    );
    // A client with AES-256 only gets it.
    assert_eq!(
        cipher_of(&["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"]),
        "TLS_AES_256_GCM_SHA384"
    );
    // TLS 1.2 the same way (the test certificate is ECDSA).
    assert_eq!(
        cipher_of(&[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256"
        ]),
        "ECDHE-ECDSA-AES128-GCM-SHA256"
    );
    assert_eq!(
        cipher_of(&[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"
        ]),
        "ECDHE-ECDSA-CHACHA20-POLY1305"
    );
    // A ChaCha20 session resumes, and the handshakes are counted under their suites.
    let sess = t.site.path().join("chacha.pem");
    save_session(addr, "-tls1_3", &sess, &["-ciphersuites", chacha_first]);
    let out = s_client(
        addr,
        &[
            "-servername",
            "localhost",
            "-tls1_3",
            "-ciphersuites",
            chacha_first,
            "-sess_in",
            &p(&sess),
        ],
    );
    assert!(
        out.contains("Reused, TLSv1.3, Cipher is TLS_CHACHA20_POLY1305_SHA256"),
        "{out}"
    );
    let series = |suite: &str| {
        format!(
            "portico_tls_handshakes_total{{cell=\"0\",version=\"{}\",cipher=\"{suite}\"}}",
            if suite.starts_with("TLS13") {
                "1.3"
            } else {
                "1.2"
            }
        )
    };
    let m = portico.wait_metrics(Duration::from_secs(10), |m| {
        metric_sum(m, "portico_tls_handshakes_total") >= 7.0
    });
    for (suite, n) in [
        ("TLS13_AES_128_GCM_SHA256", 1.0),
        ("TLS13_CHACHA20_POLY1305_SHA256", 3.0),
        ("TLS13_AES_256_GCM_SHA384", 1.0),
        ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", 1.0),
        ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", 1.0),
    ] {
        assert_eq!(metric_value(&m, &series(suite)), Some(n), "{suite}\n{m}");
    }
}

/// The cell that counted one more handshake of `series_prefix` between two scrapes.
fn cell_that_counted(before: &str, after: &str, series: &str, cells: usize) -> Option<usize> {
    (0..cells).find(|c| {
        let s = series.replace("CELL", &c.to_string());
        delta(after, before, &s) > 0.0
    })
}

#[test]
fn sessions_resume_on_another_cell() {
    let Some(t) = tls_site("sessions_resume_on_another_cell") else {
        return;
    };
    let addr = free_port();
    let cfg = config(&t, &tls_table(addr, &t.leaf, ""));
    let portico = start(&cfg, &[addr], 2);
    for (flag, version) in [("-tls1_3", "1.3"), ("-tls1_2", "1.2")] {
        let sess = t.site.path().join(format!("session{version}.pem"));
        let before = portico.metrics();
        save_session(addr, flag, &sess, &[]);
        // The first cell is the one whose handshake count moved.
        let after = portico.wait_metrics(Duration::from_secs(10), |m| {
            metric_sum(m, "portico_tls_handshakes_total")
                > metric_sum(&before, "portico_tls_handshakes_total")
        });
        let first = (0..2)
            .find(|c| {
                metric_sum(
                    &after,
                    &format!("portico_tls_handshakes_total{{cell=\"{c}\""),
                ) > metric_sum(
                    &before,
                    &format!("portico_tls_handshakes_total{{cell=\"{c}\""),
                )
            })
            .expect("a cell counted the handshake");
        // Resume from the CPUs in turn until a connection lands on the other cell.
        let series =
            format!("portico_tls_resumed_handshakes_total{{cell=\"CELL\",version=\"{version}\"}}");
        let mut elsewhere = false;
        for i in 0..40 {
            let before = portico.metrics();
            let out = s_client_on(
                Some((i + 1) % cpus()),
                addr,
                &["-servername", "localhost", flag, "-sess_in", &p(&sess)],
            );
            assert!(out.contains("Reused, TLSv"), "not resumed:\n{out}");
            let after = portico.wait_metrics(Duration::from_secs(10), |m| {
                cell_that_counted(&before, m, &series, 2).is_some()
            });
            if cell_that_counted(&before, &after, &series, 2) != Some(first) {
                elsewhere = true;
                break;
            }
        }
        assert!(
            elsewhere,
            "TLS {version}: 40 resumptions all landed on cell {first}"
        );
    }
}

#[test]
fn versions_and_failed_handshakes_are_counted_and_the_cell_lives() {
    let Some(t) = tls_site("versions_and_failed_handshakes_are_counted_and_the_cell_lives") else {
        return;
    };
    let addr = free_port();
    let cfg = config(
        &t,
        &format!(
            "[limits]\nheader_timeout = \"1s\"\n\n{}",
            tls_table(addr, &t.leaf, "min_version = \"1.3\"")
        ),
    );
    let portico = start(&cfg, &[addr], 1);
    let pid = portico.cell_pids();
    let failures = |reason: &str| {
        portico
            .metric(&format!(
                "portico_tls_handshake_failures_total{{cell=\"0\",reason=\"{reason}\"}}"
            ))
            .unwrap_or(0.0)
    };
    // TLS 1.2 against min_version 1.3: refused.
    let out = s_client(addr, &["-servername", "localhost", "-tls1_2"]);
    assert!(!out.contains("New, TLSv1.2"), "{out}");
    wait_until(Duration::from_secs(10), "a protocol failure", || {
        failures("protocol") >= 1.0
    });
    // Plain HTTP to the TLS port: nginx's 400.
    let r = get(addr, "/a.txt").expect("an answer to plain HTTP");
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains("plain HTTP request was sent to an HTTPS port")
    );
    wait_until(Duration::from_secs(10), "a plaintext failure", || {
        failures("plaintext") >= 1.0
    });
    // A handshake cut short: the start of a ClientHello, then the client goes.
    let hello_start = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello_start).unwrap();
    }
    wait_until(Duration::from_secs(10), "an eof failure", || {
        failures("eof") >= 1.0
    });
    // ... or stays without finishing: closed after header_timeout.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&hello_start).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "never closed");
    wait_until(Duration::from_secs(10), "a timeout failure", || {
        failures("timeout") >= 1.0
    });
    // TLS 1.3 still works, from the same cell.
    assert_eq!(
        curl(&t.ca, "localhost", addr, "/a.txt", &["--tlsv1.3"]),
        ("200".into(), "hello".into())
    );
    assert_eq!(portico.cell_pids(), pid, "the cell was replaced");
}

#[test]
fn check_rejects_bad_pairs_and_warns_on_expiry() {
    let Some(t) = tls_site("check_rejects_bad_pairs_and_warns_on_expiry") else {
        return;
    };
    let other = t.ca.leaf("other", Kind::Ecdsa, &["other.test"], -1, 30);
    let expired = t.ca.leaf("expired", Kind::Ecdsa, &["old.test"], -60, -2);
    let addr = free_port();
    let check = |cfg: &Path| {
        let out = Command::new(portico_bin())
            .args(["check", "-c"])
            .arg(cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let listen = format!("[server]\nlisten = [\"{addr}\"]\n\n");
    // The key of another certificate, and a missing file: both reported, nothing bound.
    let mismatched = Leaf {
        cert: t.leaf.cert.clone(),
        key: other.key.clone(),
    };
    let missing = Leaf {
        cert: t.site.path().join("nope.pem"),
        key: t.leaf.key.clone(),
    };
    let cfg = config(
        &t,
        &format!(
            "{listen}{}[[tls.sni]]\nnames = [\"x.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
            tls_table(addr, &mismatched, ""),
            p(&missing.cert),
            p(&missing.key)
        ),
    );
    let (code, text) = check(&cfg);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("do not make a pair"), "{text}");
    assert!(text.contains("nope.pem"), "{text}");
    assert!(TcpStream::connect(addr).is_err(), "something was bound");
    // An expired certificate loads, with a warning.
    let cfg = config(&t, &format!("{listen}{}", tls_table(addr, &expired, "")));
    let (code, text) = check(&cfg);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("expired"), "{text}");
}

#[test]
fn sighup_replaces_the_certificate_while_a_request_is_in_flight() {
    let Some(t) = tls_site("sighup_replaces_the_certificate_while_a_request_is_in_flight") else {
        return;
    };
    let addr = free_port();
    let live = Leaf {
        cert: t.site.path().join("live.pem"),
        key: t.site.path().join("live.key"),
    };
    std::fs::copy(&t.leaf.cert, &live.cert).unwrap();
    std::fs::copy(&t.leaf.key, &live.key).unwrap();
    let cfg = config(&t, &tls_table(addr, &live, ""));
    let portico = start(&cfg, &[addr], 1);
    assert!(served_subject(addr, "localhost").contains("localhost"));
    // A request that takes 3 s, on a connection opened before the reload.
    let ca = t.ca.cert.clone();
    let slow = std::thread::spawn(move || {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "30", "--cacert", &p(&ca), "--resolve"])
            .arg(format!("localhost:{}:127.0.0.1", addr.port()))
            .args(["-w", " %{http_code}"])
            .arg(format!("https://localhost:{}/app/slow?3", addr.port()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    wait_until(Duration::from_secs(10), "the slow request started", || {
        metric_sum(&portico.metrics(), "portico_tls_handshakes_total") >= 2.0
    });
    let next =
        t.ca.leaf("next", Kind::Rsa, &["localhost", "next.test"], -1, 60);
    std::fs::copy(&next.cert, &live.cert).unwrap();
    std::fs::copy(&next.key, &live.key).unwrap();
    portico.signal(rustix::process::Signal::HUP);
    wait_until(
        Duration::from_secs(30),
        "the new certificate served",
        || served_cert_names(addr).contains("next.test"),
    );
    assert_eq!(slow.join().unwrap(), "https 200");
}

#[test]
fn alpn_h2_serves_http2_over_tls_and_http1_to_the_rest() {
    let Some(t) = tls_site("alpn_h2_serves_http2_over_tls_and_http1_to_the_rest") else {
        return;
    };
    let addr = free_port();
    let cfg = config(&t, &tls_table(addr, &t.leaf, ""));
    let portico = start(&cfg, &[addr], 1);
    // (status, HTTP version) as curl reports them.
    let version = |path: &str, flag: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "10", flag])
            .args(["--cacert", &p(&t.ca.cert), "--resolve"])
            .arg(format!("localhost:{}:127.0.0.1", addr.port()))
            .args(["-w", "%{http_code} %{http_version}"])
            .arg(format!("https://localhost:{}{path}", addr.port()))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(version("/a.txt", "--http2"), "200 2");
    assert_eq!(version("/app/x", "--http2"), "200 2");
    assert_eq!(version("/a.txt", "--http1.1"), "200 1.1");
    // httpx with HTTP/2 (and the h2 package), verifying against the CA.
    let (out, err) = python(
        &t,
        "import httpx, sys\n\
         with httpx.Client(http2=True, verify=sys.argv[2]) as c:\n\
         \x20   r = c.get(sys.argv[1])\n\
         \x20   print(r.http_version, r.status_code, r.text)",
        &format!("https://localhost:{}/app/", addr.port()),
    );
    assert_eq!(out, "HTTP/2 200 https", "{err}");
    let m = portico.metrics();
    assert!(
        m.lines()
            .any(|l| l.contains("network_protocol_version=\"2\"") && !l.ends_with(" 0")),
        "{m}"
    );
}
