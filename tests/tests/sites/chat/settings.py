# Django Channels under Daphne, behind /channels/ as behind nginx: WebSockets and plain HTTP
# on one ASGI app.
SECRET_KEY = "portico-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
ROOT_URLCONF = "chat.urls"
ASGI_APPLICATION = "chat.asgi.application"
DATABASES = {}
USE_TZ = True
