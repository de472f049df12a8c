//! Real frameworks on the WSGI gateway: Flask and Django from the test virtualenv that
//! `cargo xtask test` creates (SKIP without it).
use std::path::PathBuf;
use std::process::Command;

use portico_tests::*;

fn venv_or_skip(test: &str) -> Option<PathBuf> {
    venv_for(test, "Flask and Django")
}

fn set_cookies(r: &Response) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.split(';').next().unwrap_or("").to_string())
        .collect()
}

const FLASK_APP: &str = r#"
from flask import Flask, Response, jsonify, make_response, redirect, request, url_for

app = Flask(__name__)

@app.get("/api/items/<int:n>")
def items(n):
    return jsonify(id=n, items=list(range(n)), root=request.script_root)

@app.get("/old")
def old():
    return redirect(url_for("items", n=2))

@app.get("/set")
def set_cookie():
    r = make_response("set")
    r.set_cookie("flavor", "oat")
    return r

@app.get("/cookie")
def cookie():
    return request.cookies.get("flavor", "none")

@app.post("/upload")
def upload():
    f = request.files["doc"]
    data = f.read()
    return jsonify(name=f.filename, size=len(data), note=request.form["note"], head=data[:4].decode())

@app.get("/stream")
def stream():
    def gen():
        for i in range(3):
            yield f"part{i}\n"
    return Response(gen(), mimetype="text/plain")
"#;

#[test]
fn flask_json_redirects_cookies_upload_streaming() {
    let Some(venv) = venv_or_skip("flask_json_redirects_cookies_upload_streaming") else {
        return;
    };
    let site = Site::new();
    site.file("fl/flaskapp.py", FLASK_APP.as_bytes());
    let cfg = format!(
        "[server]\nworkers = 2\n[[route]]\nprefix = \"/\"\nwsgi = {{ app = \"flaskapp:app\", chdir = \"{}\", venv = \"{}\" }}\n",
        site.root("fl"),
        venv.display()
    );
    site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("p.toml")]);
    let mut c = Conn::open(p.addr).unwrap();

    let r = c.request("GET", "/api/items/3", &[]).unwrap();
    assert_eq!(r.status, 200, "{}", p.stderr_text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"id": 3, "items": [0, 1, 2], "root": ""})
    );

    let r = c.request("GET", "/old", &[]).unwrap();
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some("/api/items/2"))
    );

    let r = c.request("GET", "/set", &[]).unwrap();
    assert_eq!(set_cookies(&r), vec!["flavor=oat".to_string()]);
    let r = c
        .request("GET", "/cookie", &[("Cookie", "flavor=oat")])
        .unwrap();
    assert_eq!(r.text(), "oat");

    let boundary = "XyZ123";
    let file: Vec<u8> = b"%PDF".iter().copied().chain(vec![7u8; 200_000]).collect();
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"a.pdf\"\r\nContent-Type: application/pdf\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(&file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    c.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    c.send(&body).unwrap();
    let r = c.read_response("POST").unwrap();
    assert_eq!(r.status, 200, "{}", p.stderr_text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"name": "a.pdf", "size": file.len(), "note": "hello", "head": "%PDF"})
    );

    let r = c.request("GET", "/stream", &[]).unwrap();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "part0\npart1\npart2\n");
}

const DJANGO_SETTINGS: &str = r#"
from pathlib import Path
BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "portico-test-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "mysite.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [], "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
WSGI_APPLICATION = "mysite.wsgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "collected"
USE_TZ = True
"#;

const DJANGO_URLS: &str = r#"
from django.contrib import admin
from django.urls import path
urlpatterns = [path("admin/", admin.site.urls)]
"#;

const DJANGO_WSGI: &str = r#"
import os
from django.core.wsgi import get_wsgi_application
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
application = get_wsgi_application()
"#;

const DJANGO_MANAGE: &str = r#"
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
"#;

fn manage(venv: &std::path::Path, dir: &std::path::Path, args: &[&str]) {
    let out = Command::new(venv.join("bin/python"))
        .current_dir(dir)
        .arg("manage.py")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "manage.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn form_token(html: &str) -> String {
    let i = html
        .find("name=\"csrfmiddlewaretoken\" value=\"")
        .expect("csrf token in the form");
    let rest = &html[i + "name=\"csrfmiddlewaretoken\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[test]
fn django_admin_login_under_a_script_name_mount() {
    let Some(venv) = venv_or_skip("django_admin_login_under_a_script_name_mount") else {
        return;
    };
    let site = Site::new();
    site.file("dj/manage.py", DJANGO_MANAGE.as_bytes());
    site.file("dj/mysite/__init__.py", b"");
    site.file("dj/mysite/settings.py", DJANGO_SETTINGS.as_bytes());
    site.file("dj/mysite/urls.py", DJANGO_URLS.as_bytes());
    site.file("dj/mysite/wsgi.py", DJANGO_WSGI.as_bytes());
    let dj = site.path().join("dj");
    manage(&venv, &dj, &["migrate", "--noinput", "-v", "0"]);
    manage(&venv, &dj, &["collectstatic", "--noinput", "-v", "0"]);
    manage(
        &venv,
        &dj,
        &[
            "shell",
            "-c",
            "from django.contrib.auth.models import User; User.objects.create_superuser('admin', 'a@example.com', 'pw-12345-long')",
        ],
    );
    let cfg = format!(
        "[server]\nworkers = 2\n[[route]]\nprefix = \"/app/\"\nwsgi = {{ app = \"mysite.wsgi:application\", chdir = \"{}\", venv = \"{}\" }}\n[[route]]\nprefix = \"/static/\"\nstatic = {{ root = \"{}\" }}\n",
        dj.display(),
        venv.display(),
        dj.join("collected").display()
    );
    site.file("p.toml", cfg.as_bytes());
    let p = Portico::start(&["-c", &site.root("p.toml")]);
    let mut c = Conn::open(p.addr).unwrap();

    // Not logged in: redirected to the login page, under the mount.
    let r = c.request("GET", "/app/admin/", &[]).unwrap();
    assert_eq!(r.status, 302, "{}", p.stderr_text());
    assert_eq!(
        r.header("location"),
        Some("/app/admin/login/?next=/app/admin/")
    );

    let r = c
        .request("GET", "/app/admin/login/?next=/app/admin/", &[])
        .unwrap();
    assert_eq!(r.status, 200);
    let csrf_cookie = set_cookies(&r)
        .into_iter()
        .find(|c| c.starts_with("csrftoken="))
        .expect("csrftoken cookie");
    let token = form_token(&r.text());

    // A POST without the CSRF token is refused by Django.
    let bad = "username=admin&password=pw-12345-long";
    c.send(format!("POST /app/admin/login/ HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{bad}", bad.len()).as_bytes()).unwrap();
    assert_eq!(c.read_response("POST").unwrap().status, 403);

    let form = format!(
        "csrfmiddlewaretoken={token}&username=admin&password=pw-12345-long&next=%2Fapp%2Fadmin%2F"
    );
    c.send(
        format!(
            "POST /app/admin/login/?next=/app/admin/ HTTP/1.1\r\nHost: t\r\nCookie: {csrf_cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let r = c.read_response("POST").unwrap();
    assert_eq!(r.status, 302, "{}\n{}", r.text(), p.stderr_text());
    assert_eq!(r.header("location"), Some("/app/admin/"));
    let session = set_cookies(&r)
        .into_iter()
        .find(|c| c.starts_with("sessionid="))
        .expect("session cookie");

    let cookie = format!("{csrf_cookie}; {session}");
    let r = c
        .request("GET", "/app/admin/", &[("Cookie", &cookie)])
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Site administration"), "{}", r.text());
    assert!(
        r.text().contains("/app/admin/auth/user/"),
        "links carry the mount"
    );

    // The admin's static files, from a Portico static route.
    let r = c.request("GET", "/static/admin/css/base.css", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/css"));
}
