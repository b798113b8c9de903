"""A streaming client for OpenAI-compatible chat-completions servers.

``stream_chat`` posts a conversation with ``stream: true`` and yields small,
typed events (:class:`TextDelta`, :class:`ToolCallDelta`, :class:`Finish`, ...)
as the Server-Sent Events arrive; :class:`Completion` folds them back into the
final message. Every failure is an :class:`UpstreamError` subclass whose
``str()`` is fit to show a person and whose ``retryable`` says whether trying
again could help.

The parser is written against what real servers send (OpenAI, Azure, Ollama,
llama.cpp, vLLM, LiteLLM), not only against the spec: comments and keep-alive
lines, CR/CRLF line endings, chunks without choices, tool calls without an
index, a stream that ends without ``[DONE]``, a server that ignores
``stream: true``. No Django imports here.
"""

from __future__ import annotations

import codecs
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
import weakref
from asyncio import AbstractEventLoop, get_running_loop
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

__all__ = [
    "Completion",
    "ConnectError",
    "Event",
    "Finish",
    "HTTPStatusError",
    "IdleTimeout",
    "RefusalDelta",
    "StreamError",
    "StreamInterrupted",
    "TextDelta",
    "ToolCallDelta",
    "UpstreamError",
    "Usage",
    "close_client",
    "get_client",
    "list_models",
    "stream_chat",
]

CONNECT_TIMEOUT = 10.0
WRITE_TIMEOUT = 30.0
POOL_TIMEOUT = 30.0
LIST_MODELS_TIMEOUT = 30.0
MAX_ERROR_BODY = 64 * 1024  # an error page is read this far, no further
MAX_SHOWN = 500  # characters of upstream text quoted in an error message
MIN_SECRET_LENGTH = 8  # shorter "keys" are placeholders ("none", "ollama"), not secrets


# --- events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class RefusalDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str  # finish_reason as sent: stop, length, tool_calls, content_filter, ...


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


Event = TextDelta | RefusalDelta | ToolCallDelta | Finish | Usage


# --- errors ------------------------------------------------------------------


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


# --- the shared client -------------------------------------------------------

# An AsyncClient's pool belongs to the loop it first ran on, so keep one per loop.
_clients: weakref.WeakKeyDictionary[AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def get_client() -> httpx.AsyncClient:
    """The AsyncClient shared by everything running on the current event loop."""
    loop = get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
            timeout=httpx.Timeout(60.0, connect=CONNECT_TIMEOUT),
            follow_redirects=False,
            http1=True,
            http2=False,
        )
        _clients[loop] = client
    return client


async def close_client() -> None:
    """Close the current loop's shared client (at shutdown); the next use makes a new one."""
    client = _clients.pop(get_running_loop(), None)
    if client is not None:
        await client.aclose()


# --- streaming ---------------------------------------------------------------


async def stream_chat(
    base_url: str,
    *,
    model: str,
    messages: list[dict],
    api_key: str = "",
    idle_timeout: float = 60.0,
    client: httpx.AsyncClient | None = None,
    extra: dict | None = None,
) -> AsyncIterator[Event]:
    """Stream one chat completion as events; raise an UpstreamError if it fails.

    It returns normally once a finish_reason has arrived and the stream ended
    (``[DONE]``, EOF, even a cut connection); it raises StreamInterrupted when
    the stream ends before that. Closing the generator early closes the HTTP
    connection, which is how the upstream learns to stop generating.
    """
    url = _endpoint(base_url, "chat/completions")
    payload = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra or {}),
    }
    timeout = httpx.Timeout(
        connect=CONNECT_TIMEOUT, read=idle_timeout, write=WRITE_TIMEOUT, pool=POOL_TIMEOUT
    )
    http = client if client is not None else get_client()
    parser = _StreamParser(api_key)
    try:
        async with http.stream(
            "POST",
            url,
            json=payload,
            headers=_headers(api_key, accept="text/event-stream"),
            timeout=timeout,
        ) as response:
            await _raise_for_status(response, model=model, api_key=api_key)
            media_type = _media_type(response)
            if media_type == "application/json" or media_type.endswith("+json"):
                # The server ignored stream:true and sent the whole completion.
                for event in parser.whole(await response.aread()):
                    yield event
                return
            if media_type == "text/html":
                raise UpstreamError(
                    f"Upstream {_host(url)} answered with an HTML page instead of an "
                    "event stream. Check the base URL.",
                    status_code=response.status_code,
                )
            # No content-type check beyond that: some servers send none, or text/plain.
            async with contextlib.aclosing(response.aiter_bytes()) as chunks:
                async for chunk in chunks:
                    for event in parser.feed(chunk):
                        yield event
                    if parser.done:
                        return
            for event in parser.close():
                yield event
    except httpx.TransportError as exc:
        if parser.finished:
            return  # the reply was complete; only the tail ([DONE], usage) was lost
        raise _transport_error(exc, url, idle_timeout) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise UpstreamError(f"Request to {_host(url)} failed: {exc}") from exc
    if not parser.finished:
        raise StreamInterrupted(
            f"The stream from {_host(url)} ended before the reply finished "
            "(no finish_reason arrived)."
        )


async def list_models(
    base_url: str, *, api_key: str = "", client: httpx.AsyncClient | None = None
) -> list[str]:
    """The model ids the upstream offers (GET /models), in its order."""
    url = _endpoint(base_url, "models")
    http = client if client is not None else get_client()
    timeout = httpx.Timeout(
        LIST_MODELS_TIMEOUT, connect=CONNECT_TIMEOUT, write=WRITE_TIMEOUT, pool=POOL_TIMEOUT
    )
    try:
        async with http.stream(
            "GET",
            url,
            headers=_headers(api_key, accept="application/json"),
            timeout=timeout,
        ) as response:
            await _raise_for_status(response, model=None, api_key=api_key)
            body = await response.aread()
    except httpx.TransportError as exc:
        raise _transport_error(exc, url, LIST_MODELS_TIMEOUT) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise UpstreamError(f"Request to {_host(url)} failed: {exc}") from exc
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    # OpenAI: {"object": "list", "data": [{"id": ...}]}; a few servers send a bare list.
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        excerpt = _shorten(body.decode("utf-8", "replace"), 200, api_key)
        raise UpstreamError(f"Upstream {_host(url)} sent a malformed model list: {excerpt!r}")
    return [str(item["id"]) for item in items if isinstance(item, dict) and item.get("id")]


class _StreamParser:
    """Bytes in, events out: UTF-8 and SSE decoding plus the chunk semantics.

    Decodes the bytes itself rather than with ``aiter_lines``, which would also
    split on U+2028/U+2029 and so cut JSON strings that contain them raw.
    """

    def __init__(self, api_key: str):
        self._api_key = api_key
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lines = SSELineDecoder()
        self._sse = SSEDecoder()
        self.done = False  # [DONE] arrived: stop reading
        self.finished = False  # a finish_reason arrived: an EOF now is a normal end

    def feed(self, chunk: bytes) -> Iterator[Event]:
        text = self._text.decode(chunk)
        if text and not self.done:
            yield from self._lines_events(self._lines.decode(text))

    def close(self) -> Iterator[Event]:
        """At EOF: whatever is still buffered, even without a final blank line."""
        text = self._text.decode(b"", final=True)
        lines = self._lines.decode(text) if text else []
        lines += self._lines.flush()
        lines.append("")  # dispatches an event left pending
        yield from self._lines_events(lines)

    def whole(self, body: bytes) -> Iterator[Event]:
        """A complete (non-streamed) chat.completion object."""
        yield from self._data_events(body.decode("utf-8", "replace"))
        self.done = True

    def _lines_events(self, lines: list[str]) -> Iterator[Event]:
        for line in lines:
            if self.done:
                return
            sse = self._sse.decode(line)
            # Events with no data (a lone "event:", "id:" or "retry:") carry nothing.
            if sse is not None and sse.data:
                yield from self._data_events(sse.data)

    def _data_events(self, data: str) -> Iterator[Event]:
        if data.strip() == "[DONE]":
            self.done = True
            return
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            excerpt = _shorten(data, 200, self._api_key)
            raise StreamError(f"upstream sent malformed data: {excerpt!r}")
        error = obj.get("error")
        if error:
            message, code = _error_fields(obj)
            raise StreamError(
                "Upstream error during the reply: " + _shorten(message, MAX_SHOWN, self._api_key),
                code=code,
            )
        choices = obj.get("choices")
        for position, choice in enumerate(choices if isinstance(choices, list) else []):
            # Only the first choice: with n>1 the others are alternatives we don't show.
            if isinstance(choice, dict) and _index(choice, position) == 0:
                yield from self._choice_events(choice)
        # The usage chunk has empty choices; Azure's prompt_filter_results chunk has
        # neither choices nor usage; vLLM can repeat usage on every chunk.
        usage = obj.get("usage")
        if isinstance(usage, dict):
            yield Usage(
                prompt_tokens=_int(usage.get("prompt_tokens")),
                completion_tokens=_int(usage.get("completion_tokens")),
                total_tokens=_int(usage.get("total_tokens")),
            )

    def _choice_events(self, choice: dict) -> Iterator[Event]:
        # "delta" in a stream chunk, "message" in a whole completion.
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = choice.get("message")
        if not isinstance(delta, dict):
            delta = {}
        content = delta.get("content")
        if isinstance(content, str) and content:
            yield TextDelta(content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            yield RefusalDelta(refusal)
        tool_calls = delta.get("tool_calls")
        for position, call in enumerate(tool_calls if isinstance(tool_calls, list) else []):
            if isinstance(call, dict):
                # Older Ollama/vLLM send whole calls without an index: use the position.
                yield _tool_call_delta(_index(call, position), call.get("id"), call.get("function"))
        function_call = delta.get("function_call")  # the pre-tools API: always one call
        if isinstance(function_call, dict):
            yield _tool_call_delta(0, None, function_call)
        reason = choice.get("finish_reason")
        if reason:
            self.finished = True
            yield Finish(str(reason))


def _tool_call_delta(index: int, call_id, function) -> ToolCallDelta:
    function = function if isinstance(function, dict) else {}
    name = function.get("name")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = ""
    elif not isinstance(arguments, str):
        arguments = json.dumps(arguments)  # Ollama can send the arguments as an object
    return ToolCallDelta(
        index=index,
        id=str(call_id) if call_id else None,
        name=str(name) if name else None,
        arguments=arguments,
    )


def _index(item: dict, default: int) -> int:
    index = item.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else default


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- accumulating ------------------------------------------------------------


class Completion:
    """Folds a stream's events into the final assistant message."""

    def __init__(self) -> None:
        self._content: list[str] = []
        self._refusal: list[str] = []
        self._calls: dict[int, dict] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def feed(self, event: Event) -> None:
        match event:
            case TextDelta(text):
                self._content.append(text)
            case RefusalDelta(text):
                self._refusal.append(text)
            case ToolCallDelta(index, call_id, name, arguments):
                call = self._calls.setdefault(
                    index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                )
                # The id and name come once; some servers repeat them, so the first wins.
                if call_id and not call["id"]:
                    call["id"] = call_id
                if name and not call["function"]["name"]:
                    call["function"]["name"] = name
                call["function"]["arguments"] += arguments
            case Finish(reason):
                self.finish_reason = reason
            case Usage():
                self.usage = event

    @property
    def content(self) -> str:
        return _joined(self._content)

    @property
    def refusal(self) -> str:
        return _joined(self._refusal)

    @property
    def tool_calls(self) -> list[dict]:
        """OpenAI-shaped tool calls in index order; a call sent without an id gets one."""
        calls = []
        for index in sorted(self._calls):
            call = self._calls[index]
            calls.append(
                {**call, "id": call["id"] or f"call_{index}", "function": {**call["function"]}}
            )
        return calls

    def to_message(self) -> dict:
        """The assistant message to append to the conversation for the next turn."""
        message: dict = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.refusal:
            message["refusal"] = self.refusal
        return message


def _joined(parts: list[str]) -> str:
    # Join once and keep the result, so reading as the reply grows stays linear.
    if len(parts) > 1:
        parts[:] = ["".join(parts)]
    return parts[0] if parts else ""


# --- HTTP helpers ------------------------------------------------------------


def _endpoint(base_url: str, path: str) -> str:
    return f"{base_url.rstrip('/')}/{path}"


def _headers(api_key: str, *, accept: str) -> dict[str, str]:
    headers = {"Accept": accept}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _host(url: str) -> str:
    """host:port of a URL, for messages."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return url
    if not parsed.host:
        return url
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    return f"{parsed.host}:{port}" if port else parsed.host


def _media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _raise_for_status(response: httpx.Response, *, model: str | None, api_key: str) -> None:
    if response.is_success:
        return
    # The response is streamed: read (a bounded part of) the body before reporting.
    body = bytearray()
    async with contextlib.aclosing(response.aiter_bytes()) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) >= MAX_ERROR_BODY:
                break
    raise _status_error(response, bytes(body), model=model, api_key=api_key)


def _status_error(
    response: httpx.Response, body: bytes, *, model: str | None, api_key: str
) -> HTTPStatusError:
    status = response.status_code
    text = body.decode("utf-8", "replace")
    try:
        detail, code = _error_fields(json.loads(text))
    except ValueError:
        detail, code = "", None
    if not detail:
        detail = _plain_text(text)
    detail = _shorten(detail, MAX_SHOWN, api_key)

    message = f"Upstream {_host(str(response.request.url))} answered HTTP {status}"
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
        message, status_code=status, retry_after=_retry_after(response.headers), code=code
    )


def _error_fields(data) -> tuple[str, str | None]:
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


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<script.*?</script>|<style.*?</style>|<[^>]+>", re.IGNORECASE | re.DOTALL)


def _plain_text(text: str) -> str:
    """A body as one line of text; an HTML error page becomes its title or its words."""
    stripped = text.strip()
    if stripped.startswith("<") and re.search(r"<(html|!doctype|body|h1)", stripped, re.I):
        title = _TITLE.search(stripped)
        stripped = html.unescape(title.group(1) if title else _TAGS.sub(" ", stripped))
    return " ".join(stripped.split())


def _shorten(text: str, limit: int, secret: str) -> str:
    # Upstreams sometimes echo the key back ("Incorrect API key provided: sk-..."),
    # and these messages reach logs and pages.
    if len(secret) >= MIN_SECRET_LENGTH:
        text = text.replace(secret, "[redacted]")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _retry_after(headers: httpx.Headers) -> float | None:
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


def _transport_error(exc: httpx.TransportError, url: str, read_timeout: float) -> UpstreamError:
    host = _host(url)
    match exc:
        case httpx.ConnectTimeout():
            return ConnectError(f"Could not connect to {host}: connection timed out.")
        case httpx.ConnectError():
            return ConnectError(f"Could not connect to {host}: {_connect_reason(exc)}.")
        case httpx.PoolTimeout():
            return ConnectError(f"Could not connect to {host}: no free connection in the pool.")
        case httpx.ReadTimeout():
            return IdleTimeout(f"Upstream {host} sent nothing for {read_timeout:g} s.")
        case httpx.WriteTimeout():
            return StreamInterrupted(f"Timed out sending the request to {host}.")
        case httpx.UnsupportedProtocol():
            return UpstreamError(f"Invalid base URL {url!r}: {exc}")
        case httpx.ProxyError():
            return ConnectError(f"Could not connect to {host} through the proxy: {exc}")
        case _:  # ReadError, RemoteProtocolError (incomplete chunked body), WriteError
            reason = str(exc) or type(exc).__name__
            return StreamInterrupted(
                f"The connection to {host} was lost before the reply finished ({reason})."
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
            return f"TLS handshake failed ({err.reason or err})"
    return str(exc) or "connection failed"
