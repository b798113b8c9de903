"""UpstreamError and its subclasses, and the helpers that build them.

Every message is fit to show a person: it names the upstream's host, quotes the
upstream's own words (an HTML error page reduced to its title), never the API key.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import html
import json
import math
import re
import socket
import ssl
import time

import httpx

__all__ = [
    "ConnectError",
    "HTTPStatusError",
    "IdleTimeout",
    "StreamError",
    "StreamInterrupted",
    "UpstreamError",
]

MAX_SHOWN = 500  # characters of upstream text quoted in an error message
MIN_SECRET_LENGTH = 8  # shorter "keys" are placeholders ("none", "ollama"), not secrets


class UpstreamError(Exception):
    """Anything that went wrong talking to the upstream; ``str(e)`` is for people."""

    # What ``retryable`` answers when there is no HTTP status to go by.
    retryable_without_status = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        self.code = code

    def __str__(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        if self.status_code is not None:
            return _retryable_status(self.status_code)
        return self.retryable_without_status

    def names(self, parameter: str) -> bool:
        """Whether the upstream refused the request (HTTP 400 or 422) naming ``parameter``.

        So a caller can ask once more without it: Azure deployments and older
        servers refuse ``stream_options``.
        """
        return self.status_code in (400, 422) and parameter.lower() in self.message.lower()


class ConnectError(UpstreamError):
    """No connection: refused, DNS failure, TLS failure, connect timeout."""

    retryable_without_status = True


class HTTPStatusError(UpstreamError):
    """The upstream answered with a non-2xx status."""


class StreamError(UpstreamError):
    """The upstream sent an error object, or garbage, in the middle of a 200 stream."""

    @property
    def retryable(self) -> bool:
        # Mid-stream errors carry no HTTP status; their code says whether it was
        # the server's trouble (OpenAI sends type "server_error", vLLM a number).
        code = (self.code or "").lower()
        if code.isdigit():
            return _retryable_status(int(code))
        return code in {"server_error", "internal_error", "overloaded_error", "rate_limit_exceeded"}


class StreamInterrupted(UpstreamError):
    """The stream stopped before any finish_reason arrived."""

    retryable_without_status = True


class IdleTimeout(StreamInterrupted):
    """No byte arrived for ``idle_timeout`` seconds."""


def _retryable_status(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


# --- building them -----------------------------------------------------------


def status_error(
    response: httpx.Response, body: bytes, *, model: str | None, api_key: str
) -> HTTPStatusError:
    """The error for a non-2xx ``response`` whose (bounded) body is ``body``."""
    status = response.status_code
    text = body.decode("utf-8", "replace")
    try:
        detail, code = error_fields(json.loads(text))
    except ValueError:
        detail, code = "", None
    if not detail:
        detail = plain_text(text)
    detail = shorten(detail, MAX_SHOWN, api_key)

    message = f"Upstream {host(str(response.request.url))} answered HTTP {status}"
    message += f": {detail}" if detail else f" {response.reason_phrase}".rstrip()
    if status in (401, 403):
        hint = "Check the API key."
    elif status == 404 and model and model not in detail:
        hint = f"Check the model name ({model!r}) and the base URL."
    elif status == 404:
        hint = "Check the base URL."
    elif 300 <= status < 400:
        location = response.headers.get("location")
        hint = f"It redirects to {location}; check the base URL." if location else ""
    else:
        hint = ""
    if hint:
        message = f"{message.rstrip('.')}. {hint}"
    return HTTPStatusError(
        message, status_code=status, retry_after=retry_after(response.headers), code=code
    )


def transport_error(exc: httpx.TransportError, url: str, read_timeout: float) -> UpstreamError:
    """The error for an httpx transport failure while talking to ``url``."""
    where = host(url)
    match exc:
        case httpx.ConnectTimeout():
            return ConnectError(f"Could not connect to {where}: connection timed out.")
        case httpx.ConnectError():
            return ConnectError(f"Could not connect to {where}: {_connect_reason(exc)}.")
        case httpx.PoolTimeout():
            return ConnectError(f"Could not connect to {where}: no free connection in the pool.")
        case httpx.ReadTimeout():
            return IdleTimeout(f"Upstream {where} sent nothing for {read_timeout:g} s.")
        case httpx.WriteTimeout():
            return StreamInterrupted(f"Timed out sending the request to {where}.")
        case httpx.UnsupportedProtocol():
            return UpstreamError(f"Invalid base URL {url!r}: {exc}")
        case httpx.ProxyError():
            return ConnectError(f"Could not connect to {where} through the proxy: {exc}")
        case _:  # ReadError, RemoteProtocolError (incomplete chunked body), WriteError
            reason = str(exc) or type(exc).__name__
            return StreamInterrupted(
                f"The connection to {where} was lost before the reply finished ({reason})."
            )


def _connect_reason(exc: BaseException) -> str:
    seen: set[int] = set()
    chain: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        chain.append(err)
        # httpcore keeps the OSError in args as well as in __cause__.
        todo += [err.__cause__, err.__context__]
        todo += [arg for arg in err.args if isinstance(arg, BaseException)]
    for err in chain:
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, socket.gaierror):
            return f"could not resolve the host name ({err.strerror or err})"
        if isinstance(err, ssl.SSLError):
            # aiohttp's ClientSSLError is an SSLError too, without a reason: its cause has it.
            reasons = [getattr(e, "reason", None) for e in chain if isinstance(e, ssl.SSLError)]
            return f"TLS handshake failed ({next((r for r in reasons if r), None) or err})"
    return str(exc) or "connection failed"


def error_fields(data) -> tuple[str, str | None]:
    """(message, code) from the error bodies servers send; ("", None) if none fits."""
    if not isinstance(data, dict):
        return "", None
    error = data.get("error")
    if isinstance(error, dict):  # OpenAI: {"error": {"message", "type", "code"}}
        message = error.get("message") or error.get("msg") or json.dumps(error)
        return _as_text(message), _code(error.get("code"), error.get("type"))
    code = _code(data.get("code"), data.get("type"))
    if isinstance(error, str) and error:  # {"error": "text"} (Ollama, llama.cpp)
        return error, code
    detail = data.get("detail")  # FastAPI / vLLM
    if isinstance(detail, list):  # FastAPI validation errors: [{"loc": [...], "msg": ...}]
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(str(p) for p in item.get("loc") or [])
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(_as_text(item))
        return "; ".join(parts), code
    if detail:
        return _as_text(detail), code
    message = data.get("message")  # {"message": ...}, older vLLM {"object": "error", ...}
    if message:
        return _as_text(message), code
    return "", None


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _code(*candidates) -> str | None:
    for value in candidates:
        if value is not None and value != "":
            return str(value)
    return None


# --- message text ------------------------------------------------------------


def host(url: str) -> str:
    """host:port of a URL, for messages."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return url
    if not parsed.host:
        return url
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    return f"{parsed.host}:{port}" if port else parsed.host


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<script.*?</script>|<style.*?</style>|<[^>]+>", re.IGNORECASE | re.DOTALL)


def plain_text(text: str) -> str:
    """A body as one line of text; an HTML error page becomes its title or its words."""
    stripped = text.strip()
    if stripped.startswith("<") and re.search(r"<(html|!doctype|body|h1)", stripped, re.I):
        title = _TITLE.search(stripped)
        stripped = html.unescape(title.group(1) if title else _TAGS.sub(" ", stripped))
    return " ".join(stripped.split())


def shorten(text: str, limit: int, secret: str) -> str:
    """``text`` with ``secret`` redacted, cut to ``limit`` characters."""
    # Upstreams sometimes echo the key back ("Incorrect API key provided: sk-..."),
    # and these messages reach logs and pages.
    if len(secret) >= MIN_SECRET_LENGTH:
        text = text.replace(secret, "[redacted]")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait, from Retry-After (delta-seconds or an HTTP date) or retry-after-ms."""
    value = headers.get("retry-after-ms")  # OpenAI's, more precise when present
    if value:
        with contextlib.suppress(ValueError):
            seconds = float(value) / 1000
            if math.isfinite(seconds):
                return max(0.0, seconds)
    value = headers.get("retry-after")
    if not value:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by the RFC
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())
