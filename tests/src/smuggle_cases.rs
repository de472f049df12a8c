//! The ambiguous requests of the smuggling suite, each with its RFC 9112 reading. `valid`: a
//! server may serve the bytes, and then only as read (it may also refuse them); `invalid`:
//! no reading may be served; `after`: the requests read, then bytes that must be refused.
use crate::smuggle::{Case, Expected, req};

fn host(mut e: Expected, h: &str) -> Expected {
    e.host = Some(h.into());
    e
}

fn any_host(mut e: Expected) -> Expected {
    e.host = None;
    e
}

/// `POST /p` with `fields` (each line without CRLF) and `body`.
pub(crate) fn post(fields: &[&str], body: &[u8]) -> Vec<u8> {
    let mut v = b"POST /p HTTP/1.1\r\nHost: t\r\n".to_vec();
    for f in fields {
        v.extend_from_slice(f.as_bytes());
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"\r\n");
    v.extend_from_slice(body);
    v
}

pub(crate) const TE: &str = "Transfer-Encoding: chunked";
pub(crate) const GET_B: &[u8] = b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n";
pub(crate) const HELLO: &[u8] = b"5\r\nhello\r\n0\r\n\r\n";

/// The client shuts down its side right after the bytes.
fn stops(mut c: Case) -> Case {
    c.half_close = true;
    c
}

pub(crate) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn te_cases() -> Vec<Case> {
    let hello = || vec![req("POST", "/p", b"hello")];
    let smuggled = cat(&[b"0\r\n\r\n", GET_B]);
    vec![
        Case::invalid(
            "CL.TE: Content-Length then chunked",
            &post(&["Content-Length: 6", TE], b"0\r\n\r\nX"),
        ),
        Case::invalid(
            "TE.CL: chunked then Content-Length",
            &post(&[TE, "Content-Length: 3"], b"8\r\nSMUGGLED\r\n0\r\n\r\n"),
        ),
        Case::invalid(
            "CL.TE with a request in the chunked body",
            &post(&["Content-Length: 35", TE], &smuggled),
        ),
        Case::invalid(
            "TE.CL, Content-Length: 0",
            &post(&[TE, "Content-Length: 0"], &smuggled),
        ),
        Case::valid("TE chunked", &post(&[TE], HELLO), hello()),
        Case::valid(
            "TE upper case",
            &post(&["TRANSFER-ENCODING: CHUNKED"], HELLO),
            hello(),
        ),
        Case::valid(
            "TE value with spaces and tabs around it",
            &post(&["Transfer-Encoding: \t chunked \t"], HELLO),
            hello(),
        ),
        Case::invalid(
            "TE with whitespace before the colon",
            &post(&["Transfer-Encoding : chunked", "Content-Length: 5"], HELLO),
        ),
        Case::invalid(
            "TE with a tab before the colon",
            &post(&["Transfer-Encoding\t: chunked"], HELLO),
        ),
        Case::invalid(
            "TE with a vertical tab",
            &post(&["Transfer-Encoding:\x0bchunked"], HELLO),
        ),
        Case::invalid(
            "TE chunked, identity",
            &post(&["Transfer-Encoding: chunked, identity"], HELLO),
        ),
        Case::invalid(
            "TE identity",
            &post(
                &["Transfer-Encoding: identity", "Content-Length: 5"],
                b"hello",
            ),
        ),
        Case::invalid(
            "TE identity, chunked",
            &post(&["Transfer-Encoding: identity, chunked"], HELLO),
        ),
        Case::invalid(
            "TE gzip, chunked (a coding not implemented)",
            &post(&["Transfer-Encoding: gzip, chunked"], HELLO),
        ),
        Case::invalid(
            "TE chunked, chunked",
            &post(&["Transfer-Encoding: chunked, chunked"], HELLO),
        ),
        Case::invalid("TE duplicated", &post(&[TE, TE], HELLO)),
        Case::invalid(
            "TE chunked then TE identity",
            &post(&[TE, "Transfer-Encoding: identity"], HELLO),
        ),
        Case::invalid(
            "TE identity then TE chunked",
            &post(&["Transfer-Encoding: identity", TE], HELLO),
        ),
        Case::invalid(
            "TE xchunked",
            &post(
                &["Transfer-Encoding: xchunked", "Content-Length: 5"],
                b"hello",
            ),
        ),
        Case::invalid(
            "TE quoted \"chunked\"",
            &post(&["Transfer-Encoding: \"chunked\""], HELLO),
        ),
        Case::invalid(
            "TE chunked with a parameter",
            &post(&["Transfer-Encoding: chunked;q=1"], HELLO),
        ),
        Case::invalid(
            "TE in an obs-fold",
            &post(&["X-A: a", " Transfer-Encoding: chunked"], HELLO),
        ),
        Case::invalid(
            "TE value continued by obs-fold",
            &post(&["Transfer-Encoding:", " chunked"], HELLO),
        ),
        Case::invalid(
            "HTTP/1.0 with TE chunked",
            &cat(&[
                b"POST /p HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
                HELLO,
            ]),
        ),
        Case::valid(
            "Transfer_Encoding (underscore) is another field",
            &post(
                &["Transfer_Encoding: chunked", "Content-Length: 5"],
                b"hello",
            ),
            hello(),
        ),
    ]
}

fn cl_cases() -> Vec<Case> {
    let hello = || vec![req("POST", "/p", b"hello")];
    vec![
        Case::valid("CL 5", &post(&["Content-Length: 5"], b"hello"), hello()),
        Case::valid(
            "CL twice, same value",
            &post(&["Content-Length: 5", "Content-Length: 5"], b"hello"),
            hello(),
        ),
        Case::invalid(
            "CL twice, different values",
            &post(&["Content-Length: 5", "Content-Length: 6"], b"hello!"),
        ),
        Case::valid(
            "CL comma list, same values",
            &post(&["Content-Length: 5, 5"], b"hello"),
            hello(),
        ),
        Case::invalid(
            "CL comma list, different values",
            &post(&["Content-Length: 5, 6"], b"hello!"),
        ),
        Case::invalid("CL signed +5", &post(&["Content-Length: +5"], b"hello")),
        Case::invalid("CL negative", &post(&["Content-Length: -5"], b"hello")),
        Case::valid(
            "CL leading zeros",
            &post(&["Content-Length: 0005"], b"hello"),
            hello(),
        ),
        Case::invalid(
            "CL past u64",
            &post(&["Content-Length: 99999999999999999999999"], b"hello"),
        ),
        Case::invalid(
            "CL past max_body_size, the body never sent",
            &post(&["Content-Length: 999999999999"], b"hello"),
        ),
        Case::invalid("CL hex", &post(&["Content-Length: 0x5"], b"hello")),
        Case::invalid("CL empty", &post(&["Content-Length:"], b"hello")),
        Case::invalid("CL with a NUL", &post(&["Content-Length: 5\0"], b"hello")),
        Case::invalid(
            "CL with a space inside",
            &post(&["Content-Length: 1 0"], b"hello"),
        ),
        Case::valid(
            "CL shorter than the data: the rest is the next request",
            &post(&["Content-Length: 3"], &cat(&[b"abc", GET_B])),
            vec![req("POST", "/p", b"abc"), req("GET", "/b", b"")],
        ),
        Case::valid(
            "CL body that looks like a request",
            &post(&["Content-Length: 28"], GET_B),
            vec![req("POST", "/p", GET_B)],
        ),
        Case::valid(
            "GET with a body",
            b"GET /g HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
            vec![req("GET", "/g", b"hello")],
        ),
        Case::valid(
            "Content_Length (underscore) is another field",
            &post(&["Content_Length: 5"], b""),
            vec![req("POST", "/p", b"")],
        ),
    ]
}

fn chunk_cases() -> Vec<Case> {
    let body = |b: &[u8]| post(&[TE], b);
    let read = |b: &[u8]| vec![req("POST", "/p", b)];
    vec![
        Case::valid(
            "chunk extension",
            &body(b"5;name=value\r\nhello\r\n0\r\n\r\n"),
            read(b"hello"),
        ),
        Case::valid(
            "chunk extension with a quoted string",
            &body(b"5;n=\"a;b\\\"c\"\r\nhello\r\n0;x\r\n\r\n"),
            read(b"hello"),
        ),
        Case::invalid(
            "chunk extension with a bare CR",
            &body(b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
        ),
        Case::invalid(
            "chunk extension with a bare LF",
            &body(b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
        ),
        Case::invalid(
            "quoted extension hiding a CRLF",
            &body(b"5;a=\"x\r\n0\r\n\r\n\"\r\nhello\r\n0\r\n\r\n"),
        ),
        Case::invalid(
            "chunk size overflow",
            &body(b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ),
        Case::invalid(
            "chunk size 2^64 + 5",
            &body(b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ),
        Case::invalid("chunk size +5", &body(b"+5\r\nhello\r\n0\r\n\r\n")),
        Case::invalid("chunk size 0x5", &body(b"0x5\r\nhello\r\n0\r\n\r\n")),
        Case::invalid(
            "chunk size with a leading space",
            &body(b" 5\r\nhello\r\n0\r\n\r\n"),
        ),
        Case::invalid("chunk size empty", &body(b"\r\nhello\r\n0\r\n\r\n")),
        Case::invalid(
            "bare LF after the chunk size",
            &body(b"5\nhello\r\n0\r\n\r\n"),
        ),
        Case::invalid(
            "bare LF after the chunk data",
            &body(b"5\r\nhello\n0\r\n\r\n"),
        ),
        Case::invalid(
            "chunk data longer than its size",
            &body(b"3\r\nhello\r\n0\r\n\r\n"),
        ),
        Case::valid(
            "chunk size in upper-case hex, two chunks",
            &body(b"A\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n"),
            read(b"0123456789x"),
        ),
        Case::valid(
            "trailer field",
            &body(b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"),
            read(b"hello"),
        ),
        Case::valid(
            "trailer Content-Length (forbidden)",
            &body(b"5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n"),
            read(b"hello"),
        ),
        Case::valid(
            "trailer Transfer-Encoding (forbidden)",
            &body(b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            read(b"hello"),
        ),
        Case::valid(
            "trailer Host (forbidden)",
            &body(b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n"),
            read(b"hello"),
        ),
        Case::valid(
            "trailers announced in Trailer, forbidden ones among them",
            &post(
                &[TE, "Trailer: Content-Length, Host, X-Sum"],
                b"5\r\nhello\r\n0\r\nContent-Length: 50\r\nHost: evil\r\nX-Sum: 1\r\n\r\n",
            ),
            read(b"hello"),
        ),
        Case::invalid(
            "trailer with a NUL",
            &body(b"5\r\nhello\r\n0\r\nX-A: a\0b\r\n\r\n"),
        ),
        stops(Case::invalid(
            "last chunk without its final CRLF, then the client stops",
            &body(b"5\r\nhello\r\n0\r\n"),
        )),
        stops(Case::invalid(
            "chunked body cut short, then the client stops",
            &body(b"5\r\nhel"),
        )),
        stops(Case::invalid(
            "Content-Length body cut short, then the client stops",
            &post(&["Content-Length: 5"], b"hel"),
        )),
        Case::valid(
            "chunked then a pipelined request",
            &cat(&[&body(HELLO), GET_B]),
            vec![req("POST", "/p", b"hello"), req("GET", "/b", b"")],
        ),
    ]
}

fn line_cases() -> Vec<Case> {
    let a = || vec![req("GET", "/a", b"")];
    vec![
        Case::valid("bare LF line endings", b"GET /a HTTP/1.1\nHost: t\n\n", a()),
        Case::valid(
            "bare LF ending the head only",
            b"GET /a HTTP/1.1\r\nHost: t\r\n\n",
            a(),
        ),
        Case::invalid(
            "bare CR ending the request line",
            b"GET /a HTTP/1.1\rHost: t\r\n\r\n",
        ),
        Case::invalid(
            "bare CR in a value",
            b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n",
        ),
        Case::invalid(
            "bare CR before the empty line",
            b"GET /a HTTP/1.1\r\nHost: t\r\n\rX-A: b\r\n\r\n",
        ),
        Case::invalid(
            "NUL in a value",
            b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n",
        ),
        Case::invalid(
            "NUL in a name",
            b"GET /a HTTP/1.1\r\nHost: t\r\nX\0A: b\r\n\r\n",
        ),
        Case::invalid(
            "control byte in a value",
            b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n",
        ),
        Case::invalid(
            "DEL in a value",
            b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n",
        ),
        Case::invalid(
            "escape byte in a name",
            b"GET /a HTTP/1.1\r\nHost: t\r\nX\x1bA: b\r\n\r\n",
        ),
        Case::invalid(
            "whitespace before the colon",
            b"GET /a HTTP/1.1\r\nHost: t\r\nX-A : b\r\n\r\n",
        ),
        Case::invalid(
            "space inside a name",
            b"GET /a HTTP/1.1\r\nHost: t\r\nX A: b\r\n\r\n",
        ),
        Case::invalid("empty name", b"GET /a HTTP/1.1\r\nHost: t\r\n: b\r\n\r\n"),
        Case::invalid(
            "line without a colon",
            b"GET /a HTTP/1.1\r\nHost: t\r\nX-A\r\n\r\n",
        ),
        Case::invalid(
            "obs-fold",
            b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: a\r\n  b\r\n\r\n",
        ),
        Case::invalid(
            "obs-fold on the first field line",
            b"GET /a HTTP/1.1\r\n Host: t\r\n\r\n",
        ),
        Case::valid(
            "empty lines before the request line",
            b"\r\n\r\nGET /a HTTP/1.1\r\nHost: t\r\n\r\n",
            a(),
        ),
        Case::valid(
            "obs-text in a value",
            b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: caf\xe9\r\n\r\n",
            a(),
        ),
        Case::invalid("no Host", b"GET /a HTTP/1.1\r\n\r\n"),
        Case::invalid(
            "two Hosts",
            b"GET /a HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n",
        ),
        Case::invalid("Host with a space", b"GET /a HTTP/1.1\r\nHost: t u\r\n\r\n"),
        Case::invalid("Host with a slash", b"GET /a HTTP/1.1\r\nHost: t/x\r\n\r\n"),
        Case::invalid(
            "Host with userinfo",
            b"GET /a HTTP/1.1\r\nHost: u@t\r\n\r\n",
        ),
        Case::invalid(
            "Host with a bad port",
            b"GET /a HTTP/1.1\r\nHost: t:8x\r\n\r\n",
        ),
        Case::valid(
            "Host with a port",
            b"GET /a HTTP/1.1\r\nHost: t:80\r\n\r\n",
            vec![host(req("GET", "/a", b""), "t:80")],
        ),
    ]
}

fn request_line_cases() -> Vec<Case> {
    let long_target = format!("/{}", "a".repeat(12_000));
    let long_field = format!("X-Long: {}", "b".repeat(40_000));
    vec![
        Case::invalid(
            "two spaces after the method",
            b"GET  /a HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        Case::invalid(
            "two spaces before the version",
            b"GET /a  HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        Case::invalid("tab as a separator", b"GET\t/a HTTP/1.1\r\nHost: t\r\n\r\n"),
        Case::invalid(
            "space after the version",
            b"GET /a HTTP/1.1 \r\nHost: t\r\n\r\n",
        ),
        Case::invalid("leading space", b" GET /a HTTP/1.1\r\nHost: t\r\n\r\n"),
        Case::invalid("no version", b"GET /a\r\nHost: t\r\n\r\n"),
        Case::invalid("version HTTP/1.2", b"GET /a HTTP/1.2\r\nHost: t\r\n\r\n"),
        Case::invalid("version HTTP/2.0", b"GET /a HTTP/2.0\r\nHost: t\r\n\r\n"),
        Case::invalid(
            "version in lower case",
            b"GET /a http/1.1\r\nHost: t\r\n\r\n",
        ),
        Case::invalid(
            "method with a bracket",
            b"G[T /a HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        Case::invalid("method with a NUL", b"G\0T /a HTTP/1.1\r\nHost: t\r\n\r\n"),
        Case::invalid("empty method", b" /a HTTP/1.1\r\nHost: t\r\n\r\n"),
        Case::valid(
            "method in lower case (another method)",
            b"get /a HTTP/1.1\r\nHost: t\r\n\r\n",
            vec![req("get", "/a", b"")],
        ),
        Case::valid(
            "extension method",
            b"PURGE /a HTTP/1.1\r\nHost: t\r\n\r\n",
            vec![req("PURGE", "/a", b"")],
        ),
        Case::invalid(
            "space in the target",
            b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        Case::invalid(
            "raw UTF-8 in the target",
            "GET /é HTTP/1.1\r\nHost: t\r\n\r\n".as_bytes(),
        ),
        Case::invalid(
            "fragment in the target",
            b"GET /a#b HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        Case::valid(
            "absolute-form with another Host",
            b"GET http://other.example/x?y=1 HTTP/1.1\r\nHost: t\r\n\r\n",
            vec![host(req("GET", "/x?y=1", b""), "other.example")],
        ),
        Case::valid(
            "absolute-form with a port",
            b"GET http://other.example:8080/x HTTP/1.1\r\nHost: other.example:8080\r\n\r\n",
            vec![host(req("GET", "/x", b""), "other.example:8080")],
        ),
        Case::invalid(
            "absolute-form with userinfo",
            b"GET http://u@other.example/x HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        Case::invalid(
            "authority-form GET",
            b"GET t:80 HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        Case::invalid(
            "CONNECT (not served here)",
            b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n",
        ),
        Case::valid(
            "asterisk-form OPTIONS",
            b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
            vec![req("OPTIONS", "*", b"")],
        ),
        Case::invalid("asterisk-form GET", b"GET * HTTP/1.1\r\nHost: t\r\n\r\n"),
        Case::valid(
            "very long target",
            format!("GET {long_target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
            vec![req("GET", &long_target, b"")],
        ),
        Case::valid(
            "very long field line",
            format!("GET /a HTTP/1.1\r\nHost: t\r\n{long_field}\r\n\r\n").as_bytes(),
            vec![req("GET", "/a", b"")],
        ),
        Case::valid(
            "HTTP/1.0 without Host",
            b"GET /a HTTP/1.0\r\n\r\n",
            vec![any_host(req("GET", "/a", b""))],
        ),
    ]
}

/// Every case of the suite.
pub fn cases() -> Vec<Case> {
    let mut all = te_cases();
    all.extend(cl_cases());
    all.extend(chunk_cases());
    all.extend(line_cases());
    all.extend(request_line_cases());
    all.extend(crate::smuggle_pipeline::expect_and_pipeline_cases());
    all
}
