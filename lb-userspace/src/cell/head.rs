//! Checks on a request head before it is routed: what hyper leaves to the server (RFC 9112
//! framing ambiguities, Host rules, target bytes) and the configured limits. A refused
//! request never reaches an application.
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};

use crate::cell::framing::HeadFraming;
use crate::config::LimitsConfig;

/// A refused request: the status to answer and whether to close the connection after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub close: bool,
}

impl Refusal {
    fn bad_request() -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            close: true,
        }
    }
}

/// Fields that must appear at most once: frameworks read one value, and two `Host`s are an
/// error by RFC 9112 section 3.2 (gunicorn refuses the same set).
const SINGLETONS: [HeaderName; 3] = [header::HOST, header::CONTENT_TYPE, header::CONTENT_LENGTH];

/// Applies every head check; the smuggling and Host checks first.
pub fn check<B>(
    req: &Request<B>,
    framing: HeadFraming,
    limits: &LimitsConfig,
) -> Result<(), Refusal> {
    if framing.ambiguous() {
        // Request smuggling shape (RFC 9112 section 6.3): refuse and close.
        return Err(Refusal::bad_request());
    }
    if framing.fragment {
        // `#` is not part of a request target (RFC 9112 section 3.2); the URI parser would
        // drop what follows it, so the target read would not be the one sent.
        return Err(Refusal::bad_request());
    }
    let headers = req.headers();
    // HTTP/2's `:authority` has become `Host` by now (`http2::stream::prepare`).
    if matches!(req.version(), Version::HTTP_11 | Version::HTTP_2)
        && !headers.contains_key(header::HOST)
    {
        return Err(Refusal::bad_request());
    }
    if req.method() == Method::CONNECT && req.version() == Version::HTTP_2 {
        // Neither tunnels nor extended CONNECT (RFC 8441, WebSockets over HTTP/2) are served:
        // the cell never announces SETTINGS_ENABLE_CONNECT_PROTOCOL.
        return Err(Refusal {
            status: StatusCode::NOT_IMPLEMENTED,
            close: false,
        });
    }
    if let Some(name) = repeated_singleton(headers) {
        tracing::debug!("refused: repeated {name} field");
        return Err(Refusal::bad_request());
    }
    if headers
        .get(header::HOST)
        .is_some_and(|h| !valid_host(h.as_bytes()))
        || req
            .uri()
            .authority()
            .is_some_and(|a| !valid_host(a.as_str().as_bytes()))
    {
        // RFC 9112 section 3.2: an invalid Host is a 400; userinfo in a target is an error.
        return Err(Refusal::bad_request());
    }
    if !only_chunked(headers) {
        // hyper has refused a coding list that does not end in chunked; any other coding
        // before it (gzip, chunked twice) is one this server does not implement (RFC 9112
        // section 6.1), and passing it on would hand the next hop a different body.
        return Err(Refusal {
            status: StatusCode::NOT_IMPLEMENTED,
            close: true,
        });
    }
    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
    if !visible_ascii(target.as_bytes())
        || !visible_ascii(req.uri().authority().map_or("", |a| a.as_str()).as_bytes())
    {
        // Raw UTF-8 or control bytes: clients must percent-encode them (RFC 3986).
        return Err(Refusal::bad_request());
    }
    if target.len() as u64 > limits.max_uri_length.0 {
        return Err(Refusal {
            status: StatusCode::URI_TOO_LONG,
            close: true,
        });
    }
    let too_large = Refusal {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        close: true,
    };
    if headers.len() as i64 > limits.max_headers {
        return Err(too_large);
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes as u64 > limits.max_header_size.0 {
        return Err(too_large);
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limits.max_body_size.0
    {
        return Err(Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            close: true,
        });
    }
    if !req.uri().path().starts_with('/') {
        // Asterisk-form targets are not served here.
        return Err(Refusal::bad_request());
    }
    Ok(())
}

/// In absolute-form the target's authority is the request's host and `Host` is ignored (RFC
/// 9112 section 3.2.2): `Host` is set to it, so the routes and the next hop read the same host.
pub fn use_target_authority<B>(req: &mut Request<B>) {
    let Some(authority) = req.uri().authority() else {
        return;
    };
    if req.headers().contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
}

/// Transfer-Encoding, if any, is one field line whose value is `chunked`.
fn only_chunked(headers: &HeaderMap) -> bool {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => true,
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// `uri-host [ ":" port ]` (RFC 3986): a reg-name or IPv4 address, or a bracketed IP literal;
/// no userinfo, path or whitespace.
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|&b| b == b']') {
            Some(end) => {
                let inner = &v[1..end];
                let literal = !inner.is_empty()
                    && inner
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || b":.".contains(b));
                if !literal {
                    return false;
                }
                (&[][..], &v[end + 1..])
            }
            None => return false,
        },
        _ => match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &[][..]),
        },
    };
    let reg_name = |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(b);
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    host.iter().all(reg_name) && port_ok
}

fn repeated_singleton(headers: &HeaderMap) -> Option<&'static str> {
    SINGLETONS.iter().find_map(|name| {
        let mut values = headers.get_all(name).iter();
        values.next()?;
        values.next().map(|_| name.as_str())
    })
}

/// Every byte is visible ASCII (VCHAR, 0x21..=0x7E).
fn visible_ascii(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Whether the request has a body that the server must read or discard before the next
/// request on the connection.
pub fn has_body<B>(req: &Request<B>) -> bool {
    has_body_headers(req.headers())
}

/// `has_body`, from the header fields.
pub fn has_body_headers(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig::default()
    }

    fn req(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(target);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("valid test request")
    }

    fn status(r: &Request<()>, framing: HeadFraming) -> Option<u16> {
        check(r, framing, &limits())
            .err()
            .map(|e| e.status.as_u16())
    }

    #[test]
    fn a_plain_request_passes() {
        let r = req("/a?b=c", &[("host", "x"), ("content-type", "text/plain")]);
        assert_eq!(status(&r, HeadFraming::default()), None);
    }

    #[test]
    fn cl_with_te_is_refused_and_closed() {
        let r = req("/", &[("host", "x")]);
        let both = HeadFraming {
            content_length: true,
            transfer_encoding: true,
            fragment: false,
        };
        assert_eq!(check(&r, both, &limits()), Err(Refusal::bad_request()));
    }

    #[test]
    fn repeated_singletons_are_refused() {
        for name in ["host", "content-type", "content-length"] {
            let r = req("/", &[("host", "x"), (name, "1"), (name, "1")]);
            assert_eq!(status(&r, HeadFraming::default()), Some(400), "{name}");
        }
        // Other fields may repeat.
        let r = req("/", &[("host", "x"), ("accept", "a"), ("accept", "b")]);
        assert_eq!(status(&r, HeadFraming::default()), None);
    }

    #[test]
    fn missing_host_on_http11_is_refused() {
        assert_eq!(status(&req("/", &[]), HeadFraming::default()), Some(400));
    }

    #[test]
    fn targets_outside_visible_ascii_are_refused() {
        for raw in [&b"/caf\xc3\xa9"[..], b"/a\x7fb"] {
            // http::Uri takes these bytes as they come on the wire.
            let uri = http::Uri::from_maybe_shared(bytes::Bytes::copy_from_slice(raw));
            let Ok(uri) = uri else { continue };
            let r = Request::builder()
                .uri(uri)
                .header("host", "x")
                .body(())
                .expect("request");
            assert_eq!(status(&r, HeadFraming::default()), Some(400), "{raw:?}");
        }
        assert!(!visible_ascii(b"/a b"));
        assert!(!visible_ascii("/é".as_bytes()));
        assert!(visible_ascii(b"/caf%C3%A9?q=1&r=~"));
    }

    #[test]
    fn limits_apply() {
        let long = format!("/{}", "a".repeat(9000));
        assert_eq!(
            status(&req(&long, &[("host", "x")]), HeadFraming::default()),
            Some(414)
        );
        let r = req("/", &[("host", "x"), ("content-length", "99999999999")]);
        assert_eq!(status(&r, HeadFraming::default()), Some(413));
        // Asterisk-form (OPTIONS *) is not served here; the connection closes, like every
        // refusal.
        let r = req("*", &[("host", "x")]);
        assert_eq!(
            check(&r, HeadFraming::default(), &limits()),
            Err(Refusal::bad_request())
        );
    }

    #[test]
    fn transfer_codings_other_than_one_chunked_are_501() {
        for te in [
            &["gzip, chunked"][..],
            &["chunked, chunked"],
            &["chunked", "chunked"],
        ] {
            let mut h = vec![("host", "x")];
            h.extend(te.iter().map(|v| ("transfer-encoding", *v)));
            assert_eq!(
                status(&req("/", &h), HeadFraming::default()),
                Some(501),
                "{te:?}"
            );
        }
        let r = req("/", &[("host", "x"), ("transfer-encoding", " Chunked ")]);
        assert_eq!(status(&r, HeadFraming::default()), None);
    }

    #[test]
    fn invalid_hosts_and_userinfo_are_400() {
        for host in ["t u", "t/x", "u@t", "t:8x", "[::1", "a:1:2"] {
            let r = req("/", &[("host", host)]);
            assert_eq!(status(&r, HeadFraming::default()), Some(400), "{host:?}");
        }
        for host in [
            "t",
            "t:80",
            "127.0.0.1:8080",
            "[::1]:80",
            "xn--caf-dma.example",
        ] {
            let r = req("/", &[("host", host)]);
            assert_eq!(status(&r, HeadFraming::default()), None, "{host:?}");
        }
        let r = req("http://u@other/x", &[("host", "t")]);
        assert_eq!(status(&r, HeadFraming::default()), Some(400));
    }

    #[test]
    fn absolute_form_sets_host_and_a_fragment_is_400() {
        let mut r = req("http://other.example:8080/x", &[("host", "t")]);
        use_target_authority(&mut r);
        assert_eq!(r.headers()[header::HOST], "other.example:8080");
        let mut r = req("/x", &[("host", "t")]);
        use_target_authority(&mut r);
        assert_eq!(r.headers()[header::HOST], "t");
        let fragment = HeadFraming {
            fragment: true,
            ..HeadFraming::default()
        };
        assert_eq!(status(&req("/a", &[("host", "x")]), fragment), Some(400));
    }

    #[test]
    fn http2_requests_need_an_authority_and_connect_is_501() {
        let h2 = |method: &str, target: &str, headers: &[(&str, &str)]| {
            let mut r = req(target, headers);
            *r.version_mut() = Version::HTTP_2;
            *r.method_mut() = method.parse().unwrap();
            status(&r, HeadFraming::default())
        };
        assert_eq!(h2("GET", "/x", &[]), Some(400));
        assert_eq!(h2("GET", "/x", &[("host", "t")]), None);
        assert_eq!(h2("CONNECT", "/chat", &[("host", "t")]), Some(501));
        assert_eq!(h2("CONNECT", "t:443", &[("host", "t:443")]), Some(501));
    }
}
