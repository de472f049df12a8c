//! The mixed site of the fault and soak runs: static files, an embedded WSGI app, an ASGI app
//! (HTTP and WebSocket echo) and a proxy route to gunicorn upstreams, all on one Portico, with
//! the load that drives it (`load`) and what is read of its processes (`procs`).
//! `tests/tests/faults_under_load.rs` and `cargo xtask soak` both use it.
mod load;
pub mod procs;
mod ws;

pub use load::{Check, Failure, MixedLoad, Stream, StreamTally, Tally};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::{Bind, Portico, Site, Upstream, free_port};

/// The embedded apps: every answer names the request it answers (its query), so a response
/// that belongs to another request never passes for a good one.
const APPS: &str = r#"
def wsgi(environ, start_response):
    body = ("wsgi " + environ["QUERY_STRING"]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif m["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        body = b"asgi " + scope["query_string"]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    m = await receive()
    if m["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        m = await receive()
        if m["type"] == "websocket.disconnect":
            return
        if m.get("text") is not None:
            await send({"type": "websocket.send", "text": m["text"]})
        else:
            await send({"type": "websocket.send", "bytes": m["bytes"]})
"#;

/// The upstream app, served by gunicorn behind the proxy route.
const UPSTREAM_APP: &str = r#"
def application(environ, start_response):
    body = ("proxy " + environ["QUERY_STRING"]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// A small static file (held in the cell's memory) and a large one (memory-mapped).
pub const SMALL: usize = 1024;
pub const LARGE: usize = 300 * 1024;

/// Content of a static test file: a byte pattern seeded by `seed`, so files differ.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) as u8)
        .collect()
}

/// What `config` adds to the site's routes.
#[derive(Debug, Default, Clone)]
pub struct Options {
    pub workers: usize,
    /// `max_requests` of the WSGI route (the cell's requests over all its routes); 0: off.
    pub max_requests: u64,
    /// How many of the upstream servers the `app` group lists (0: all).
    pub servers: usize,
    /// More TOML appended after the mixed routes (extra `[[route]]` tables).
    pub extra: String,
}

/// The site's files, apps and upstream servers.
#[derive(Debug)]
pub struct MixedSite {
    pub site: Site,
    venv: PathBuf,
    pub upstreams: Vec<Upstream>,
    pub small: Arc<Vec<u8>>,
    pub large: Arc<Vec<u8>>,
}

impl MixedSite {
    /// Writes the files and starts `upstreams` gunicorn servers from `venv` (gthread, four
    /// threads: keep-alive connections, as a pool wants).
    pub fn new(venv: &Path, upstreams: usize) -> MixedSite {
        let site = Site::new();
        let small = Arc::new(pattern(SMALL, 1));
        let large = Arc::new(pattern(LARGE, 2));
        site.file("www/small.txt", &small);
        site.file("www/large.bin", &large);
        site.file("apps/mixapp.py", APPS.as_bytes());
        site.file("upstream/upapp.py", UPSTREAM_APP.as_bytes());
        let mut s = MixedSite {
            site,
            venv: venv.to_path_buf(),
            upstreams: Vec::new(),
            small,
            large,
        };
        for _ in 0..upstreams {
            let u = s.gunicorn(Bind::Tcp(free_port()));
            s.upstreams.push(u);
        }
        s
    }

    fn gunicorn(&self, bind: Bind) -> Upstream {
        let mut cmd = Command::new(self.venv.join("bin/gunicorn"));
        cmd.args([
            "-b",
            &bind.server(),
            "-w",
            "1",
            "-k",
            "gthread",
            "--threads",
            "4",
        ])
        .args(["--keep-alive", "30", "--graceful-timeout", "1"])
        .args([
            "--log-level",
            "warning",
            "--chdir",
            &self.site.root("upstream"),
        ])
        .arg("upapp:application");
        let log = self
            .site
            .path()
            .join(format!("gunicorn-{}.log", bind.label()));
        Upstream::start(cmd, bind, log)
    }

    /// Kills upstream `i` with SIGKILL (its process and workers).
    pub fn kill_upstream(&mut self, i: usize) {
        self.upstreams[i].kill();
    }

    /// Starts upstream `i` again on the same address; waits until it accepts.
    pub fn restart_upstream(&mut self, i: usize) {
        let bind = self.upstreams[i].bind.clone();
        self.upstreams[i] = self.gunicorn(bind);
    }

    /// The upstreams' addresses, as `servers` lists them.
    pub fn upstream_addrs(&self) -> Vec<SocketAddr> {
        self.upstreams.iter().map(Upstream::addr).collect()
    }

    /// Writes `p.toml` for `opts` and returns its path.
    pub fn config(&self, opts: &Options) -> PathBuf {
        let addrs = self.upstream_addrs();
        let n = if opts.servers == 0 {
            addrs.len()
        } else {
            opts.servers.min(addrs.len())
        };
        let servers: Vec<String> = addrs[..n].iter().map(|a| format!("\"{a}\"")).collect();
        let recycle = if opts.max_requests > 0 {
            format!(", max_requests = {}", opts.max_requests)
        } else {
            String::new()
        };
        let apps = self.site.root("apps");
        let venv = self.venv.display();
        let cfg = format!(
            r#"[server]
workers = {workers}
shutdown_timeout = "10s"
[[upstream]]
name = "app"
servers = [{servers}]
connect_timeout = "2s"
read_timeout = "10s"
[[route]]
prefix = "/static/"
static = {{ root = "{www}" }}
[[route]]
prefix = "/wsgi/"
wsgi = {{ app = "mixapp:wsgi", chdir = "{apps}", venv = "{venv}"{recycle} }}
[[route]]
prefix = "/asgi/"
asgi = {{ app = "mixapp:asgi", chdir = "{apps}", venv = "{venv}", lifespan = "on" }}
[[route]]
prefix = "/proxy/"
proxy = {{ upstream = "app", path = "/" }}
{extra}"#,
            workers = opts.workers.max(1),
            servers = servers.join(", "),
            www = self.site.root("www"),
            extra = opts.extra,
        );
        self.site.file("p.toml", cfg.as_bytes())
    }

    /// Starts Portico on this site with `opts`.
    pub fn portico(&self, opts: &Options) -> Portico {
        let cfg = self.config(opts);
        Portico::start(&["-c", &cfg.to_string_lossy()])
    }

    /// The standard mix: per kind (static small and large, WSGI, ASGI, proxy, WebSocket echo)
    /// `per_kind` clients, every other one on keep-alive, the rest on a new connection per
    /// request (WebSocket clients reopen after 20 messages).
    pub fn streams(&self, per_kind: usize) -> Vec<Stream> {
        let mut out = Vec::new();
        for i in 0..per_kind {
            let keepalive = i % 2 == 0;
            out.push(Stream::new(
                "static",
                keepalive,
                Check::Fixed {
                    path: "/static/small.txt".into(),
                    body: self.small.clone(),
                },
            ));
            out.push(Stream::new(
                "static-large",
                keepalive,
                Check::Fixed {
                    path: "/static/large.bin".into(),
                    body: self.large.clone(),
                },
            ));
            for (name, prefix) in [("wsgi", "/wsgi/"), ("asgi", "/asgi/"), ("proxy", "/proxy/")] {
                out.push(Stream::new(
                    name,
                    keepalive,
                    Check::Echo {
                        path: format!("{prefix}echo"),
                        label: name,
                    },
                ));
            }
            out.push(Stream::new(
                "websocket",
                true,
                Check::WebSocket {
                    path: "/asgi/ws".into(),
                    messages: 20,
                },
            ));
        }
        out
    }
}
