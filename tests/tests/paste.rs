//! PasteDeploy apps (`wsgi = { paste = "production.ini" }`, `--paste FILE#NAME`): a Pyramid
//! app behind a filter pipeline, the .ini's logging in the error log, its `[server:*]` section
//! ignored, and a broken .ini stopping startup. Fixtures in `paste_app/`.
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use portico_tests::*;

const TAGAPP: &str = include_str!("paste_app/tagapp.py");
const PRODUCTION_INI: &str = include_str!("paste_app/production.ini");
const BROKEN_INI: &str = include_str!("paste_app/broken.ini");

fn venv_or_skip(test: &str) -> Option<PathBuf> {
    venv_for(test, "Pyramid and PasteDeploy")
}

/// A site directory holding the fixture package and its .ini files.
fn paste_site() -> Site {
    let site = Site::new();
    site.file("tagapp.py", TAGAPP.as_bytes());
    site.file("production.ini", PRODUCTION_INI.as_bytes());
    site.file("broken.ini", BROKEN_INI.as_bytes());
    site
}

#[test]
fn paste_pyramid_pipeline_logging_and_server_section() {
    let Some(venv) = venv_or_skip("paste_pyramid_pipeline_logging_and_server_section") else {
        return;
    };
    let site = paste_site();
    // Relative to the config file's directory, like every path in it.
    site.file(
        "portico.toml",
        format!(
            "[server]\nworkers = 2\n[[route]]\nprefix = \"/site/\"\nwsgi = {{ paste = \"production.ini\", venv = \"{}\" }}\n",
            venv.display()
        )
        .as_bytes(),
    );
    let p = Portico::start(&["-c", &site.root("portico.toml")]);

    let r = get(p.addr, "/site/hello").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Pyramid answered under the mount point, with `%(here)s` the .ini's directory...
    assert_eq!(
        r.text(),
        format!("Hello /site|/hello here={}", site.path().display())
    );
    // ...through the filter of `[pipeline:main]`.
    assert_eq!(r.header("x-tag"), Some("from-pipeline"));
    let r = get(p.addr, "/site/nowhere").unwrap();
    assert_eq!(
        (r.status, r.header("x-tag")),
        (404, Some("from-pipeline")),
        "Pyramid's own 404 goes through the filter too"
    );

    // The .ini's [loggers] configured Python logging: the app's INFO line is in the error log.
    p.wait_stderr(
        Duration::from_secs(10),
        "paste-log INFO [tagapp] tagapp served /site/hello",
    );
    // Its [server:main] is not used, and the log says so once (not once per cell).
    let log = p.stderr_text();
    let ignored: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[server:main]") && l.contains("ignored"))
        .collect();
    assert_eq!(ignored.len(), 1, "{log}");
    assert!(ignored[0].contains("production.ini"), "{log}");
    assert!(
        !log.contains("6543"),
        "the .ini's server never runs:\n{log}"
    );
}

#[test]
fn paste_flag_picks_a_named_app() {
    let Some(venv) = venv_or_skip("paste_flag_picks_a_named_app") else {
        return;
    };
    let site = paste_site();
    let venv = venv.display().to_string();
    // `portico serve --paste FILE#NAME`, the file relative to the current directory.
    let mut cmd = Command::new(portico_bin());
    cmd.current_dir(site.path());
    let p = Portico::start_with(cmd, &["--paste", "production.ini#admin", "--venv", &venv]);
    let r = get(p.addr, "/x").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "admin operator /x"));
    assert_eq!(r.header("x-tag"), None, "not the pipeline");
    drop(p);

    // Without a name: `main`, the pipeline.
    let mut cmd = Command::new(portico_bin());
    cmd.current_dir(site.path());
    let p = Portico::start_with(cmd, &["--paste", "production.ini", "--venv", &venv]);
    let r = get(p.addr, "/hello").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-tag"), Some("from-pipeline"));
}

#[test]
fn paste_reload_follows_the_ini() {
    let Some(venv) = venv_or_skip("paste_reload_follows_the_ini") else {
        return;
    };
    let site = paste_site();
    let venv = venv.display().to_string();
    let mut cmd = Command::new(portico_bin());
    cmd.current_dir(site.path());
    let p = Portico::start_with(
        cmd,
        &["--paste", "production.ini", "--venv", &venv, "--reload"],
    );
    let r = get(p.addr, "/hello").unwrap();
    assert!(r.text().starts_with("Hello "), "{}", r.text());
    // A deploy that only edits the .ini (a setting here) is a changed app.
    let ini = site.file(
        "production.ini",
        PRODUCTION_INI
            .replace("greeting = Hello", "greeting = Howdy")
            .as_bytes(),
    );
    // Cells compare modification times: make the edit's one differ whatever the file system's
    // timestamp granularity (instead of sleeping past it).
    std::fs::File::options()
        .write(true)
        .open(&ini)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() + Duration::from_secs(2)))
        .unwrap();
    wait_until(Duration::from_secs(20), "the edited .ini served", || {
        let r = get(p.addr, "/hello").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.text().starts_with("Howdy ")
    });
}

/// `portico serve --paste SPEC` in the site's directory must fail; returns (status, stderr).
fn serve_fails(site: &Site, venv: &str, spec: &str) -> (Option<i32>, String) {
    let out = Command::new(portico_bin())
        .current_dir(site.path())
        .args(["serve", "--paste", spec, "--venv", venv])
        .args(["--listen", "127.0.0.1:0", "--admin", "off"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("listening on"), "nothing is served:\n{err}");
    (out.status.code(), err)
}

#[test]
fn paste_broken_ini_stops_startup() {
    let Some(venv) = venv_or_skip("paste_broken_ini_stops_startup") else {
        return;
    };
    let site = paste_site();
    let venv = venv.display().to_string();

    // No app section of that name: PasteDeploy's message, exit 3 as for an import error.
    let (code, err) = serve_fails(&site, &venv, "broken.ini");
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("LookupError"), "{err}");
    assert!(err.contains("No section 'main'"), "{err}");
    assert!(err.contains("broken.ini"), "{err}");
    let (code, err) = serve_fails(&site, &venv, "production.ini#nosuchapp");
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("No section 'nosuchapp'"), "{err}");

    // An app whose module does not import: the traceback.
    site.file(
        "noimport.ini",
        b"[app:main]\nuse = call:not_a_module_anywhere:main\n",
    );
    let (code, err) = serve_fails(&site, &venv, "noimport.ini");
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("ModuleNotFoundError"), "{err}");

    // A missing file is a configuration error, found without importing anything.
    let (code, err) = serve_fails(&site, &venv, "missing.ini");
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("wsgi.paste") && err.contains("missing.ini"),
        "{err}"
    );

    // `portico check` reports the same broken .ini (it imports the apps too).
    site.file(
        "check.toml",
        format!(
            "[[route]]\nprefix = \"/\"\nwsgi = {{ paste = \"broken.ini\", venv = \"{venv}\" }}\n"
        )
        .as_bytes(),
    );
    let out = Command::new(portico_bin())
        .args(["check", "-c", &site.root("check.toml")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("No section 'main'"), "{err}");
}
