//! Every static-file rule of the foundation issue, against the real binary.
use portico_tests::*;

fn site() -> (Site, Portico) {
    let s = Site::new();
    s.file("www/index.html", b"<h1>home</h1>");
    s.file("www/hello.txt", b"hello world\n");
    s.file("www/app.js", b"console.log(1)");
    s.file("www/docs/index.html", b"docs index");
    s.file("www/empty/.keep", b"");
    s.file("www/.env", b"SECRET=1");
    s.file("www/.git/config", b"[core]");
    s.file("www/style.css", b"body{color:red}");
    s.file("www/style.css.gz", b"GZIPPED");
    s.file("www/style.css.br", b"BROTLI");
    let big: Vec<u8> = (0..(1 << 20) + 123).map(|i| (i * 7 % 251) as u8).collect();
    s.file("www/big.bin", &big);
    s.file("assets/a.css", b"a{}");
    std::os::unix::fs::symlink(
        s.path().join("assets/a.css"),
        s.path().join("www/outside-link.css"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        s.path().join("www/hello.txt"),
        s.path().join("www/inside-link.txt"),
    )
    .unwrap();
    let cfg = format!(
        r#"
        [server]
        workers = 2
        [[route]]
        prefix = "/"
        static = {{ root = "{www}", expires = "1h" }}
        [[route]]
        prefix = "/assets/"
        static = {{ root = "{assets}", cache_control = "public, max-age=2592000, immutable" }}
        "#,
        www = s.root("www"),
        assets = s.root("assets")
    );
    s.file("portico.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &s.root("portico.toml")]);
    (s, p)
}

#[test]
fn static_rules() {
    let (_s, p) = site();
    let a = p.addr;

    // Basic GET: type, length, validators, ranges advertised, per-route caching.
    let r = get(a, "/hello.txt").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world\n");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("content-length"), Some("12"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("cache-control"), Some("max-age=3600"));
    assert!(r.header("expires").is_some());
    let etag = r.header("etag").unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong etag: {etag}"
    );
    let lm = r.header("last-modified").unwrap().to_string();
    assert_eq!(
        get(a, "/app.js").unwrap().header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        get(a, "/assets/a.css").unwrap().header("cache-control"),
        Some("public, max-age=2592000, immutable")
    );

    // HEAD: headers, no body.
    let h = request(a, "HEAD", "/hello.txt", &[]).unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some("12"));
    assert!(h.body.is_empty());

    // Conditionals.
    assert_eq!(
        request(a, "GET", "/hello.txt", &[("If-None-Match", &etag)])
            .unwrap()
            .status,
        304
    );
    assert_eq!(
        request(
            a,
            "GET",
            "/hello.txt",
            &[("If-None-Match", &format!("\"x\", W/{etag}"))]
        )
        .unwrap()
        .status,
        304
    );
    assert_eq!(
        request(a, "GET", "/hello.txt", &[("If-None-Match", "\"other\"")])
            .unwrap()
            .status,
        200
    );
    let r304 = request(a, "GET", "/hello.txt", &[("If-Modified-Since", &lm)]).unwrap();
    assert_eq!(r304.status, 304);
    assert_eq!(r304.header("etag"), Some(etag.as_str()));
    assert!(r304.body.is_empty());
    assert_eq!(
        request(
            a,
            "GET",
            "/hello.txt",
            &[("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT")]
        )
        .unwrap()
        .status,
        200
    );
    assert_eq!(
        request(a, "GET", "/hello.txt", &[("If-Match", "\"nope\"")])
            .unwrap()
            .status,
        412
    );

    // Ranges: single, suffix, open-ended, multi, unsatisfiable, If-Range.
    let r = request(a, "GET", "/hello.txt", &[("Range", "bytes=0-4")]).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (206, &b"hello"[..]));
    assert_eq!(r.header("content-range"), Some("bytes 0-4/12"));
    let r = request(a, "GET", "/hello.txt", &[("Range", "bytes=-6")]).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (206, &b"world\n"[..]));
    let r = request(a, "GET", "/hello.txt", &[("Range", "bytes=6-")]).unwrap();
    assert_eq!(r.body, b"world\n");
    let r = request(a, "GET", "/hello.txt", &[("Range", "bytes=0-0,6-10")]).unwrap();
    assert_eq!(r.status, 206);
    let ct = r.header("content-type").unwrap();
    assert!(ct.starts_with("multipart/byteranges; boundary="), "{ct}");
    let boundary = ct.split("boundary=").nth(1).unwrap();
    let text = r.text();
    assert_eq!(text.matches(&format!("--{boundary}")).count(), 3, "{text}");
    assert!(
        text.contains("Content-Range: bytes 0-0/12\r\n\r\nh"),
        "{text}"
    );
    assert!(
        text.contains("Content-Range: bytes 6-10/12\r\n\r\nworld"),
        "{text}"
    );
    assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    assert_eq!(
        r.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        r.body.len()
    );
    let r = request(a, "GET", "/hello.txt", &[("Range", "bytes=50-60")]).unwrap();
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */12"));
    let r = request(
        a,
        "GET",
        "/hello.txt",
        &[("Range", "bytes=0-4"), ("If-Range", &etag)],
    )
    .unwrap();
    assert_eq!(r.status, 206);
    let r = request(
        a,
        "GET",
        "/hello.txt",
        &[("Range", "bytes=0-4"), ("If-Range", "\"stale\"")],
    )
    .unwrap();
    assert_eq!((r.status, r.body.len()), (200, 12));
    let r = request(
        a,
        "GET",
        "/hello.txt",
        &[("Range", "bytes=0-4"), ("If-Range", &lm)],
    )
    .unwrap();
    assert_eq!(r.status, 206);

    // Large file (memory-mapped path): every byte right, and ranges deep inside it.
    let big = get(a, "/big.bin").unwrap();
    assert_eq!(big.status, 200);
    assert_eq!(big.body.len(), (1 << 20) + 123);
    assert!(
        big.body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i * 7 % 251) as u8)
    );
    let r = request(a, "GET", "/big.bin", &[("Range", "bytes=1048576-1048580")]).unwrap();
    let want: Vec<u8> = (1048576..=1048580)
        .map(|i: usize| (i * 7 % 251) as u8)
        .collect();
    assert_eq!(r.body, want);

    // Directories: index, redirect keeps the query, no listings.
    let r = get(a, "/").unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"<h1>home</h1>"[..]));
    let r = get(a, "/docs").unwrap();
    assert_eq!((r.status, r.header("location")), (301, Some("/docs/")));
    let r = get(a, "/docs?x=1").unwrap();
    assert_eq!(r.header("location"), Some("/docs/?x=1"));
    assert_eq!(get(a, "/docs/").unwrap().body, b"docs index");
    assert_eq!(get(a, "/empty/").unwrap().status, 403);
    assert_eq!(get(a, "/hello.txt/").unwrap().status, 404);

    // Dotfiles and symlinks out of the root.
    assert_eq!(get(a, "/.env").unwrap().status, 404);
    assert_eq!(get(a, "/.git/config").unwrap().status, 404);
    assert_eq!(get(a, "/outside-link.css").unwrap().status, 404);
    assert_eq!(get(a, "/inside-link.txt").unwrap().body, b"hello world\n");

    // Precompressed siblings.
    let r = request(a, "GET", "/style.css", &[("Accept-Encoding", "gzip, br")]).unwrap();
    assert_eq!(
        (r.header("content-encoding"), r.body.as_slice()),
        (Some("br"), &b"BROTLI"[..])
    );
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    let r = request(a, "GET", "/style.css", &[("Accept-Encoding", "gzip")]).unwrap();
    assert_eq!(
        (r.header("content-encoding"), r.body.as_slice()),
        (Some("gzip"), &b"GZIPPED"[..])
    );
    let plain = get(a, "/style.css").unwrap();
    assert_eq!(
        (plain.header("content-encoding"), plain.body.as_slice()),
        (None, &b"body{color:red}"[..])
    );
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    assert_ne!(plain.header("etag"), r.header("etag"));

    // Methods and unknown routes.
    let r = request(a, "POST", "/hello.txt", &[("Content-Length", "0")]).unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    assert_eq!(request(a, "DELETE", "/hello.txt", &[]).unwrap().status, 405);
    assert_eq!(get(a, "/nope.txt").unwrap().status, 404);

    // Keep-alive and pipelining on one connection.
    let mut c = Conn::open(a).unwrap();
    let mut pipelined = String::new();
    for _ in 0..3 {
        pipelined.push_str(&raw_request("GET", "/hello.txt", &[]));
    }
    c.send(pipelined.as_bytes()).unwrap();
    for _ in 0..3 {
        assert_eq!(c.read_response("GET").unwrap().body, b"hello world\n");
    }
    assert_eq!(c.request("GET", "/app.js", &[]).unwrap().status, 200);
}

#[test]
fn edits_are_picked_up() {
    let (s, p) = site();
    assert_eq!(get(p.addr, "/hello.txt").unwrap().body, b"hello world\n");
    // A new length (and modification time): the cached entry's identity changes at once; the
    // loop below waits for the cache to look again.
    s.file("www/hello.txt", b"changed!\n");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = get(p.addr, "/hello.txt").unwrap();
        if r.body == b"changed!\n" {
            assert_eq!(r.header("content-length"), Some("9"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "edit never showed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn access_log_combined_and_json() {
    let s = Site::new();
    s.file("www/a.txt", b"abc");
    for (fmt, check) in [
        (
            "combined",
            Box::new(|l: &str| l.contains("\"GET /a.txt?q=1 HTTP/1.1\" 200 3 \"-\" \"t/1\""))
                as Box<dyn Fn(&str) -> bool>,
        ),
        (
            "json",
            Box::new(|l: &str| {
                l.contains("\"status\":200") && l.contains("\"uri\":\"/a.txt?q=1\"")
            }),
        ),
    ] {
        let log = s.path().join(format!("{fmt}.log"));
        let p = Portico::start(&[
            "--static",
            &format!("/={}", s.root("www")),
            "--access-log",
            log.to_str().unwrap(),
            "--log-format",
            fmt,
            "--workers",
            "1",
        ]);
        request(p.addr, "GET", "/a.txt?q=1", &[("User-Agent", "t/1")]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().any(&check) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{fmt} log line missing: {text:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

#[test]
fn unix_socket_listener() {
    let s = Site::new();
    s.file("www/a.txt", b"over unix");
    let sock = s.path().join("p.sock");
    let p = Portico::start(&[
        "--static",
        &format!("/={}", s.root("www")),
        "--listen",
        "127.0.0.1:0",
        "--listen",
        &format!("unix:{}", sock.display()),
        "--workers",
        "2",
    ]);
    use std::io::{Read, Write};
    let mut u = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    u.write_all(b"GET /a.txt HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    u.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.0 200 OK"), "{out}");
    assert!(out.ends_with("over unix"));
    drop(p);
}
