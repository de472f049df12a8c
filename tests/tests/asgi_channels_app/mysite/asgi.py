import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

# Django is set up before the consumers (and their models' imports) load.
django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from mysite.consumers import ChatConsumer, EchoConsumer  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_app,
    "websocket": URLRouter([
        path("channels/echo/", EchoConsumer.as_asgi()),
        path("channels/chat/<room>/", ChatConsumer.as_asgi()),
    ]),
})
