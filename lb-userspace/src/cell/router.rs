//! Longest-prefix routing. Prefixes without a trailing slash match on segment boundaries, so
//! `/app` serves `/app` and `/app/x` but not `/application`.
use crate::cell::asgi::route::AsgiRoute;
use crate::cell::proxy::pool::Upstreams;
use crate::cell::proxy::route::ProxyRoute;
use crate::cell::static_files::StaticRoute;
use crate::cell::wsgi::route::WsgiRoute;
use crate::config::RouteConfig;

pub enum Handler {
    Static(StaticRoute),
    Wsgi(WsgiRoute),
    Asgi(AsgiRoute),
    Proxy(ProxyRoute),
}

pub struct Route {
    pub prefix: String,
    pub handler: Handler,
    /// The route's index in the metrics region: its index in the configuration + 1 (0 is
    /// for requests that matched no route).
    pub metrics_index: usize,
}

pub enum Match<'a> {
    /// Route index, route, and the raw path below the prefix.
    Route(usize, &'a Route, &'a str),
    /// The path is the prefix without its trailing slash: redirect to the prefix.
    AddSlash(&'a Route),
    None,
}

pub struct Router {
    /// Longest prefix first.
    routes: Vec<Route>,
}

impl Router {
    /// `wsgi` and `asgi` hold the started Python routes, index-aligned with `cfg`; `upstreams`
    /// the cell's upstream groups.
    pub fn new(
        cfg: &[RouteConfig],
        wsgi: Vec<Option<WsgiRoute>>,
        asgi: Vec<Option<AsgiRoute>>,
        upstreams: &Upstreams,
    ) -> Self {
        let mut asgi = asgi.into_iter().chain(std::iter::repeat_with(|| None));
        let mut routes: Vec<Route> = cfg
            .iter()
            .zip(wsgi.into_iter().chain(std::iter::repeat_with(|| None)))
            .enumerate()
            .filter_map(|(i, (r, w))| {
                let a = asgi.next().flatten();
                let handler = match (w, a, &r.static_files, &r.proxy) {
                    (Some(w), _, _, _) => Handler::Wsgi(w),
                    (None, Some(a), _, _) => Handler::Asgi(a),
                    (None, None, Some(s), _) => Handler::Static(StaticRoute::new(s)),
                    (None, None, None, Some(p)) => {
                        Handler::Proxy(ProxyRoute::new(&r.prefix, p, upstreams)?)
                    }
                    (None, None, None, None) => return None,
                };
                Some(Route {
                    prefix: r.prefix.clone(),
                    handler,
                    metrics_index: i + 1,
                })
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Router { routes }
    }

    /// The WSGI route with this index (as returned by `find`).
    pub fn wsgi(&self, id: usize) -> Option<&WsgiRoute> {
        match &self.routes.get(id)?.handler {
            Handler::Wsgi(w) => Some(w),
            Handler::Static(_) | Handler::Asgi(_) | Handler::Proxy(_) => None,
        }
    }

    /// The ASGI route with this index (as returned by `find`).
    pub fn asgi(&self, id: usize) -> Option<&AsgiRoute> {
        match &self.routes.get(id)?.handler {
            Handler::Asgi(a) => Some(a),
            Handler::Static(_) | Handler::Wsgi(_) | Handler::Proxy(_) => None,
        }
    }

    pub fn asgi_routes(&self) -> impl Iterator<Item = &AsgiRoute> {
        self.routes.iter().filter_map(|r| match &r.handler {
            Handler::Asgi(a) => Some(a),
            _ => None,
        })
    }

    /// The proxy route with this index (as returned by `find`).
    pub fn proxy(&self, id: usize) -> Option<&ProxyRoute> {
        match &self.routes.get(id)?.handler {
            Handler::Proxy(p) => Some(p),
            Handler::Static(_) | Handler::Wsgi(_) | Handler::Asgi(_) => None,
        }
    }

    pub fn wsgi_routes(&self) -> impl Iterator<Item = &WsgiRoute> {
        self.routes.iter().filter_map(|r| match &r.handler {
            Handler::Wsgi(w) => Some(w),
            Handler::Static(_) | Handler::Asgi(_) | Handler::Proxy(_) => None,
        })
    }

    pub fn find<'a>(&'a self, path: &'a str) -> Match<'a> {
        for (i, r) in self.routes.iter().enumerate() {
            let p = r.prefix.as_str();
            if let Some(rest) = path.strip_prefix(p) {
                if p.ends_with('/') || rest.is_empty() || rest.starts_with('/') {
                    return Match::Route(i, r, rest);
                }
            } else if p.len() > 1 && p.ends_with('/') && path == &p[..p.len() - 1] {
                return Match::AddSlash(r);
            }
        }
        Match::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticConfig;

    fn router(prefixes: &[&str]) -> Router {
        let cfg: Vec<RouteConfig> = prefixes
            .iter()
            .map(|p| RouteConfig {
                prefix: p.to_string(),
                static_files: Some(StaticConfig::default()),
                wsgi: None,
                asgi: None,
                proxy: None,
            })
            .collect();
        Router::new(&cfg, Vec::new(), Vec::new(), &Upstreams::default())
    }

    fn hit(r: &Router, path: &str) -> Option<(String, String)> {
        match r.find(path) {
            Match::Route(_, route, rest) => Some((route.prefix.clone(), rest.to_string())),
            _ => None,
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let r = router(&["/", "/static/", "/static/img/", "/app"]);
        assert_eq!(
            hit(&r, "/static/img/a.png"),
            Some(("/static/img/".into(), "a.png".into()))
        );
        assert_eq!(
            hit(&r, "/static/a.css"),
            Some(("/static/".into(), "a.css".into()))
        );
        assert_eq!(
            hit(&r, "/index.html"),
            Some(("/".into(), "index.html".into()))
        );
        assert_eq!(hit(&r, "/app/x"), Some(("/app".into(), "/x".into())));
        assert_eq!(
            hit(&r, "/application"),
            Some(("/".into(), "application".into()))
        );
        assert!(matches!(r.find("/static"), Match::AddSlash(_)));
    }

    #[test]
    fn no_match_without_root_route() {
        let r = router(&["/static/"]);
        assert!(matches!(r.find("/other"), Match::None));
    }
}
