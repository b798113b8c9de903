"""Who may open a websocket: same-origin pages of an allowed host, nothing else.

Channels' AllowedHostsOriginValidator checks the Origin's host name against
ALLOWED_HOSTS but not its scheme or port, and lets a missing Origin through in
some configurations. A page on another port or scheme of the same host is another
origin and must not drive a user's socket with their cookies, so the Origin must
equal the scheme and Host the socket was opened on (or a CSRF_TRUSTED_ORIGINS entry).
"""

from urllib.parse import urlsplit

from channels.security.websocket import AllowedHostsOriginValidator, WebsocketDenier
from django.conf import settings

from chatsite.backlog import BoundedBacklog

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _netloc(scheme: str, host: str, port: int | None) -> str:
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return host.lower()
    return f"{host.lower()}:{port}"


def site_scheme(scope) -> str:
    """``https`` when the socket came over TLS: its own (wss), or the proxy's, as Django
    trusts it (SECURE_PROXY_SSL_HEADER, e.g. X-Forwarded-Proto)."""
    if scope.get("scheme") == "wss":
        return "https"
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        name, value = proxy_header
        header = name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        if _header(scope, header).split(",")[0].strip() == value:
            return "https"
    return "http"


def same_origin(scope) -> bool:
    origin = _header(scope, b"origin").strip()
    host = _header(scope, b"host").strip().lower()
    if not origin or origin == "null" or not host:
        return False
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    try:
        parts = urlsplit(origin)
        origin_netloc = _netloc(parts.scheme, parts.hostname or "", parts.port)
        host_parts = urlsplit(f"{parts.scheme}://{host}")
        host_netloc = _netloc(parts.scheme, host_parts.hostname or "", host_parts.port)
    except ValueError:
        return False
    # An https page of the host is another origin than its http site, and the reverse.
    return parts.scheme == site_scheme(scope) and origin_netloc == host_netloc


class SameOriginValidator:
    """ASGI middleware: refuse the websocket handshake unless Origin matches Host."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not same_origin(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


def guarded(application):
    """The websocket stack's guards, outermost first: the origin checks, then a bound on
    what is queued for a socket that does not read (chatsite/backlog.py)."""
    return SameOriginValidator(AllowedHostsOriginValidator(BoundedBacklog(application)))
