//! What the TLS tests share: a site with a CA-signed `localhost` certificate, its config, and
//! the clients (curl with `--resolve`, `openssl s_client`) that talk to it.
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::certs::{Ca, Kind, Leaf};
use crate::{Portico, Site, venv_for, wait_until};

pub const WSGI_APP: &str = r#"
import time
def application(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(float(environ["QUERY_STRING"] or "1"))
    body = environ["wsgi.url_scheme"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// A backend that answers with the X-Forwarded-Proto it was sent.
pub const ECHO_PROTO: &str = r#"
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = (self.headers.get("X-Forwarded-Proto") or "none").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// A site with `www/a.txt`, the WSGI app, a CA and a `localhost` certificate.
#[derive(Debug)]
pub struct TlsSite {
    pub site: Site,
    pub ca: Ca,
    pub leaf: Leaf,
    pub venv: std::path::PathBuf,
}

pub fn tls_site(test: &str) -> Option<TlsSite> {
    let venv = venv_for(test, "cryptography")?;
    let site = Site::new();
    site.file("www/a.txt", b"hello");
    site.file("app/app.py", WSGI_APP.as_bytes());
    let ca = Ca::new(&venv, site.path());
    let leaf = ca.leaf("localhost", Kind::Ecdsa, &["localhost"], -1, 30);
    Some(TlsSite {
        site,
        ca,
        leaf,
        venv,
    })
}

pub fn p(path: &Path) -> String {
    path.display().to_string()
}

/// `curl` over https to `name:port` resolved to 127.0.0.1, trusting the test CA: (status, body).
pub fn curl(ca: &Ca, name: &str, addr: SocketAddr, path: &str, extra: &[&str]) -> (String, String) {
    let port = addr.port();
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "--cacert",
            &p(&ca.cert),
            "--resolve",
        ])
        .arg(format!("{name}:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

/// Runs `script` with the test venv's Python, the URL and the CA's PEM path as its arguments:
/// (trimmed stdout, stderr).
pub fn python(t: &TlsSite, script: &str, url: &str) -> (String, String) {
    let out = Command::new(t.venv.join("bin/python"))
        .args(["-c", script, url, &p(&t.ca.cert)])
        .output()
        .expect("run python");
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What `openssl s_client` printed for one handshake (stdin closed at once).
pub fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    s_client_on(None, addr, args)
}

/// `s_client` pinned to `cpu`: on loopback the kernel (and the `cpu` steering policy) then
/// hands the connection to the cell of that CPU.
pub fn s_client_on(cpu: Option<usize>, addr: SocketAddr, args: &[&str]) -> String {
    let mut cmd = match cpu {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.args(["-c", &c.to_string(), "openssl"]);
            t
        }
        None => Command::new("openssl"),
    };
    let out = cmd
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A full handshake from CPU 0 whose session `s_client` saves to `file`. TLS 1.3 sends the
/// ticket after the handshake: the client stays until the file is there. `more`: further
/// s_client arguments.
pub fn save_session(addr: SocketAddr, flag: &str, file: &Path, more: &[&str]) {
    let mut child = Command::new("taskset")
        .args([
            "-c",
            "0",
            "openssl",
            "s_client",
            "-connect",
            &addr.to_string(),
        ])
        .args(["-servername", "localhost", flag, "-sess_out", &p(file)])
        .args(more)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    wait_until(
        Duration::from_secs(10),
        "s_client saved the session",
        || std::fs::metadata(file).is_ok_and(|m| m.len() > 0),
    );
    drop(child.stdin.take());
    let _ = child.wait();
}

/// The subject CN of the certificate served for `sni`.
pub fn served_subject(addr: SocketAddr, sni: &str) -> String {
    let out = s_client(addr, &["-servername", sni]);
    out.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Portico with `cfg`, listening on `listen`, with `workers` cells.
pub fn start(cfg: &Path, listen: &[SocketAddr], workers: usize) -> Portico {
    let mut args = vec!["-c".to_string(), p(cfg)];
    for a in listen {
        args.extend(["--listen".to_string(), a.to_string()]);
    }
    args.extend(["--workers".to_string(), workers.to_string()]);
    Portico::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

pub fn config(t: &TlsSite, body: &str) -> std::path::PathBuf {
    let text = format!(
        "[[route]]\nprefix = \"/app/\"\nwsgi = {{ app = \"app:application\", chdir = \"{}\" }}\n\n\
         [[route]]\nprefix = \"/\"\nstatic = {{ root = \"{}\" }}\n\n{body}",
        t.site.root("app"),
        t.site.root("www"),
    );
    t.site.file("portico.toml", text.as_bytes())
}

pub fn tls_table(listen: SocketAddr, leaf: &Leaf, more: &str) -> String {
    format!(
        "[[tls]]\nlisten = \"{listen}\"\ncert = \"{}\"\nkey = \"{}\"\n{more}\n",
        p(&leaf.cert),
        p(&leaf.key)
    )
}

/// The subjectAltName text of the certificate served without SNI.
pub fn served_cert_names(addr: SocketAddr) -> String {
    let mut s = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pem = String::new();
    s.stdout.take().unwrap().read_to_string(&mut pem).unwrap();
    let _ = s.wait();
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    x.stdin.take().unwrap().write_all(pem.as_bytes()).unwrap();
    let out = x.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
