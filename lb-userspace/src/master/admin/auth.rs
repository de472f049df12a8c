//! The admin endpoint's bearer token (`[server] admin_token_file`): with one, every request
//! must carry `Authorization: Bearer <token>` (compared in constant time, so the answer's
//! timing says nothing about how much of a guess was right); without one, changes stay
//! loopback-only.
use std::cell::RefCell;
use std::fmt;
use std::path::Path;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use subtle::ConstantTimeEq as _;

use crate::config::Config;

/// The token, read from its file at start and on SIGHUP.
pub struct AdminToken(Vec<u8>);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    pub fn read(path: &Path) -> Result<Self, String> {
        crate::config::read_admin_token(path).map(AdminToken)
    }

    /// Whether `headers` carry this token as `Authorization: Bearer <token>` (the scheme's
    /// case does not matter, RFC 9110 section 11.1).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return false;
        };
        let v = v.as_bytes();
        let Some((scheme, given)) = v.split_at_checked(6) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") || !given.starts_with(b" ") {
            return false;
        }
        bool::from(given.trim_ascii().ct_eq(&self.0))
    }
}

/// 401 with the challenge (RFC 6750): `error="invalid_token"` when a token came and was wrong.
pub fn unauthorized(headers: &HeaderMap) -> Response<Full<Bytes>> {
    let challenge = if headers.contains_key(header::AUTHORIZATION) {
        "Bearer realm=\"portico admin\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"portico admin\""
    };
    let mut r = Response::new(Full::new(Bytes::from_static(
        b"401 Unauthorized: this admin endpoint needs Authorization: Bearer <token>\n",
    )));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    r
}

/// The token at start (validation read the file a moment ago).
pub fn at_start(cfg: &Config) -> anyhow::Result<Option<AdminToken>> {
    let path = cfg.server.admin_token_file.as_deref();
    path.map(AdminToken::read)
        .transpose()
        .map_err(|e| anyhow::anyhow!("server.admin_token_file: {e}"))
}

/// SIGHUP: the reloaded configuration's token (none when it has no file). An unreadable file
/// keeps the token in use, with an error logged (validation read it a moment ago, so this
/// is a race with whoever changes it).
pub fn reload(token: &RefCell<Option<AdminToken>>, cfg: &Config) {
    let Some(path) = cfg.server.admin_token_file.as_deref() else {
        *token.borrow_mut() = None;
        return;
    };
    match AdminToken::read(path) {
        Ok(t) => *token.borrow_mut() = Some(t),
        Err(e) => tracing::error!("server.admin_token_file: {e}; keeping the token in use"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for a in auth {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn admits_only_the_exact_bearer_token() {
        let t = AdminToken(b"s3cret".to_vec());
        assert!(t.admits(&headers(&["Bearer s3cret"])));
        assert!(t.admits(&headers(&["bearer s3cret"])));
        assert!(t.admits(&headers(&["BEARER  s3cret "])));
        assert!(!t.admits(&headers(&[])));
        assert!(!t.admits(&headers(&["Bearer s3cre"])));
        assert!(!t.admits(&headers(&["Bearer s3cret2"])));
        assert!(!t.admits(&headers(&["Bearers3cret"])));
        assert!(!t.admits(&headers(&["Basic czNjcmV0"])));
        assert!(!t.admits(&headers(&["Bearer"])));
        assert!(!t.admits(&headers(&["Bearer s3cret", "Bearer s3cret"])));
    }

    #[test]
    fn challenge_says_whether_a_token_was_wrong() {
        let r = unauthorized(&headers(&[]));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"portico admin\""
        );
        let r = unauthorized(&headers(&["Bearer nope"]));
        assert!(
            r.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
    }
}
