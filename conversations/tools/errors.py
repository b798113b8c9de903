"""Saying, for a person, why a tool server failed, without repeating any secret."""

import anyio
import httpx2
import mcp.types as mcp_types
from mcp import MCPError

from .config import ServerConfig

_HIDDEN = "[hidden]"
_SHORTEST_SECRET = 8  # header and environment values (and their words) this long are scrubbed


def describe(exc: BaseException, config: ServerConfig, http_status: int | None = None) -> str:
    """One short sentence fragment about `exc`; header and environment values never appear."""
    return _scrub(_describe(_leaf(exc), config, http_status), config)


def is_connection_loss(exc: BaseException) -> bool:
    """Whether `exc` means the session is gone (rather than one request failing)."""
    exc = _leaf(exc)
    if isinstance(exc, MCPError):
        if exc.code == mcp_types.CONNECTION_CLOSED:
            return True
        # A streamable HTTP server that forgot our session (it restarted) answers 404.
        return exc.code == mcp_types.INVALID_REQUEST and exc.message == "Session terminated"
    if isinstance(exc, TimeoutError):  # one request was slow; the session may be fine
        return False
    return isinstance(
        exc, httpx2.TransportError | anyio.ClosedResourceError | anyio.BrokenResourceError | OSError
    )


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = next(
            (e for e in exc.exceptions if not isinstance(e, anyio.get_cancelled_exc_class())),
            exc.exceptions[0],
        )
    return exc


def _describe(exc: BaseException, config: ServerConfig, http_status: int | None) -> str:
    match exc:
        case FileNotFoundError() if config.transport == "stdio":
            return f"the command {config.command!r} was not found"
        case PermissionError() if config.transport == "stdio":
            return f"the command {config.command!r} may not be run (permission denied)"
        case httpx2.ConnectError():
            return f"cannot connect to {_safe_url(config.url)}"
        case httpx2.TimeoutException():
            return "the server did not answer in time"
        case httpx2.HTTPStatusError():
            return f"the server answered HTTP {exc.response.status_code}"
        case httpx2.TransportError():
            return f"the connection failed ({type(exc).__name__})"
        case MCPError() if exc.code == mcp_types.CONNECTION_CLOSED:
            if config.transport == "stdio":
                return "the server process closed the connection (its error output is in the log)"
            return "the server closed the connection"
        case MCPError() if http_status is not None and exc.code == mcp_types.INTERNAL_ERROR:
            return f"the server answered HTTP {http_status}"
        case MCPError():
            return f"{exc.message} (MCP error {exc.code})"
        case TimeoutError():
            return "the server did not answer in time"
        case OSError():
            return f"{type(exc).__name__}: {exc.strerror or exc}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _safe_url(url: str) -> str:
    """The URL without credentials, query or fragment (any of which may carry a key)."""
    parsed = httpx2.URL(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}{parsed.path}"


def _scrub(text: str, config: ServerConfig) -> str:
    if config.url:
        text = text.replace(config.url, _safe_url(config.url))
    values = [*config.headers.values(), *(config.env or {}).values()]
    secrets = {part for value in values for part in (value, *value.split())}
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _SHORTEST_SECRET:
            text = text.replace(secret, _HIDDEN)
    return text
