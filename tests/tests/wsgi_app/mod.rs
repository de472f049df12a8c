//! The WSGI test app shared by `wsgi.rs` and `wsgi_pool.rs`, and how they serve it.
use portico_tests::{Portico, Site};

pub const APP: &str = r#"
import hashlib, json, os, sys, time

MARKERS = os.path.dirname(os.path.abspath(__file__))

def application(environ, start_response):
    path = environ["PATH_INFO"]
    qs = environ.get("QUERY_STRING", "")
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"Hello, World!"]
    if path.startswith("/environ"):
        out = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int))}
        out["wsgi.version"] = list(environ["wsgi.version"])
        out["has_input"] = hasattr(environ["wsgi.input"], "read")
        body = json.dumps(out).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/upload":
        inp = environ["wsgi.input"]
        h = hashlib.sha256()
        n = 0
        while True:
            b = inp.read(65536)
            if not b:
                break
            h.update(b)
            n += len(b)
        assert inp.read() == b"" and inp.read(10) == b""
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{n} {h.hexdigest()}".encode()]
    if path == "/lines":
        inp = environ["wsgi.input"]
        first = inp.readline()
        second = inp.readline(3)
        rest = inp.readlines()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps([first.decode(), second.decode()] + [l.decode() for l in rest]).encode()]
    if path == "/ignore-body":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ignored"]
    if path == "/boom":
        raise RuntimeError("secret-traceback-marker")
    if path == "/boom-late":
        start_response("200 OK", [("Content-Type", "text/plain")])
        def gen():
            yield b"partial"
            raise RuntimeError("late failure")
        return gen()
    if path == "/bad-status":
        start_response("2000 OK", [])
        return [b""]
    if path == "/bad-header":
        start_response("200 OK", [("X-Bad", "a\r\nInjected: yes")])
        return [b""]
    if path == "/slow":
        for _ in range(int(qs or "1") * 20):
            time.sleep(0.05)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slow done"]
    if path == "/stuck":
        import ctypes
        ctypes.CDLL(None).sleep(int(qs or "30"))
        start_response("200 OK", [])
        return [b"unstuck"]
    if path == "/stream":
        marker = os.path.join(MARKERS, "closed-" + qs)
        class Body:
            def __init__(self):
                self.i = 0
            def __iter__(self):
                return self
            def __next__(self):
                self.i += 1
                if self.i > 400:
                    raise StopIteration
                time.sleep(0.02)
                return b"x" * 1024
            def close(self):
                with open(marker, "w") as f:
                    f.write("closed")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Body()
    if path == "/gen":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"chunk%d;" % i for i in range(5))
    if path == "/short-cl":
        start_response("200 OK", [("Content-Length", "100")])
        def gen():
            yield b"only-ten!!"
        return gen()
    if path == "/long-cl":
        start_response("200 OK", [("Content-Length", "5")])
        return [b"0123456789"]
    if path == "/file":
        f = open(__file__, "rb")
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](f)
    if path == "/bigfile":
        f = open(os.path.join(MARKERS, "big.bin"), "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f)
    if path == "/pid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written-")
        return [b"returned"]
    if path == "/exc-info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("handled inside the app")
        except ValueError:
            start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"handled"]
    if path == "/errors":
        environ["wsgi.errors"].write("app-says-hello-to-the-error-log\n")
        start_response("200 OK", [])
        return [b""]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such path"]
"#;

/// Writes the app and a config mounting it at `prefix`, then starts portico.
pub fn serve(site: &Site, prefix: &str, wsgi_extra: &str, args: &[&str]) -> Portico {
    site.file("app/app.py", APP.as_bytes());
    let cfg = format!(
        "[server]\nworkers = 2\n[[route]]\nprefix = \"{prefix}\"\nwsgi = {{ app = \"app:application\", chdir = \"{}\"{wsgi_extra} }}\n",
        site.root("app")
    );
    site.file("portico.toml", cfg.as_bytes());
    let cfg_path = site.root("portico.toml");
    let mut all = vec!["-c", cfg_path.as_str()];
    all.extend_from_slice(args);
    Portico::start(&all)
}
