import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Set up Django before importing consumers, which import models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chatsite.websocket import guarded  # noqa: E402
from conversations.routing import websocket_urlpatterns  # noqa: E402
from conversations.runtime import runtime  # noqa: E402

# The runtime starts before the first request is served: it ends the replies a
# stopped process left streaming and hooks into shutdown (see conversations/runtime.py).
application = runtime.serving(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": guarded(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    )
)
