//! The reverse proxy against real upstreams (see `proxy_upstream`): path mapping, the CLI
//! shorthand, forwarded and hop-by-hop headers, redirect rewriting, status and cookies. A stdlib
//! `http.server` stands in where gunicorn will not send something (hop-by-hop response headers,
//! a response that is not HTTP). Streams, bodies and failures are in `proxy_transport.rs`.
mod proxy_upstream;

use std::process::Command;

use portico_tests::*;
use proxy_upstream::*;
use serde_json::Value;

/// A stdlib HTTP/1.1 server: `/hop` answers with hop-by-hop headers (gunicorn drops them from
/// apps), `/garbage` with bytes that are not an HTTP response.
const RAW_SERVER: &str = r#"
import os, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

signal.signal(signal.SIGQUIT, lambda *_: os._exit(0))

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path.endswith("/garbage"):
            self.wfile.write(b"this is not HTTP\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path.endswith("/trailers"):
            # A chunked body with a trailer field; says whether it was told the client takes
            # trailers.
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum")
            self.send_header("X-Saw-TE", self.headers.get("TE", "none"))
            self.end_headers()
            for part in (b"first,", b"second"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Checksum: abc123\r\n\r\n")
            self.wfile.flush()
            return
        body = b"hop"
        self.send_response(200)
        self.send_header("Connection", "X-Custom")
        self.send_header("X-Custom", "1")
        self.send_header("Keep-Alive", "timeout=5")
        self.send_header("Proxy-Authenticate", "Basic realm=x")
        self.send_header("Trailer", "X-Trailing")
        self.send_header("X-Kept", "yes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// The stdlib server (`RAW_SERVER`) on a free port.
fn raw_server(venv: &std::path::Path, site: &Site) -> Upstream {
    let path = site.file("raw_server.py", RAW_SERVER.as_bytes());
    let addr = free_port();
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(path).arg(addr.port().to_string());
    Upstream::start(cmd, Bind::Tcp(addr), site.path().join("raw-server.log"))
}

#[test]
fn proxy_maps_paths_with_and_without_path_and_keeps_queries() {
    let Some(venv) = venv_or_skip("proxy_maps_paths_with_and_without_path_and_keeps_queries")
    else {
        return;
    };
    let site = Site::new();
    let up = gunicorn(&venv, &site, Bind::Tcp(free_port()), &[]);
    let p = portico(
        &site,
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{srv}\"]\n\
             [[route]]\nprefix = \"/app/\"\nproxy = {{ upstream = \"app\", path = \"/\" }}\n\
             [[route]]\nprefix = \"/inner/\"\nproxy = {{ upstream = \"app\", path = \"/deep/er/\" }}\n\
             [[route]]\nprefix = \"/same/\"\nproxy = {{ upstream = \"app\" }}\n\
             [[route]]\nprefix = \"/short/\"\nproxy = \"http://{srv}/base/\"\n\
             [[route]]\nprefix = \"/bare/\"\nproxy = \"http://{srv}\"\n",
            srv = up.addr()
        ),
    );
    let cases = [
        ("/app/x?q=1", "/x?q=1"),
        ("/app/a/b/c?q=1&r=%20s", "/a/b/c?q=1&r=%20s"),
        ("/app/", "/"),
        ("/inner/x?y=2", "/deep/er/x?y=2"),
        ("/same/x?q=1", "/same/x?q=1"),
        ("/same/a%2Fb?q", "/same/a%2Fb?q"),
        ("/short/x?q=1", "/base/x?q=1"),
        ("/bare/x?q=1", "/bare/x?q=1"),
    ];
    for (sent, received) in cases {
        let v = echo(&p, sent);
        assert_eq!(v["uri"], received, "{sent}: {v}");
        assert_eq!(v["method"], "GET");
    }
    // Other methods and a body pass as they are.
    let r = request_to(p.addr, "PUT", "/app/put?z=9", "test", &[], b"hello");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (&v["method"], &v["uri"], &v["body_len"]),
        (&"PUT".into(), &"/put?z=9".into(), &5.into())
    );
}

#[test]
fn proxy_cli_shorthand() {
    let Some(venv) = venv_or_skip("proxy_cli_shorthand") else {
        return;
    };
    let site = Site::new();
    let up = gunicorn(&venv, &site, Bind::Tcp(free_port()), &[]);
    let sock = Bind::Unix(site.path().join("cli.sock"));
    let _sock_up = gunicorn(&venv, &site, sock.clone(), &[]);
    let api = format!("/api/=http://{}/", up.addr());
    let raw = format!("/raw/=http://{}", up.addr());
    let unix = format!("/sock/={}", sock.server());
    let p = Portico::start(&[
        "--workers",
        "1",
        "--proxy",
        &api,
        "--proxy",
        &raw,
        "--proxy",
        &unix,
    ]);
    assert_eq!(echo(&p, "/api/x?q=1")["uri"], "/x?q=1");
    assert_eq!(echo(&p, "/raw/x?q=1")["uri"], "/raw/x?q=1");
    assert_eq!(echo(&p, "/sock/x?q=1")["uri"], "/sock/x?q=1");
    // Nothing else is routed.
    assert_eq!(get(p.addr, "/other").unwrap().status, 404);
}

#[test]
fn proxy_sets_forwarded_headers_and_drops_hop_by_hop_request_headers() {
    let Some(venv) =
        venv_or_skip("proxy_sets_forwarded_headers_and_drops_hop_by_hop_request_headers")
    else {
        return;
    };
    let site = Site::new();
    let up = gunicorn(&venv, &site, Bind::Tcp(free_port()), &[]);
    let p = portico(
        &site,
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{srv}\"]\n\
             [[route]]\nprefix = \"/app/\"\nproxy = {{ upstream = \"app\", path = \"/\", \
             set_headers = {{ X-Forwarded-Host = \"$host\", X-Client = \"$remote_addr\", X-Scheme = \"$scheme\" }} }}\n\
             [[route]]\nprefix = \"/plain/\"\nproxy = {{ upstream = \"app\", path = \"/\" }}\n\
             [[route]]\nprefix = \"/host/\"\nproxy = {{ upstream = \"app\", path = \"/\", set_headers = {{ Host = \"backend.internal\" }} }}\n\
             [[route]]\nprefix = \"/trusted/\"\nproxy = {{ upstream = \"app\", path = \"/\", trusted_proxies = [\"127.0.0.0/8\"] }}\n",
            srv = up.addr()
        ),
    );
    let spoofed = [
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Real-IP", "5.6.7.8"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=1.2.3.4;proto=https"),
    ];
    // An untrusted peer (loopback is not trusted by default): its forwarding headers are
    // replaced by portico's own.
    let v = echo_with(&p, "/app/h", "example.test", &spoofed);
    assert_eq!(header(&v, "x-forwarded-for"), Some("127.0.0.1"), "{v}");
    assert_eq!(header(&v, "x-real-ip"), Some("127.0.0.1"), "{v}");
    assert_eq!(header(&v, "x-forwarded-proto"), Some("http"), "{v}");
    assert_eq!(header(&v, "host"), Some("example.test"), "{v}");
    assert_eq!(header(&v, "x-forwarded-host"), Some("example.test"), "{v}");
    assert_eq!(header(&v, "x-client"), Some("127.0.0.1"), "{v}");
    assert_eq!(header(&v, "x-scheme"), Some("http"), "{v}");
    assert!(
        !header(&v, "forwarded").is_some_and(|f| f.contains("1.2.3.4")),
        "a client's Forwarded reached the upstream: {v}"
    );

    let v = echo_with(&p, "/plain/h", "example.test", &spoofed);
    assert_eq!(header(&v, "x-forwarded-for"), Some("127.0.0.1"), "{v}");
    assert_eq!(header(&v, "x-real-ip"), Some("127.0.0.1"), "{v}");
    assert_eq!(header(&v, "x-forwarded-proto"), Some("http"), "{v}");
    assert_ne!(header(&v, "x-forwarded-host"), Some("evil.example"), "{v}");
    assert_eq!(header(&v, "host"), Some("example.test"), "{v}");

    // set_headers may set Host.
    let v = echo_with(&p, "/host/h", "example.test", &[]);
    assert_eq!(header(&v, "host"), Some("backend.internal"), "{v}");

    // A trusted peer: the client's X-Forwarded-For is kept and the peer appended.
    let v = echo_with(&p, "/trusted/h", "example.test", &spoofed);
    assert_eq!(
        header(&v, "x-forwarded-for"),
        Some("1.2.3.4, 127.0.0.1"),
        "{v}"
    );

    // Hop-by-hop request headers stop at portico; end-to-end ones pass.
    let v = echo_with(
        &p,
        "/plain/hop",
        "example.test",
        &[
            ("Connection", "X-Foo"),
            ("X-Foo", "1"),
            // (`TE: trailers` is answered for this hop: see the trailers test.)
            ("TE", "deflate"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
            ("Proxy-Connection", "keep-alive"),
            ("X-End-To-End", "kept"),
            ("Authorization", "Bearer token"),
        ],
    );
    for h in [
        "x-foo",
        "te",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert_eq!(header(&v, h), None, "{h} reached the upstream: {v}");
    }
    assert!(
        !header(&v, "connection").is_some_and(|c| c.to_ascii_lowercase().contains("x-foo")),
        "the client's Connection reached the upstream: {v}"
    );
    assert_eq!(header(&v, "x-end-to-end"), Some("kept"), "{v}");
    assert_eq!(header(&v, "authorization"), Some("Bearer token"), "{v}");
}

#[test]
fn proxy_drops_hop_by_hop_response_headers_and_rejects_invalid_responses() {
    let Some(venv) =
        venv_or_skip("proxy_drops_hop_by_hop_response_headers_and_rejects_invalid_responses")
    else {
        return;
    };
    let site = Site::new();
    let up = raw_server(&venv, &site);
    let p = portico(
        &site,
        &format!(
            "[[route]]\nprefix = \"/raw/\"\nproxy = \"http://{}/\"\n",
            up.addr()
        ),
    );
    let r = get(p.addr, "/raw/hop").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hop"), "{r:?}");
    assert_eq!(r.header("x-kept"), Some("yes"), "{r:?}");
    for h in ["x-custom", "keep-alive", "proxy-authenticate", "trailer"] {
        assert_eq!(r.header(h), None, "{h} reached the client: {r:?}");
    }
    assert!(
        !r.header("connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("x-custom")),
        "the upstream's Connection reached the client: {r:?}"
    );
    // Trailers pass to a client that takes them (`TE: trailers`), named by `Trailer`; a client
    // that does not gets the body alone.
    let mut c = Conn::open(p.addr).unwrap();
    c.send(raw_request("GET", "/raw/trailers", &[("TE", "trailers")]).as_bytes())
        .unwrap();
    let r = c.read_response("GET").unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "first,second"),
        "{r:?}"
    );
    assert_eq!(r.header("x-saw-te"), Some("trailers"), "{r:?}");
    assert_eq!(r.header("trailer"), Some("X-Checksum"), "{r:?}");
    assert_eq!(
        r.trailers,
        [("x-checksum".to_string(), "abc123".to_string())],
        "{r:?}"
    );
    let r = get(p.addr, "/raw/trailers").unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "first,second"),
        "{r:?}"
    );
    assert_eq!(r.header("x-saw-te"), Some("none"), "{r:?}");
    assert!(r.trailers.is_empty(), "{r:?}");
    // Not an HTTP response: 502.
    let r = get(p.addr, "/raw/garbage").unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    // And the route still works afterwards.
    assert_eq!(get(p.addr, "/raw/hop").unwrap().status, 200);
}

#[test]
fn proxy_rewrites_location_and_refresh() {
    let Some(venv) = venv_or_skip("proxy_rewrites_location_and_refresh") else {
        return;
    };
    let site = Site::new();
    let up = gunicorn(&venv, &site, Bind::Tcp(free_port()), &[]);
    let srv = up.addr();
    let p = portico(
        &site,
        &format!(
            "[[upstream]]\nname = \"app\"\nservers = [\"{srv}\"]\n\
             [[route]]\nprefix = \"/app/\"\nproxy = {{ upstream = \"app\", path = \"/inner/\" }}\n\
             [[route]]\nprefix = \"/root/\"\nproxy = {{ upstream = \"app\", path = \"/\", redirect = \"default\" }}\n\
             [[route]]\nprefix = \"/off/\"\nproxy = {{ upstream = \"app\", path = \"/inner/\", redirect = \"off\" }}\n\
             [[route]]\nprefix = \"/pairs/\"\nproxy = {{ upstream = \"app\", path = \"/inner/\", redirect = [[\"/old/\", \"/new/\"]] }}\n"
        ),
    );
    let location = |prefix: &str, to: &str| {
        let r = request_to(
            p.addr,
            "GET",
            &format!("{prefix}redirect?to={}", percent(to)),
            "example.test",
            &[],
            b"",
        );
        assert_eq!(r.status, 302, "{prefix} {to}: {}", r.text());
        r.header("location").map(str::to_string)
    };
    let refresh = |prefix: &str, to: &str| {
        let r = request_to(
            p.addr,
            "GET",
            &format!("{prefix}refresh?to={}", percent(to)),
            "example.test",
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{prefix} {to}: {}", r.text());
        r.header("refresh").map(str::to_string)
    };
    let up_url = format!("http://{srv}/inner/y?z=1");
    let cases: &[(&str, &str, &str)] = &[
        // The upstream's path becomes the route prefix.
        ("/app/", "/inner/y?z=1", "/app/y?z=1"),
        ("/app/", "/inner/", "/app/"),
        // Outside the upstream's path: unchanged.
        ("/app/", "/elsewhere/y", "/elsewhere/y"),
        // Absolute URLs with the request's Host or the upstream's address: path-absolute.
        ("/app/", "http://example.test/inner/y?z=1", "/app/y?z=1"),
        ("/app/", &up_url, "/app/y?z=1"),
        // Another host is left alone.
        (
            "/app/",
            "http://other.example/inner/y",
            "http://other.example/inner/y",
        ),
        // path "/": everything is under it; replaced once, and a Location already under the
        // prefix is left alone.
        ("/root/", "/y", "/root/y"),
        ("/root/", "/root/y", "/root/y"),
        // off: as sent.
        ("/off/", "/inner/y", "/inner/y"),
        (
            "/off/",
            "http://example.test/inner/y",
            "http://example.test/inner/y",
        ),
        // pairs: only the given prefixes.
        ("/pairs/", "/old/y?z=1", "/new/y?z=1"),
        ("/pairs/", "/inner/y", "/inner/y"),
    ];
    for (prefix, to, want) in cases {
        assert_eq!(
            location(prefix, to).as_deref(),
            Some(*want),
            "Location {to:?} through {prefix}"
        );
        assert_eq!(
            refresh(prefix, to).as_deref(),
            Some(format!("0; url={want}").as_str()),
            "Refresh url={to:?} through {prefix}"
        );
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn proxy_passes_status_codes_and_every_set_cookie() {
    let Some(venv) = venv_or_skip("proxy_passes_status_codes_and_every_set_cookie") else {
        return;
    };
    let site = Site::new();
    let up = gunicorn(&venv, &site, Bind::Tcp(free_port()), &[]);
    let p = portico(
        &site,
        &format!(
            "[[route]]\nprefix = \"/app/\"\nproxy = \"http://{}/\"\n",
            up.addr()
        ),
    );
    let r = get(p.addr, "/app/cookies").unwrap();
    assert_eq!(r.status, 200);
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"], "{r:?}");
    assert_eq!(r.text(), "cookies");
    for code in [404u16, 500, 503, 418] {
        let r = get(p.addr, &format!("/app/status?code={code}")).unwrap();
        assert_eq!(r.status, code, "{r:?}");
        assert_eq!(r.text(), format!("status {code}"));
    }
    let r = get(p.addr, "/app/echo").unwrap();
    assert_eq!(r.header("x-upstream"), Some("gunicorn"), "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    // Responses without a body (HEAD, 204, 304) keep the client connection in step.
    let mut c = Conn::open(p.addr).unwrap();
    let r = c.request("HEAD", "/app/status?code=404", &[]).unwrap();
    assert_eq!((r.status, r.body.len()), (404, 0));
    let r = c.request("HEAD", "/app/cookies", &[]).unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
    for code in [204u16, 304] {
        let r = c
            .request("GET", &format!("/app/status?code={code}"), &[])
            .unwrap();
        assert_eq!((r.status, r.body.len()), (code, 0), "{r:?}");
    }
    let r = c.request("GET", "/app/status?code=200", &[]).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "status 200"));
}
