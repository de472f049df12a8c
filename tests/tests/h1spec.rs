//! The checks of h1spec (github.com/uNetworking/h1spec, an HTTP/1.1 server conformance suite),
//! written again here against the direct server, a WSGI app that echoes the body it gets.
//! Each case's outcome follows RFC 9112: an incomplete request is waited for (no answer, the
//! connection open), a malformed one is refused (4xx, or the listed 5xx, and closed), a valid
//! one is served (2xx, with the body echoed where the case sends one).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use portico_tests::*;

/// What RFC 9112 asks of the server for one case.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Incomplete: no answer, connection open.
    Waits,
    /// Refused with a status in the range, then closed.
    Refused(u16, u16),
    /// Served with a 2xx (a 100 first allowed), echoing this body when given.
    Served(Option<&'static str>),
}

use Outcome::*;

const CASES: &[(&str, &str, Outcome)] = &[
    ("Fragmented method", "G", Waits),
    ("Fragmented URL 1", "GET ", Waits),
    ("Fragmented URL 2", "GET /hello", Waits),
    ("Fragmented URL 3", "GET /hello ", Waits),
    ("Fragmented HTTP version", "GET /hello HTTP", Waits),
    ("Fragmented request line", "GET /hello HTTP/1.1", Waits),
    (
        "Fragmented request line newline 1",
        "GET /hello HTTP/1.1\r",
        Waits,
    ),
    (
        "Fragmented request line newline 2",
        "GET /hello HTTP/1.1\r\n",
        Waits,
    ),
    ("Fragmented field name", "GET /hello HTTP/1.1\r\nHos", Waits),
    (
        "Fragmented field value 1",
        "GET /hello HTTP/1.1\r\nHost:",
        Waits,
    ),
    (
        "Fragmented field value 2",
        "GET /hello HTTP/1.1\r\nHost: ",
        Waits,
    ),
    (
        "Fragmented field value 3",
        "GET /hello HTTP/1.1\r\nHost: localhost",
        Waits,
    ),
    (
        "Fragmented field value 4",
        "GET /hello HTTP/1.1\r\nHost: localhost\r",
        Waits,
    ),
    (
        "Fragmented request",
        "GET /hello HTTP/1.1\r\nHost: localhost\r\n",
        Waits,
    ),
    (
        "Fragmented request termination",
        "GET /hello HTTP/1.1\r\nHost: localhost\r\n\r",
        Waits,
    ),
    (
        "Request without HTTP version",
        "GET / \r\n\r\n",
        Refused(400, 599),
    ),
    (
        "Request with Expect header",
        "GET / HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\n\r\n",
        Served(None),
    ),
    (
        "Valid GET request",
        "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        Served(None),
    ),
    (
        "Valid GET request with edge cases",
        "GET / HTTP/1.1\r\nhoSt:\texample.com\r\nempty:\r\n\r\n",
        Served(None),
    ),
    (
        "Invalid header characters",
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Invalid[]: test\r\n\r\n",
        Refused(400, 499),
    ),
    (
        "Missing Host header",
        "GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
        Refused(400, 499),
    ),
    (
        "Multiple Host headers",
        "GET / HTTP/1.1\r\nHost: example.com\r\nHost: example.org\r\n\r\n",
        Refused(400, 499),
    ),
    (
        "Overflowing negative Content-Length header",
        "GET / HTTP/1.1\r\nHost: example.com\r\nContent-Length: -123456789123456789123456789\r\n\r\n",
        Refused(400, 499),
    ),
    (
        "Negative Content-Length header",
        "GET / HTTP/1.1\r\nHost: example.com\r\nContent-Length: -1234\r\n\r\n",
        Refused(400, 499),
    ),
    (
        "Non-numeric Content-Length header",
        "GET / HTTP/1.1\r\nHost: example.com\r\nContent-Length: abc\r\n\r\n",
        Refused(400, 499),
    ),
    (
        "Empty header value",
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Empty-Header: \r\n\r\n",
        Served(None),
    ),
    (
        "Header containing invalid control character",
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Bad-Control-Char: test\x07\r\n\r\n",
        Refused(400, 499),
    ),
    (
        "Invalid HTTP version",
        "GET / HTTP/9.9\r\nHost: example.com\r\n\r\n",
        Refused(400, 599),
    ),
    (
        "Invalid prefix of request",
        "Extra lineGET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        Refused(400, 599),
    ),
    (
        "Invalid line ending",
        "GET / HTTP/1.1\r\nHost: example.com\r\n\rSome-Header: Test\r\n\r\n",
        Refused(400, 499),
    ),
    (
        "Valid POST request with body",
        "POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello",
        Served(Some("hello")),
    ),
    (
        "Chunked Transfer-Encoding",
        "POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\nc\r\nHellO world1\r\n0\r\n\r\n",
        Served(Some("HellO world1")),
    ),
    (
        // h1spec also takes a 200 with the chunked body; Portico refuses both framings.
        "Conflicting Transfer-Encoding and Content-Length in varying case",
        "POST / HTTP/1.1\r\nHost: example.com\r\ncontent-LengtH: 5\r\nTransFer-Encoding: chunked\r\n\r\nc\r\nHellO world1\r\n0\r\n\r\n",
        Refused(400, 499),
    ),
];

const ECHO_APP: &str = r#"
def application(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]
"#;

/// (status, body) of the first final response, and (when `close` asks) whether the server
/// closed after it.
fn final_response(s: &mut TcpStream, close: bool) -> Result<(u16, Vec<u8>, bool), String> {
    let mut c = Conn::from_stream(s.try_clone().map_err(|e| e.to_string())?);
    loop {
        let r = c.read_response("GET").map_err(|e| e.to_string())?;
        if r.status >= 200 {
            let closed = close && c.closed_within(Duration::from_secs(5));
            return Ok((r.status, r.body, closed));
        }
    }
}

#[test]
fn h1spec_cases_against_the_direct_server() {
    if venv_for(
        "h1spec_cases_against_the_direct_server",
        "nothing but Python",
    )
    .is_none()
    {
        return;
    }
    let site = Site::new();
    site.file("app/echo.py", ECHO_APP.as_bytes());
    let cfg = format!(
        "[server]\nworkers = 1\n[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"echo:application\", chdir = \"{}\" }}\n",
        site.root("app")
    );
    site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("p.toml")]);
    // Every case on its own connection, all sent at once. The incomplete ones are looked at
    // last: by then the server has answered every case sent beside them, so it has read
    // theirs too, and an answer to one of them would already be there (no fixed wait).
    let mut conns: Vec<TcpStream> = CASES
        .iter()
        .map(|(_, raw, _)| {
            let mut s = TcpStream::connect(p.addr).unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(raw.as_bytes()).unwrap();
            s
        })
        .collect();
    let mut results: Vec<Option<Result<String, String>>> = vec![None; CASES.len()];
    for waits_pass in [false, true] {
        for (i, ((_, _, outcome), s)) in CASES.iter().zip(&mut conns).enumerate() {
            if matches!(outcome, Waits) != waits_pass {
                continue;
            }
            results[i] = Some(match outcome {
                Waits => {
                    s.set_nonblocking(true).unwrap();
                    let mut b = [0u8; 64];
                    match s.read(&mut b) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok("waited".into()),
                        Ok(0) => Err("closed instead of waiting".to_string()),
                        Ok(n) => Err(format!("answered {:?}", String::from_utf8_lossy(&b[..n]))),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Refused(lo, hi) => {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    match final_response(s, true) {
                        Ok((st, _, true)) if (*lo..=*hi).contains(&st) => {
                            Ok(format!("{st}, closed"))
                        }
                        Ok((st, _, closed)) => Err(format!("{st}, closed: {closed}")),
                        Err(e) => Err(e),
                    }
                }
                Served(body) => {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    match final_response(s, false) {
                        Ok((st, got, _)) if (200..300).contains(&st) => match body {
                            Some(b) if got != b.as_bytes() => Err(format!(
                                "{st} with body {:?}",
                                String::from_utf8_lossy(&got)
                            )),
                            _ => Ok(format!("{st}")),
                        },
                        Ok((st, ..)) => Err(format!("{st}")),
                        Err(e) => Err(e),
                    }
                }
            });
        }
    }
    let mut failed = Vec::new();
    println!("\n{:<66} result", "h1spec case");
    for ((name, _, _), result) in CASES.iter().zip(results) {
        match result.expect("every case looked at") {
            Ok(r) => println!("{name:<66} {r}"),
            Err(e) => {
                println!("{name:<66} FAILED: {e}");
                failed.push(format!("{name}: {e}"));
            }
        }
    }
    println!(
        "\n| suite | cases | passed | failed |\n|---|---|---|---|\n| h1spec (direct server) | {} | {} | {} |",
        CASES.len(),
        CASES.len() - failed.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
