# A Django Channels site that Portico serves directly (tests/tests/asgi_channels.rs): Django
# views for HTTP and Channels consumers for WebSockets in one ASGI application.
SECRET_KEY = "portico-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "channels"]
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "mysite.urls"
ASGI_APPLICATION = "mysite.asgi.application"
# The in-memory layer lives in one process: the test serves with one cell.
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
DATABASES = {}
USE_TZ = True
