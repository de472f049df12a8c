//! A strict RFC 9112 request reader for the smuggling tests: what a careful backend makes of
//! the bytes it received. httparse reads the head; the framing rules (section 6) and the
//! chunked coding (section 7.1) are checked here, with no leniency: bare LF, both framings, a
//! transfer coding other than one `chunked`, a Content-Length that is not one 1*DIGIT, a
//! malformed chunk or a trailer field that frames, routes or controls the message are errors.

/// One request as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrictRequest {
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub chunked: bool,
    pub trailers: Vec<(String, Vec<u8>)>,
}

/// What the bytes so far give.
#[derive(Debug)]
pub enum Parsed {
    /// A whole request and how many bytes it took.
    Complete(StrictRequest, usize),
    /// More bytes are needed.
    Partial,
}

/// Trailer fields a sender must not generate (RFC 9110 section 6.5.1: framing, routing,
/// request modifiers, authentication, control data, how to process the content).
const FORBIDDEN_TRAILERS: [&str; 14] = [
    "content-length",
    "transfer-encoding",
    "host",
    "trailer",
    "te",
    "connection",
    "content-type",
    "content-encoding",
    "content-range",
    "authorization",
    "expect",
    "range",
    "cache-control",
    "max-forwards",
];

/// Reads one request from the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Parsed, String> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            // A bare LF or CR is an error as soon as it is seen, not once the head ends.
            line_endings(buf)?;
            return Ok(Parsed::Partial);
        }
        Err(e) => return Err(format!("head: {e}")),
    };
    line_endings(&buf[..head_len])?;
    if req.version != Some(1) {
        return Err("not HTTP/1.1".into());
    }
    let fields: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let values = |name: &str| -> Vec<&[u8]> {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    let hosts = values("host");
    let host = match hosts.as_slice() {
        [one] if valid_host(one) => String::from_utf8(one.to_vec()).ok(),
        [one] => return Err(format!("invalid Host {:?}", String::from_utf8_lossy(one))),
        [] => return Err("no Host".into()),
        _ => return Err("more than one Host".into()),
    };
    let te = values("transfer-encoding");
    let cl = values("content-length");
    if !te.is_empty() && !cl.is_empty() {
        return Err("both Content-Length and Transfer-Encoding".into());
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    let mut out = StrictRequest {
        method,
        target,
        host,
        headers: fields.clone(),
        body: Vec::new(),
        chunked: false,
        trailers: Vec::new(),
    };
    let rest = &buf[head_len..];
    if !te.is_empty() {
        if te.len() != 1 || !te[0].eq_ignore_ascii_case(b"chunked") {
            return Err(format!(
                "Transfer-Encoding other than one chunked: {:?}",
                te.iter()
                    .map(|v| String::from_utf8_lossy(v))
                    .collect::<Vec<_>>()
            ));
        }
        out.chunked = true;
        return Ok(match chunked(rest, &mut out)? {
            Some(used) => Parsed::Complete(out, head_len + used),
            None => Parsed::Partial,
        });
    }
    let len = match cl.as_slice() {
        [] => 0,
        [one] if !one.is_empty() && one.len() <= 18 && one.iter().all(u8::is_ascii_digit) => {
            std::str::from_utf8(one)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or("Content-Length")?
        }
        [one] => {
            return Err(format!(
                "invalid Content-Length {:?}",
                String::from_utf8_lossy(one)
            ));
        }
        _ => return Err("more than one Content-Length".into()),
    };
    if rest.len() < len {
        return Ok(Parsed::Partial);
    }
    out.body = rest[..len].to_vec();
    Ok(Parsed::Complete(out, head_len + len))
}

/// Every LF is preceded by CR and every CR followed by LF (RFC 9112 section 2.2, strictly).
fn line_endings(head: &[u8]) -> Result<(), String> {
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' if i == 0 || head[i - 1] != b'\r' => return Err("bare LF".into()),
            b'\r' if head.get(i + 1).is_some_and(|&n| n != b'\n') => {
                return Err("bare CR".into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// `uri-host [ ":" port ]` with a reg-name or IPv4 host, or a bracketed IP-literal.
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &v[1..end];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
        {
            return false;
        }
        (&v[..=end], &v[end + 1..])
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        }
    };
    let reg_name = |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(b);
    let host_ok = host.first() == Some(&b'[') || host.iter().all(reg_name);
    let port_ok = port.is_empty() || (port[0] == b':' && port[1..].iter().all(u8::is_ascii_digit));
    host_ok && port_ok
}

/// A chunked body (RFC 9112 section 7.1) into `out`; the bytes it took, or None for more.
fn chunked(buf: &[u8], out: &mut StrictRequest) -> Result<Option<usize>, String> {
    let mut at = 0;
    loop {
        let Some(eol) = find_crlf(&buf[at..])? else {
            return Ok(None);
        };
        let line = &buf[at..at + eol];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 15 {
            return Err(format!(
                "chunk size {:?}",
                String::from_utf8_lossy(&line[..line.len().min(40)])
            ));
        }
        chunk_ext(&line[digits..])?;
        let size = usize::from_str_radix(std::str::from_utf8(&line[..digits]).unwrap_or(""), 16)
            .map_err(|e| e.to_string())?;
        at += eol + 2;
        if size == 0 {
            return trailers(buf, at, out);
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        out.body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

/// `*( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`, ext-val a token or quoted-string.
fn chunk_ext(mut s: &[u8]) -> Result<(), String> {
    let ws = |s: &[u8]| -> usize { s.iter().take_while(|b| **b == b' ' || **b == b'\t').count() };
    let token = |s: &[u8]| -> usize { s.iter().take_while(|b| is_tchar(**b)).count() };
    while !s.is_empty() {
        s = &s[ws(s)..];
        let Some(rest) = s.strip_prefix(b";") else {
            return Err(format!("chunk extension {:?}", String::from_utf8_lossy(s)));
        };
        s = &rest[ws(rest)..];
        let n = token(s);
        if n == 0 {
            return Err("chunk extension without a name".into());
        }
        s = &s[n..];
        let after = &s[ws(s)..];
        if let Some(v) = after.strip_prefix(b"=") {
            s = &v[ws(v)..];
            if s.first() == Some(&b'"') {
                let mut i = 1;
                loop {
                    match s.get(i) {
                        Some(b'"') => break,
                        Some(b'\\') if s.get(i + 1).is_some_and(|b| qd_text(*b)) => i += 2,
                        Some(b) if qd_text(*b) => i += 1,
                        _ => return Err("bad quoted chunk extension value".into()),
                    }
                }
                s = &s[i + 1..];
            } else {
                let n = token(s);
                if n == 0 {
                    return Err("chunk extension without a value".into());
                }
                s = &s[n..];
            }
        }
    }
    Ok(())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn qd_text(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// The trailer section after the last chunk, up to its empty line.
fn trailers(buf: &[u8], mut at: usize, out: &mut StrictRequest) -> Result<Option<usize>, String> {
    loop {
        let Some(eol) = find_crlf(&buf[at..])? else {
            return Ok(None);
        };
        let line = &buf[at..at + eol];
        at += eol + 2;
        if line.is_empty() {
            return Ok(Some(at));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err("trailer line without a colon".into());
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
            return Err(format!("trailer name {:?}", String::from_utf8_lossy(name)));
        }
        let value = line[colon + 1..].trim_ascii();
        if value.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
            return Err("control byte in a trailer value".into());
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        if FORBIDDEN_TRAILERS.contains(&name.as_str()) {
            return Err(format!("forbidden trailer field {name}"));
        }
        out.trailers.push((name, value.to_vec()));
    }
}

/// Position of the next CRLF; a bare CR or LF before it is an error.
fn find_crlf(buf: &[u8]) -> Result<Option<usize>, String> {
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err("bare CR".into()),
                    None => Ok(None),
                };
            }
            b'\n' => return Err("bare LF".into()),
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(raw: &[u8]) -> Result<StrictRequest, String> {
        match parse_request(raw)? {
            Parsed::Complete(r, n) => {
                assert_eq!(n, raw.len());
                Ok(r)
            }
            Parsed::Partial => Err("partial".into()),
        }
    }

    #[test]
    fn reads_both_framings() {
        let r = one(b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((r.method.as_str(), r.body.as_slice()), ("POST", &b"ok"[..]));
        let r = one(b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2;a=\"b c\"\r\nok\r\n0\r\nX-T: 1\r\n\r\n").unwrap();
        assert_eq!(r.body, b"ok");
        assert_eq!(r.trailers, vec![("x-t".to_string(), b"1".to_vec())]);
    }

    #[test]
    fn refuses_what_is_ambiguous() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: t\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1;a\rb\r\nx\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        ] {
            assert!(parse_request(raw).is_err(), "{}", String::from_utf8_lossy(raw));
        }
        assert!(valid_host(b"[::1]:80") && valid_host(b"example.com") && !valid_host(b"a/b"));
    }
}
