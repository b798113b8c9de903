"""httpcore's sockets on a plain asyncio protocol: the same HTTP, less CPU per read.

httpx reads through httpcore, which reads through anyio by default. For a streamed reply
that costs most of the site's CPU per token: each read opens an anyio cancel scope for
its timeout and resumes, then pauses, the socket's reading (two ``epoll_ctl`` calls), for
a chunk of a few hundred bytes (bench/sse_client.py). This backend keeps the socket
reading and buffers what arrives in the protocol; a read takes what is buffered without
waiting, and only a read that has to wait arms a timer. Reading pauses only when a
megabyte waits unread.

A reader may pace a connection (``AsyncioStream.pace``, set through the response's
``network_stream`` extension): a read that waits is then woken at most once per
``pace()`` seconds, so that a reply's chunks arriving meanwhile are read, parsed and
published together, at a cost per wake rather than per chunk. The first data after a
quiet spell wakes it at once, and each new request starts unpaced.

Everything above the socket is httpcore's and httpx's as before: HTTP/1.1 (h11), the
pool, keep-alive, TLS settings, proxies, trace events and their exceptions. Failures are
httpcore's exceptions with the OSError as their cause and argument, as anyio's backend
raises them, so ``errors.transport_error`` tells a refused connection, an unknown host and
a failed TLS handshake apart.
"""

# httpcore's interface takes each timeout as an argument:
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import httpcore

__all__ = ["AsyncioBackend"]

READ_SIZE = 64 * 1024  # bytes a read takes from the socket at most
HIGH_WATER = 1024 * 1024  # unread bytes before the socket's reading pauses
LOW_WATER = 64 * 1024  # and when it resumes


class AsyncioStream(asyncio.BufferedProtocol, httpcore.AsyncNetworkStream):
    """One connection: the protocol asyncio feeds, and the stream httpcore reads.

    A buffered protocol: asyncio receives into this connection's buffer. A plain one
    gets each read as a new bytes object of up to 256 KiB, which malloc serves by mapping
    fresh memory and the kernel by zeroing it: about 12 µs a read, for a few hundred bytes.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None  # a read waiting for data
        self._read_paused = False
        self._write_paused = False
        self._drained: asyncio.Future | None = None  # a write waiting for the buffer
        # Set by the reader of a response (``pace``): seconds a waiting read may be held
        # after the previous one woke, so that what arrives meanwhile is read at once.
        self.pace: Callable[[], float] | None = None
        self._woken = float("-inf")  # when a waiting read was last woken
        self._pacer: asyncio.TimerHandle | None = None

    # --- what asyncio calls ----------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        data = bytes(self._view[:nbytes])
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()
        waiter = self._waiter
        if waiter is None or waiter.done() or self._pacer is not None:
            return
        if self.pace is not None:
            now = self._loop.time()
            due = self._woken + self.pace()
            if now < due:
                self._pacer = self._loop.call_at(due, self._paced_wake)
                return
            self._woken = now
        waiter.set_result(None)

    def _paced_wake(self) -> None:
        self._pacer = None
        self._woken = self._loop.time()
        self._wake()

    def _stop_pacing(self) -> None:
        self.pace = None
        if self._pacer is not None:
            self._pacer.cancel()
            self._pacer = None
        self._wake()  # a read held back by the pacer takes what is there

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._stop_pacing()  # wakes a waiting read
        _settle(self._drained)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _settle(self._drained)

    def _wake(self) -> None:
        _settle(self._waiter)

    # --- what httpcore calls ---------------------------------------------------------

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._chunks and not self._eof:
            await self._wait_for_data(timeout)
        if self._chunks:
            chunks = self._chunks
            if len(chunks) > 1 and self._buffered <= max_bytes:  # read together: one parse
                data = b"".join(chunks)
                chunks.clear()
            else:
                data = chunks.popleft()
            if len(data) > max_bytes:
                data, rest = data[:max_bytes], data[max_bytes:]
                self._chunks.appendleft(rest)
            self._buffered -= len(data)
            if self._read_paused and self._buffered <= LOW_WATER:
                self._read_paused = False
                self._transport.resume_reading()
            return data
        if self._error is not None:
            raise httpcore.ReadError(self._error) from self._error
        return b""  # the server closed its side

    async def _wait_for_data(self, timeout: float | None) -> None:
        """Until data or the end arrives; a wake with neither (none is expected) waits on,
        since an empty read would tell httpcore the server closed the connection."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while not self._chunks and not self._eof:
            waiter = self._waiter = self._loop.create_future()
            timer = None
            if deadline is not None:
                timer = self._loop.call_at(deadline, _settle, waiter, TimeoutError)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if waiter.result() is TimeoutError:
                raise httpcore.ReadTimeout(f"no data within {timeout:g} s")

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._stop_pacing()  # a new request: its first bytes are read as they come
        if self._error is not None or self._transport.is_closing():
            raise httpcore.WriteError(self._error or ConnectionResetError("connection closed"))
        self._transport.write(buffer)
        if not self._write_paused:
            return
        self._drained = self._loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._drained
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(exc) from exc
        finally:
            self._drained = None
        if self._error is not None:
            raise httpcore.WriteError(self._error) from self._error

    async def aclose(self) -> None:
        self._stop_pacing()
        if self._transport is not None:
            self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                transport = await self._loop.start_tls(
                    self._transport, self, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            self._transport.abort()
            raise httpcore.ConnectTimeout(exc) from exc
        except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
            self._transport.abort()
            raise httpcore.ConnectError(exc) from exc
        self._transport = transport
        return self

    def get_extra_info(self, info: str) -> Any:
        transport = self._transport
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        if info == "is_readable":
            # Asked of an idle kept connection: anything arriving, or its end, means the
            # server closed it (or broke the protocol), so it is not used again.
            return bool(self._chunks) or self._eof
        return None


def _settle(future: asyncio.Future | None, result: Any = None) -> None:
    """Wake whoever awaits ``future`` (a read, a write, a timed-out read), once."""
    if future is not None and not future.done():
        future.set_result(result)


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's connections as :class:`AsyncioStream` protocols."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options=None,
    ) -> httpcore.AsyncNetworkStream:
        local = (local_address, 0) if local_address else None
        # asyncio sets TCP_NODELAY on the connections it makes.
        connecting = asyncio.get_running_loop().create_connection(
            AsyncioStream, host, port, local_addr=local
        )
        return await _connected(connecting, timeout, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options=None
    ) -> httpcore.AsyncNetworkStream:
        connecting = asyncio.get_running_loop().create_unix_connection(AsyncioStream, path)
        return await _connected(connecting, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connected(connecting, timeout: float | None, options) -> AsyncioStream:
    """The stream of a connection being made, with httpcore's errors and its options."""
    try:
        async with asyncio.timeout(timeout):
            _, stream = await connecting
    except TimeoutError as exc:
        raise httpcore.ConnectTimeout(exc) from exc
    except OSError as exc:  # refused, unreachable, a name that does not resolve
        raise httpcore.ConnectError(exc) from exc
    sock: socket.socket = stream.get_extra_info("socket")
    for option in options or ():
        sock.setsockopt(*option)
    return stream
