//! URL mapping between the client's space (under the route prefix) and the upstream's (under
//! `path`): the request target on the way in, `Location` and `Refresh` on the way out.
use crate::config::Redirect;

/// The upstream request target, like nginx's `proxy_pass`: with a `path`, the route prefix of
/// the request path is replaced by it; without one the target is passed unchanged.
pub fn upstream_target(target: &str, prefix: &str, path: Option<&str>) -> String {
    let Some(path) = path else {
        return target.to_string();
    };
    let rest = target.strip_prefix(prefix).unwrap_or_else(|| {
        // `/app` requested for prefix `/app/` never routes here; a prefix without its slash
        // matches `/app` itself: what follows it.
        target
            .strip_prefix(prefix.trim_end_matches('/'))
            .unwrap_or(target)
    });
    let rest = if path.ends_with('/') {
        rest.trim_start_matches('/')
    } else {
        rest
    };
    if rest.starts_with('?') || rest.is_empty() || path.ends_with('/') || rest.starts_with('/') {
        format!("{path}{rest}")
    } else {
        format!("{path}/{rest}")
    }
}

/// A `Location` (or a `Refresh`'s URL) mapped back to the client's space; None: unchanged.
/// `hosts`: authorities that mean "this site" (the request's Host, the upstream server).
pub fn redirect(
    value: &str,
    rule: &Redirect,
    prefix: &str,
    path: Option<&str>,
    hosts: &[&str],
) -> Option<String> {
    match rule {
        Redirect::Off => None,
        Redirect::Pairs(pairs) => pairs.iter().find_map(|(from, to)| {
            value
                .strip_prefix(from.as_str())
                .map(|r| format!("{to}{r}"))
        }),
        Redirect::Default => {
            let upstream_path = path?;
            // An absolute URL on this site becomes path-absolute; another site's is left alone.
            // A network-path reference (`//host/x`; browsers read `/\` the same) names a
            // site too.
            let network = value
                .strip_prefix(['/', '\\'])
                .and_then(|v| v.strip_prefix(['/', '\\']));
            // Only a scheme before `://` makes an absolute URL: `/login?next=http://x` is a path.
            let absolute = value.split_once("://").filter(|(s, _)| is_scheme(s));
            let local = match (absolute, network) {
                (_, Some(rest)) => on_site(rest, hosts)?,
                (Some((scheme, rest)), None) if scheme == "http" || scheme == "https" => {
                    on_site(rest, hosts)?
                }
                (Some(_), None) => return None,
                (None, None) => value,
            };
            if !local.starts_with('/') {
                return None;
            }
            // Already in the client's space (an app that knows its mount point): only the
            // host part goes.
            if local.starts_with(prefix) && !upstream_path.starts_with(prefix) {
                return (local != value).then(|| path_only(local));
            }
            let rest = local.strip_prefix(upstream_path)?;
            let boundary = upstream_path.ends_with('/')
                || rest.is_empty()
                || rest.starts_with(['/', '?', '#']);
            if !boundary {
                // `/svcx` is not under `path = "/svc"`.
                return None;
            }
            let base = prefix.trim_end_matches('/');
            let joined = if upstream_path.ends_with('/') {
                format!("{base}/{rest}")
            } else {
                format!("{base}{rest}")
            };
            Some(path_only(&joined))
        }
    }
}

/// RFC 3986's `scheme`: a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

/// The path of `authority/path` when the authority is one of `hosts` (this site).
fn on_site<'a>(rest: &'a str, hosts: &[&str]) -> Option<&'a str> {
    let (authority, p) = rest.split_at(rest.find(['/', '\\']).unwrap_or(rest.len()));
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(authority)) {
        return None;
    }
    Some(if p.is_empty() { "/" } else { p })
}

/// A path on this site as a `Location`: exactly one leading slash, so that it never reads as
/// `//host`, another site, nor as a relative reference (found by the `location_rewrite` fuzz
/// target: `/v2//evil.com` under `path = "/v2"` and prefix `/` became `//evil.com`).
fn path_only(p: &str) -> String {
    let rest = p.trim_start_matches(['/', '\\']);
    if p.len() == rest.len() + 1 && p.starts_with('/') {
        return p.to_string();
    }
    format!("/{rest}")
}

/// A `Refresh` value (`5; url=/x`) with its URL mapped by `map`.
pub fn refresh(value: &str, map: impl FnOnce(&str) -> Option<String>) -> Option<String> {
    let lower = value.to_ascii_lowercase();
    let at = lower.find("url=")? + 4;
    let url = value[at..].trim();
    let mapped = map(url)?;
    Some(format!("{}{mapped}", &value[..at]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_proxy_pass() {
        assert_eq!(upstream_target("/app/x?q=1", "/app/", Some("/")), "/x?q=1");
        assert_eq!(upstream_target("/app/", "/app/", Some("/")), "/");
        assert_eq!(upstream_target("/app/x", "/app/", Some("/v2/")), "/v2/x");
        assert_eq!(upstream_target("/app/x", "/app/", None), "/app/x");
        assert_eq!(upstream_target("/api/x", "/api", Some("/")), "/x");
        assert_eq!(upstream_target("/api?x", "/api", Some("/svc")), "/svc?x");
    }

    #[test]
    fn default_redirects_put_the_prefix_back_once() {
        let d = Redirect::Default;
        let hosts = ["example.com", "127.0.0.1:8001"];
        let r = |v: &str| redirect(v, &d, "/catmaid/", Some("/"), &hosts);
        assert_eq!(r("/login/").as_deref(), Some("/catmaid/login/"));
        assert_eq!(r("http://example.com/a?b").as_deref(), Some("/catmaid/a?b"));
        assert_eq!(r("http://127.0.0.1:8001/").as_deref(), Some("/catmaid/"));
        // Already under the prefix (FORCE_SCRIPT_NAME): not doubled, host dropped.
        assert_eq!(r("/catmaid/x"), None);
        assert_eq!(
            r("http://example.com/catmaid/x").as_deref(),
            Some("/catmaid/x")
        );
        // Another site, or relative: unchanged.
        assert_eq!(r("https://other.org/x"), None);
        assert_eq!(r("next/page"), None);
        // No path part: the spaces are the same.
        assert_eq!(redirect("/x", &d, "/a/", None, &hosts), None);
        let v2 = |v: &str| redirect(v, &d, "/app/", Some("/v2/"), &hosts);
        assert_eq!(v2("/v2/x").as_deref(), Some("/app/x"));
        assert_eq!(v2("/other"), None);
    }

    #[test]
    fn mapped_redirects_stay_on_this_site() {
        let d = Redirect::Default;
        let hosts = ["example.com"];
        let r = |v: &str, prefix: &str, path: &str| redirect(v, &d, prefix, Some(path), &hosts);
        assert_eq!(r("/v2//evil.com", "/", "/v2").as_deref(), Some("/evil.com"));
        assert_eq!(
            r("/v2//evil.com", "/", "/v2/").as_deref(),
            Some("/evil.com")
        );
        assert_eq!(
            r("/v2/\\evil.com", "/", "/v2/").as_deref(),
            Some("/evil.com")
        );
        assert_eq!(
            r("http://example.com//evil.com", "/", "/").as_deref(),
            Some("/evil.com")
        );
        // A network-path reference to another site is left alone; to this one it is a path.
        assert_eq!(r("//evil.com/x", "/a/", "/"), None);
        assert_eq!(r("/\\evil.com/x", "/a/", "/"), None);
        assert_eq!(r("//example.com/x", "/a/", "/").as_deref(), Some("/a/x"));
        // The upstream's root under prefix `/` is `/`, not an empty field; `/svcx` is not
        // under `/svc`.
        assert_eq!(r("/svc", "/", "/svc").as_deref(), Some("/"));
        assert_eq!(r("/svc?x", "/", "/svc").as_deref(), Some("/?x"));
        assert_eq!(r("/svcx", "/", "/svc"), None);
        // A URL in the query leaves the path a path (found by the `location_rewrite` target).
        assert_eq!(
            r("/login?next=http://example.com/x", "/a/", "/").as_deref(),
            Some("/a/login?next=http://example.com/x")
        );
        assert_eq!(
            r("/v2/a://x", "/app/", "/v2/").as_deref(),
            Some("/app/a://x")
        );
        assert_eq!(r("ftp://example.com/x", "/a/", "/"), None);
        // Slashes inside the path are the app's business.
        assert_eq!(r("/x//y", "/a/", "/").as_deref(), Some("/a/x//y"));
    }

    #[test]
    fn pairs_and_off() {
        let p = Redirect::Pairs(vec![("/old/".into(), "/new/".into())]);
        assert_eq!(
            redirect("/old/x", &p, "/", None, &[]).as_deref(),
            Some("/new/x")
        );
        assert_eq!(redirect("/x", &p, "/", None, &[]), None);
        assert_eq!(redirect("/x", &Redirect::Off, "/a/", Some("/"), &[]), None);
    }

    #[test]
    fn refresh_urls() {
        let m = |u: &str| Some(format!("/p{u}"));
        assert_eq!(refresh("5; url=/x", m).as_deref(), Some("5; url=/p/x"));
        assert_eq!(refresh("5", |_| Some(String::new())), None);
    }
}
