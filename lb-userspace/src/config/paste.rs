//! PasteDeploy apps (`wsgi = { paste = "production.ini", app_name = "main" }`, `--paste
//! FILE[#NAME]`): what can be checked without importing anything, and the `.ini`'s
//! `[server:*]` sections, which Portico replaces.
use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use super::schema::WsgiConfig;

/// `FILE[#NAME]` from the command line, as gunicorn and uWSGI write it.
pub fn split_flag(flag: &str) -> Result<(PathBuf, Option<String>), String> {
    let (file, name) = match flag.rsplit_once('#') {
        Some((f, n)) => (f, Some(n)),
        None => (flag, None),
    };
    if file.is_empty() {
        return Err(format!("{flag:?} names no file (FILE[#NAME])"));
    }
    match name {
        Some(n) if n.trim().is_empty() => Err(format!("{flag:?}: empty app name after '#'")),
        n => Ok((PathBuf::from(file), n.map(str::to_string))),
    }
}

/// Checks a route's `paste` and `app_name` and makes the path absolute against `dir` (the
/// route's chdir). Whether the named app exists is PasteDeploy's to say at import time.
pub(super) fn validate(
    w: &mut WsgiConfig,
    dir: &Path,
    key: &dyn Fn(&str) -> String,
    bad: &mut dyn FnMut(String, String),
) {
    match (&w.paste, &w.app_name) {
        (None, Some(_)) => bad(key("wsgi.app_name"), "applies only with `paste`".into()),
        (_, Some(n)) if n.trim().is_empty() => {
            bad(key("wsgi.app_name"), "is empty".into());
        }
        _ => {}
    }
    let Some(p) = &w.paste else { return };
    let abs = dir.join(p);
    match std::fs::File::open(&abs) {
        Ok(_) if abs.is_file() => w.paste = Some(abs),
        Ok(_) => bad(
            key("wsgi.paste"),
            format!("{} is not a file", abs.display()),
        ),
        Err(e) => bad(key("wsgi.paste"), format!("{}: {e}", abs.display())),
    }
}

/// Names of the `[server:*]` sections in `path`, in file order.
pub fn server_sections(path: &Path) -> std::io::Result<Vec<String>> {
    let f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for line in f.lines() {
        // configparser's section header: `[name]` at the start of a (stripped) line.
        let line = line?;
        let t = line.trim();
        if let Some(name) = t
            .strip_prefix('[')
            .and_then(|r| r.rfind(']').map(|i| &r[..i]))
            .filter(|n| n.starts_with("server:"))
        {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::Config;

    #[test]
    fn flag_takes_an_optional_app_name() {
        assert_eq!(
            split_flag("production.ini"),
            Ok(("production.ini".into(), None))
        );
        assert_eq!(
            split_flag("site/prod.ini#admin"),
            Ok(("site/prod.ini".into(), Some("admin".into())))
        );
        assert!(split_flag("#main").is_err());
        assert!(split_flag("prod.ini#").is_err());
    }

    #[test]
    fn paste_routes_are_validated_without_importing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prod.ini"), "[app:main]\nuse = call:x:y\n").unwrap();
        let text = format!(
            r#"
[[route]]
prefix = "/a/"
wsgi = {{ paste = "prod.ini", app_name = "admin", chdir = "{d}" }}

[[route]]
prefix = "/b/"
wsgi = {{ paste = "missing.ini", app = "x:y", chdir = "{d}" }}

[[route]]
prefix = "/c/"
wsgi = {{ app = "x:y", app_name = "" }}

[[route]]
prefix = "/d/"
wsgi = {{ paste = "{d}" }}
"#,
            d = dir.path().display()
        );
        let mut cfg = Config::parse(&text, "t.toml").unwrap();
        let errs = cfg.clone().validate().unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "route[1].wsgi",
                "route[1].wsgi.paste",
                "route[2].wsgi.app_name",
                "route[3].wsgi.paste",
            ],
            "{errs:?}"
        );
        assert!(errs[1].message.contains("missing.ini"), "{errs:?}");
        assert!(errs[3].message.contains("not a file"), "{errs:?}");

        cfg.routes.truncate(1);
        cfg.validate().unwrap();
        let w = cfg.routes[0].wsgi.as_ref().unwrap();
        assert_eq!(
            w.spec(),
            Some(wsgi_worker::AppSpec::Paste {
                path: dir.path().join("prod.ini"),
                name: "admin".into()
            })
        );
    }

    #[test]
    fn server_sections_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.ini");
        std::fs::write(
            &p,
            "[app:main]\nuse = call:x:y\n\n  [server:main]  \nuse = egg:waitress#main\n[server:alt] ; second\n[serverless]\n",
        )
        .unwrap();
        assert_eq!(server_sections(&p).unwrap(), ["server:main", "server:alt"]);
        assert!(server_sections(&dir.path().join("none.ini")).is_err());
    }
}
