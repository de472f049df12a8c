//! The `Expect` and pipelining cases of the smuggling suite (see `smuggle_cases`).
use crate::smuggle::{Case, req};
use crate::smuggle_cases::{GET_B, HELLO, TE, cat, post};

pub fn expect_and_pipeline_cases() -> Vec<Case> {
    let good = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n";
    let a = || vec![req("GET", "/a", b"")];
    let mut waits = Case::valid(
        "Expect: 100-continue, body sent after the 100",
        &post(&["Content-Length: 5", "Expect: 100-continue"], b""),
        vec![req("POST", "/p", b"hello")],
    );
    waits.after_continue = Some(b"hello".to_vec());
    vec![
        Case::valid(
            "Expect: 100-continue, body sent at once",
            &post(&["Content-Length: 5", "Expect: 100-continue"], b"hello"),
            vec![req("POST", "/p", b"hello")],
        ),
        waits,
        Case::valid(
            "Expect: 100-continue without a body",
            b"GET /a HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n",
            a(),
        ),
        Case::valid(
            "Expect: 100-continue, chunked",
            &post(&[TE, "Expect: 100-continue"], HELLO),
            vec![req("POST", "/p", b"hello")],
        ),
        Case::valid(
            "unknown expectation",
            b"GET /a HTTP/1.1\r\nHost: t\r\nExpect: x-magic\r\n\r\n",
            a(),
        ),
        Case::valid(
            "Expect: 100-continue on HTTP/1.0",
            b"POST /p HTTP/1.0\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
            vec![req("POST", "/p", b"hello")],
        ),
        Case::valid("two pipelined GETs", &cat(&[good, GET_B]), vec![req("GET", "/a", b""), req("GET", "/b", b"")]),
        Case::after(
            "pipelined: good, CL.TE, good",
            &cat(&[good, &post(&["Content-Length: 6", TE], b"0\r\n\r\nX"), GET_B]),
            a(),
        ),
        Case::after(
            "pipelined: good, bad request line, good",
            &cat(&[good, b"GET /x y HTTP/1.1\r\nHost: t\r\n\r\n", GET_B]),
            a(),
        ),
        Case::after(
            "pipelined: good, broken chunk, good",
            &cat(&[good, &post(&[TE], b"+5\r\nhello\r\n0\r\n\r\n"), GET_B]),
            a(),
        ),
        Case::after(
            "pipelined: good, obs-fold, good",
            &cat(&[good, b"GET /x HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n", GET_B]),
            a(),
        ),
        Case::valid(
            "Connection: close, then a pipelined request",
            &cat(&[b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", GET_B]),
            a(),
        ),
    ]
}
