"""httpx's API on aiohttp's HTTP client: the same requests and errors, less CPU per read.

Reading a streamed reply through httpcore and h11 costs the site most of its CPU per
token (bench/sse_client.py); aiohttp's reader, written in C, costs about half. This
transport keeps everything the client module relies on from httpx (``client.stream``,
``Response``, timeouts, ``TransportError`` and its subclasses), so the rest of the
site does not know which one reads the bytes.

Errors are mapped by the most specific aiohttp class of the exception, so a refused
connection, a name that does not resolve and a failed TLS handshake stay
``httpx.ConnectError`` (with the OSError in their cause), a connect timeout
``ConnectTimeout`` and a silent server ``ReadTimeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
import httpx

# aiohttp's exceptions -> httpx's; the first class of an exception's MRO found here wins.
ERRORS: dict[type[BaseException], type[httpx.TransportError]] = {
    aiohttp.ConnectionTimeoutError: httpx.ConnectTimeout,
    aiohttp.SocketTimeoutError: httpx.ReadTimeout,
    aiohttp.ServerTimeoutError: httpx.ReadTimeout,
    aiohttp.ClientConnectorError: httpx.ConnectError,  # refused, DNS, TLS (ClientSSLError)
    aiohttp.ServerDisconnectedError: httpx.RemoteProtocolError,
    aiohttp.ClientPayloadError: httpx.RemoteProtocolError,  # e.g. a cut chunked body
    aiohttp.ClientResponseError: httpx.RemoteProtocolError,  # a response that is not HTTP
    aiohttp.NonHttpUrlClientError: httpx.UnsupportedProtocol,
    aiohttp.InvalidURL: httpx.UnsupportedProtocol,
    aiohttp.ClientConnectionError: httpx.ReadError,
    aiohttp.ClientError: httpx.ReadError,
    asyncio.TimeoutError: httpx.ReadTimeout,
}


def httpx_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError | None:
    """The httpx exception for an aiohttp one (None: not a transport failure)."""
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            mapped = ERRORS[cls](str(exc) or type(exc).__name__, request=request)
            mapped.__cause__ = exc
            return mapped
    return None


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (made on the loop of the first request), its pool bounded
    like httpx's ``limits``."""

    def __init__(self, limits: httpx.Limits, *, verify: bool = True):
        self.limits, self.verify = limits, verify
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.limits.max_connections or 0,
                limit_per_host=0,
                keepalive_timeout=self.limits.keepalive_expiry or 5.0,
                ssl=httpx.create_ssl_context(verify=self.verify),
            )
            tracing = aiohttp.TraceConfig()
            tracing.on_connection_create_start.append(_trace("connection.connect_tcp.started"))
            tracing.on_request_headers_sent.append(_trace("http11.send_request_body.complete"))
            self._session = aiohttp.ClientSession(
                connector=connector,
                trace_configs=[tracing],
                auto_decompress=False,  # httpx decodes, as it does for httpcore
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        trace = request.extensions.get("trace")
        body = await request.aread()
        try:
            response = await self._session_now().request(
                request.method,
                str(request.url),
                headers=list(request.headers.multi_items()),
                data=body or None,
                allow_redirects=False,
                compress=None,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
                trace_request_ctx=SimpleNamespace(trace=trace),
            )
        except Exception as exc:
            mapped = httpx_error(exc, request)
            if mapped is None:
                raise
            raise mapped from exc
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
            stream=ResponseStream(response, request),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class ResponseStream(httpx.AsyncByteStream):
    """A response body as it arrives. Closed before its end, the connection is closed
    (that is how an upstream learns to stop generating); read to its end, it is kept."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request):
        self.response, self.request = response, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except Exception as exc:
            mapped = httpx_error(exc, self.request)
            if mapped is None:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()


def _trace(name: str):
    """An aiohttp trace callback that calls the request's httpx ``trace`` extension."""

    async def callback(session, context, params) -> None:
        trace = getattr(context.trace_request_ctx, "trace", None)
        if trace is not None:
            await trace(name, {})

    return callback
