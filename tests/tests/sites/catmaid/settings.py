# A Django site mounted under /catmaid/ behind a proxy, as CATMAID is behind nginx: the
# upstream sees paths without the prefix, and FORCE_SCRIPT_NAME puts it back in every URL
# Django makes (redirects, static files, the admin's links).
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "portico-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
FORCE_SCRIPT_NAME = "/catmaid"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "catmaid.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
# Relative: Django prefixes it with the script name, /catmaid/static/ (a static route).
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "collected"
USE_TZ = True
