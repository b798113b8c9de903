"""The HTTP side: one POST streamed as events, one POST answered whole, one GET of the
model list.

The caller owns the ``httpx.AsyncClient`` (one per process, from ``new_client``,
closed at shutdown) and passes it to every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from .errors import StreamInterrupted, UpstreamError, host, shorten, status_error, transport_error
from .events import Event, TextDelta, TextWasReasoning
from .network import AsyncioBackend, AsyncioStream
from .parse import StreamParser
from .transport import AiohttpTransport

__all__ = ["complete_chat", "list_models", "new_client", "stream_chat"]

CONNECT_TIMEOUT = 10.0
WRITE_TIMEOUT = 30.0
POOL_TIMEOUT = 30.0
LIST_MODELS_TIMEOUT = 30.0
MAX_ERROR_BODY = 64 * 1024  # an error page is read this far, no further
MAX_COMPLETION_BODY = 4 * 1024 * 1024  # a whole completion larger than this is refused
DRAIN_SECONDS = 0.05  # the wait for the end of a body after [DONE]
WHOLE_READ_PACE = 0.05  # seconds between the wakes of a read of a completion asked whole


def new_client(transport: str = "httpcore") -> httpx.AsyncClient:
    """An AsyncClient set up for upstreams; its pool belongs to the loop it first runs on.

    Its HTTP is httpx's own (httpcore and h11) on sockets read by a plain asyncio protocol
    (``network.py``). ``transport="aiohttp"`` reads through aiohttp instead
    (``transport.py``); ``"anyio"`` through httpcore's default sockets (bench/README.md).
    """
    # Every connection may be kept: at 200 replies at once, a pool that keeps 100 makes the
    # next replies and titles connect (and shake hands over TLS) again. Idle ones go after
    # httpx's 5 s.
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    if transport == "aiohttp":
        chosen = AiohttpTransport(limits)
    else:
        chosen = httpx.AsyncHTTPTransport(limits=limits)
        if transport != "anyio":
            # httpx builds its httpcore pool without a way to pass a network backend.
            chosen._pool._network_backend = AsyncioBackend()
    return httpx.AsyncClient(
        limits=limits,
        timeout=httpx.Timeout(60.0, connect=CONNECT_TIMEOUT),
        follow_redirects=False,
        transport=chosen,
        # One client serves every user: a cookie an upstream sets is never kept, so it
        # never goes out with another user's request.
        cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
    )


async def stream_chat(
    base_url: str,
    *,
    client: httpx.AsyncClient,
    model: str,
    messages: list[dict],
    api_key: str = "",
    idle_timeout: float = 60.0,
    extra: dict | None = None,
    include_usage: bool = True,
    departed: Callable[[], object] | None = None,
    pace: Callable[[], float] | None = None,
) -> AsyncIterator[Event]:
    """Stream one chat completion as events; raise an UpstreamError if it fails.

    It returns normally once a finish_reason has arrived and the stream ended
    (``[DONE]``, EOF, even a cut connection); it raises StreamInterrupted when
    the stream ends before that. Closing the generator early closes the HTTP
    connection, which is how the upstream learns to stop generating.
    ``include_usage=False`` leaves ``stream_options`` out, for servers that
    answer it with HTTP 400 (see ``UpstreamError.names``). ``departed()`` is called once
    the request is written, or has to wait for a new connection. With ``pace``, once the
    first events have arrived, a read that waits for more is woken at most every
    ``pace()`` seconds (``network.AsyncioStream.pace``): what arrives meanwhile is read at
    once, for less CPU per chunk; the first events are read as they come.
    """
    url = _endpoint(base_url, "chat/completions")
    payload: dict = {"model": model, "messages": messages, "stream": True}
    if include_usage:
        payload["stream_options"] = {"include_usage": True}
    payload.update(extra or {})
    timeout = httpx.Timeout(
        connect=CONNECT_TIMEOUT, read=idle_timeout, write=WRITE_TIMEOUT, pool=POOL_TIMEOUT
    )
    parser = StreamParser(api_key)
    try:
        async with client.stream(
            "POST",
            url,
            json=payload,
            headers=_headers(api_key, accept="text/event-stream"),
            timeout=timeout,
            extensions={"trace": _departure_trace(departed)} if departed else None,
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
                    f"Upstream {host(url)} answered with an HTML page instead of an "
                    "event stream. Check the base URL.",
                    status_code=response.status_code,
                )
            # No content-type check beyond that: some servers send none, or text/plain.
            stream = _paceable(response) if pace else None
            async with contextlib.aclosing(response.aiter_bytes()) as chunks:
                async for chunk in chunks:
                    for event in parser.feed(chunk):
                        if stream is not None:
                            stream.pace, stream = pace, None  # the first event is out
                        yield event
                    if parser.done:
                        await _drain(chunks)
                        return
            for event in parser.close():
                yield event
    except httpx.TransportError as exc:
        if parser.finished:
            return  # the reply was complete; only the tail ([DONE], usage) was lost
        raise transport_error(exc, url, idle_timeout) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise UpstreamError(f"Request to {host(url)} failed: {exc}") from exc
    if not parser.finished:
        raise StreamInterrupted(
            f"The stream from {host(url)} ended before the reply finished "
            "(no finish_reason arrived)."
        )


def _paceable(response: httpx.Response) -> AsyncioStream | None:
    """The connection under ``response`` if its reads can be paced: not aiohttp's, nor
    httpx's own sockets (through a proxy, or CHAT_UPSTREAM_CLIENT=anyio)."""
    stream = response.extensions.get("network_stream")
    return stream if isinstance(stream, AsyncioStream) else None


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """After [DONE], the body's end (it comes with it, or right after): read to the end,
    a response is given back to the pool for the next request; closed before it, its
    connection is closed, and the next reply connects (and shakes hands) again. A server
    that goes on is left after DRAIN_SECONDS."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in chunks:
                pass


# httpcore's trace events after which a request has left, or waits for the network.
DEPARTURES = {"http11.send_request_body.complete", "connection.connect_tcp.started"}


def _departure_trace(departed: Callable[[], object]):
    async def trace(name: str, info: dict) -> None:
        if name in DEPARTURES:
            departed()

    return trace


async def complete_chat(
    base_url: str,
    *,
    client: httpx.AsyncClient,
    model: str,
    messages: list[dict],
    api_key: str = "",
    time_limit: float = 30.0,
    extra: dict | None = None,
    max_chars: int | None = None,
) -> str:
    """One chat completion asked for whole (``stream: false``): the text of its answer.

    Reasoning is left out, in whichever field or inline ``<think>`` tags it comes. A
    server that streams anyway is read to its end, or, with ``max_chars``, until the
    answer has that many characters (the request is then closed, and the server stops
    writing). Raises an UpstreamError if it fails, also when the whole exchange takes
    longer than ``time_limit`` seconds.
    """
    url = _endpoint(base_url, "chat/completions")
    payload: dict = {"model": model, "messages": messages, "stream": False}
    payload.update(extra or {})
    timeout = httpx.Timeout(
        time_limit,
        connect=min(CONNECT_TIMEOUT, time_limit),
        write=min(WRITE_TIMEOUT, time_limit),
        pool=min(POOL_TIMEOUT, time_limit),
    )
    parser, answer = StreamParser(api_key), _Answer()
    try:
        async with asyncio.timeout(time_limit):
            async with client.stream(
                "POST",
                url,
                json=payload,
                headers=_headers(api_key, accept="application/json"),
                timeout=timeout,
            ) as response:
                await _raise_for_status(response, model=model, api_key=api_key)
                streamed = _media_type(response) == "text/event-stream"
                if stream := _paceable(response):
                    # Nothing shows until the answer is whole: what arrives in pieces is
                    # read in a few wakes, not one per piece.
                    stream.pace = lambda: WHOLE_READ_PACE
                body = bytearray()
                read = 0
                async with contextlib.aclosing(response.aiter_bytes()) as chunks:
                    async for chunk in chunks:
                        read += len(chunk)
                        if read > MAX_COMPLETION_BODY:
                            raise UpstreamError(
                                f"Upstream {host(url)} sent a completion larger than "
                                f"{MAX_COMPLETION_BODY // (1024 * 1024)} MiB."
                            )
                        if not streamed:
                            body += chunk
                            continue
                        answer.take(parser.feed(chunk))
                        if parser.done:
                            await _drain(chunks)
                            break
                        if max_chars and len(answer.text) >= max_chars:
                            break  # closed unread: the server stops writing
    except TimeoutError as exc:
        message = f"Upstream {host(url)} did not answer within {time_limit:g} s."
        raise UpstreamError(message) from exc
    except httpx.TransportError as exc:
        raise transport_error(exc, url, time_limit) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise UpstreamError(f"Request to {host(url)} failed: {exc}") from exc
    if streamed:
        answer.take(parser.close())
    else:
        answer.take(parser.whole(bytes(body)))
    return answer.text


class _Answer:
    """The text of an answer asked for whole, from its events: reasoning left out."""

    def __init__(self) -> None:
        self.text = ""

    def take(self, events: Iterable[Event]) -> None:
        for event in events:
            match event:
                case TextDelta(piece):
                    self.text += piece
                case TextWasReasoning():  # a closing think tag without an opening one
                    self.text = ""


async def list_models(base_url: str, *, client: httpx.AsyncClient, api_key: str = "") -> list[str]:
    """The model ids the upstream offers (GET /models), in its order."""
    url = _endpoint(base_url, "models")
    timeout = httpx.Timeout(
        LIST_MODELS_TIMEOUT, connect=CONNECT_TIMEOUT, write=WRITE_TIMEOUT, pool=POOL_TIMEOUT
    )
    try:
        async with client.stream(
            "GET",
            url,
            headers=_headers(api_key, accept="application/json"),
            timeout=timeout,
        ) as response:
            await _raise_for_status(response, model=None, api_key=api_key)
            body = await response.aread()
    except httpx.TransportError as exc:
        raise transport_error(exc, url, LIST_MODELS_TIMEOUT) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise UpstreamError(f"Request to {host(url)} failed: {exc}") from exc
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    # OpenAI: {"object": "list", "data": [{"id": ...}]}; a few servers send a bare list.
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        excerpt = shorten(body.decode("utf-8", "replace"), 200, api_key)
        raise UpstreamError(f"Upstream {host(url)} sent a malformed model list: {excerpt!r}")
    return [str(item["id"]) for item in items if isinstance(item, dict) and item.get("id")]


def _endpoint(base_url: str, path: str) -> str:
    return f"{base_url.rstrip('/')}/{path}"


def _headers(api_key: str, *, accept: str) -> dict[str, str]:
    headers = {"Accept": accept}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


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
    raise status_error(response, bytes(body), model=model, api_key=api_key)
