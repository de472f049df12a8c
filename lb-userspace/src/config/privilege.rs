//! The least-privilege keys of `[server]`: `user` / `group` (the account the cells run as)
//! and `admin_token_file` (the admin endpoint's bearer token), their checks, and the warnings
//! a working but risky setting gets.
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use super::schema::{Config, ServerConfig};

/// The account `[server] user` / `group` name, looked up in the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub uid: u32,
    pub group: String,
    pub gid: u32,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (uid {}), group {} (gid {})",
            self.user, self.uid, self.group, self.gid
        )
    }
}

/// Where a lookup failed: the key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupError {
    pub key: &'static str,
    pub message: String,
}

fn lookup_user(name: &str) -> Result<nix::unistd::User, LookupError> {
    nix::unistd::User::from_name(name)
        .map_err(|e| LookupError {
            key: "server.user",
            message: format!("looking up {name:?}: {e}"),
        })?
        .ok_or_else(|| LookupError {
            key: "server.user",
            message: format!("no such user {name:?}"),
        })
}

fn lookup_group(name: &str) -> Result<nix::unistd::Group, LookupError> {
    nix::unistd::Group::from_name(name)
        .map_err(|e| LookupError {
            key: "server.group",
            message: format!("looking up {name:?}: {e}"),
        })?
        .ok_or_else(|| LookupError {
            key: "server.group",
            message: format!("no such group {name:?}"),
        })
}

impl ServerConfig {
    /// The cells' account, or None when `user` is not set. The group defaults to the user's
    /// primary group, as with nginx's `user` and systemd's `User=`.
    pub fn identity(&self) -> Result<Option<Identity>, LookupError> {
        let Some(name) = &self.user else {
            return match &self.group {
                Some(_) => Err(group_without_user()),
                None => Ok(None),
            };
        };
        let user = lookup_user(name)?;
        let (group, gid) = match &self.group {
            Some(g) => {
                let g = lookup_group(g)?;
                (g.name, g.gid)
            }
            None => match nix::unistd::Group::from_gid(user.gid) {
                Ok(Some(g)) => (g.name, g.gid),
                _ => (user.gid.to_string(), user.gid),
            },
        };
        Ok(Some(Identity {
            user: user.name,
            uid: user.uid.as_raw(),
            group,
            gid: gid.as_raw(),
        }))
    }
}

fn group_without_user() -> LookupError {
    LookupError {
        key: "server.group",
        message: "needs server.user (the group of which user?)".into(),
    }
}

/// The token in `path`: its first line without surrounding whitespace (a trailing newline
/// from `echo` or `openssl rand -hex 32 > FILE` is not part of it). Empty is an error.
pub fn read_admin_token(path: &Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let token = raw
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .to_vec();
    if token.is_empty() {
        return Err(format!(
            "{} holds no token (empty first line)",
            path.display()
        ));
    }
    if token.iter().any(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "{}: a bearer token is visible ASCII without spaces",
            path.display()
        ));
    }
    Ok(token)
}

/// The checks of `validate()` for these keys; a relative token path is made absolute.
pub(super) fn validate_privilege(
    s: &mut ServerConfig,
    base: &Path,
    bad: &mut dyn FnMut(String, String),
) {
    // Each looked up on its own, so a wrong user and a wrong group are reported together.
    let user = s.user.as_deref().map(lookup_user);
    let group = s.group.as_deref().map(lookup_group);
    for e in [user.and_then(Result::err), group.and_then(Result::err)]
        .into_iter()
        .flatten()
    {
        bad(e.key.into(), e.message);
    }
    if s.user.is_none() && s.group.is_some() {
        let e = group_without_user();
        bad(e.key.into(), e.message);
    }
    if let Some(p) = &mut s.admin_token_file {
        *p = base.join(&*p);
        if let Err(m) = read_admin_token(p) {
            bad("server.admin_token_file".into(), m);
        }
    }
}

impl Config {
    /// Settings that work but deserve a word (logged at start, printed by `portico check`).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = &self.server.admin_token_file
            && let Ok(meta) = std::fs::metadata(p)
            && meta.permissions().mode() & 0o004 != 0
        {
            out.push(format!(
                "server.admin_token_file: {} is world-readable (chmod 600 it)",
                p.display()
            ));
        }
        if let Ok(addr) = self.server.admin.parse::<std::net::SocketAddr>()
            && !addr.ip().is_loopback()
            && self.server.admin_token_file.is_none()
        {
            out.push(format!(
                "server.admin: {addr} is reachable from other hosts and no admin_token_file is set: \
                 /metrics and /status are open to them (changes stay loopback-only)"
            ));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        out.extend(super::tls::tls_warnings(&self.tls, now));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(user: Option<&str>, group: Option<&str>) -> ServerConfig {
        ServerConfig {
            user: user.map(Into::into),
            group: group.map(Into::into),
            ..ServerConfig::default()
        }
    }

    #[test]
    fn identity_defaults_to_the_primary_group() {
        let id = server(Some("root"), None).identity().unwrap().unwrap();
        assert_eq!((id.uid, id.gid), (0, 0));
        assert_eq!(server(None, None).identity(), Ok(None));
    }

    #[test]
    fn unknown_user_and_group_are_errors_under_their_keys() {
        let e = server(Some("no-such-user-portico"), None)
            .identity()
            .unwrap_err();
        assert_eq!(e.key, "server.user");
        let e = server(Some("root"), Some("no-such-group-portico"))
            .identity()
            .unwrap_err();
        assert_eq!(e.key, "server.group");
        let e = server(None, Some("root")).identity().unwrap_err();
        assert_eq!(e.key, "server.group");
    }

    #[test]
    fn token_is_the_trimmed_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "  s3cret-token\nignored\n").unwrap();
        assert_eq!(read_admin_token(&p).unwrap(), b"s3cret-token");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_admin_token(&p).unwrap_err().contains("no token"));
        std::fs::write(&p, "two words").unwrap();
        assert!(read_admin_token(&p).is_err());
        assert!(read_admin_token(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn warns_about_a_world_readable_token_and_an_open_admin() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "tok").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut cfg = Config::default();
        cfg.server.admin = "0.0.0.0:9090".into();
        let w = cfg.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("no admin_token_file"));
        cfg.server.admin_token_file = Some(p.clone());
        let w = cfg.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("world-readable"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(cfg.warnings().is_empty());
    }
}
