"""Sessions with the MCP servers whose tools the model may call.

Each server's session lives in one background task that owns its `async with` blocks
(the SDK's anyio task groups must be entered and left in the same task). Other tasks
send requests on the open session concurrently; the owner only opens it, keeps the tool
list current, and closes it.
"""

import asyncio
import logging
import math
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

import anyio
import httpx2
import mcp.types as mcp_types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ListenNotSupportedError, SubscriptionLost
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from . import results
from .catalog import Tool, ToolResult
from .config import ServerConfig
from .errors import describe, is_connection_loss

logger = logging.getLogger(__name__)

CLIENT_INFO = mcp_types.Implementation(name="chatsite", version="0.1.0")
MAX_RETRY_INTERVAL = 60.0  # the longest wait between attempts at a server that keeps failing
MAX_TOOL_PAGES = 100
CALL_GRACE = 1.0  # beyond a call's own timeout, before the caller stops waiting regardless
SHUTDOWN_WAIT = 10.0  # for a session to close (a stdio server gets SIGTERM, then SIGKILL)


@dataclass(frozen=True)
class ServerState:
    """How one tool server is doing, for a person: "idle", "connecting", "ready" or "failed"."""

    name: str
    transport: str
    state: str
    error: str
    tools: tuple[Tool, ...]


class ToolServers:
    """The configured MCP servers: their tools, opened lazily, and calls to them.

    Never raises for a server's failure: an unreachable server offers no tools and its
    state says why; a failed call comes back as an error result. Belongs to one event loop.
    """

    def __init__(
        self,
        configs: dict[str, ServerConfig],
        *,
        connect_timeout: float = 10.0,
        retry_interval: float = 5.0,
    ) -> None:
        self._servers = {
            name: _Server(config, connect_timeout=connect_timeout, retry_interval=retry_interval)
            for name, config in configs.items()
        }

    async def tools(self) -> list[Tool]:
        """Every reachable server's tools, opening sessions (concurrently) as needed."""
        await asyncio.gather(*(server.prepare() for server in self._servers.values()))
        offered: dict[str, Tool] = {}
        for server in self._servers.values():
            if server.state != "ready":
                continue
            for tool in server.tools:
                if tool.function_name in offered:
                    logger.warning(
                        "Tool %r of server %r has the same function name as another; skipped",
                        tool.name,
                        tool.server,
                    )
                    continue
                offered[tool.function_name] = tool
        return list(offered.values())

    def states(self) -> list[ServerState]:
        return [server.snapshot() for server in self._servers.values()]

    def find(self, function_name: str) -> Tool | None:
        """The tool the model called by this name, from the lists last fetched."""
        for server in self._servers.values():
            for tool in server.tools:
                if tool.function_name == function_name:
                    return tool
        return None

    async def call(
        self,
        tool: Tool,
        arguments: dict,
        *,
        timeout: float,  # noqa: ASYNC109 (a per-call budget, applied below with the SDK's own)
        max_chars: int,
    ) -> ToolResult:
        """Run one tool call; failures come back as error results, cancellation propagates."""
        server = self._servers.get(tool.server)
        if server is None:
            return results.failure(f"There is no tool server named {tool.server!r}.")
        return await server.call(tool, arguments, timeout=timeout, max_chars=max_chars)

    async def aclose(self) -> None:
        """Close every session and end the stdio servers; the instance is unusable afterwards."""
        await asyncio.gather(*(server.aclose() for server in self._servers.values()))


class _Attempt:
    """One opening of a server's session, owned by one background task."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.client: Client | None = None
        self.settled = asyncio.Event()  # the session is ready, or the attempt failed
        self.stop = asyncio.Event()  # asks the owner task to close the session
        self.changed = asyncio.Event()  # the server said its tool list changed
        self.failed = False
        self.http_status: int | None = None  # the last HTTP error status, for messages
        self.opening: anyio.CancelScope | None = None  # bounds the opening of the session
        self.task: asyncio.Task | None = None


class _Server:
    """One configured server: its session, its tool list, its state."""

    def __init__(self, config: ServerConfig, *, connect_timeout: float, retry_interval: float):
        self.config = config
        self.state = "idle"
        self.error = ""
        self.tools: tuple[Tool, ...] = ()  # as last listed, kept while reconnecting
        self._connect_timeout = connect_timeout
        self._retry_interval = retry_interval
        self._attempt: _Attempt | None = None
        self._generation = 0
        self._failures = 0
        self._retry_at = 0.0
        self._stale = False
        self._refresh_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    def snapshot(self) -> ServerState:
        tools = self.tools if self.state == "ready" else ()
        return ServerState(self.config.name, self.config.transport, self.state, self.error, tools)

    async def prepare(self) -> None:
        """Open the session if needed and bring a changed tool list up to date."""
        try:
            attempt = await self._open()
            if attempt is not None and self._stale:
                await self._refresh(attempt)
        except Exception:  # never let one server break the tool list
            logger.exception("Preparing tool server %r failed", self.config.name)

    async def call(
        self,
        tool: Tool,
        arguments: dict,
        *,
        timeout: float,  # noqa: ASYNC109 (a per-call budget, applied below with the SDK's own)
        max_chars: int,
    ) -> ToolResult:
        name = self.config.name
        attempt = await self._open()
        client = attempt.client if attempt is not None else None
        if attempt is None or client is None:
            reason = self.error or "it is not connected"
            return results.failure(f"The tool server {name!r} is not available: {reason}")

        def failure(text: str) -> ToolResult:
            return results.limited(text, is_error=True, max_chars=max_chars)

        try:
            async with asyncio.timeout(timeout + CALL_GRACE):
                result = await client.call_tool(tool.name, arguments, read_timeout_seconds=timeout)
        except TimeoutError:
            return failure(self._timed_out(tool, timeout))
        except MCPError as exc:
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                return failure(self._timed_out(tool, timeout))
            if is_connection_loss(exc):
                return failure(self._lost(attempt, exc))
            return failure(f"The tool server {name!r} answered with an error: {exc.message}")
        except Exception as exc:
            if is_connection_loss(exc) or attempt.stop.is_set():
                return failure(self._lost(attempt, exc))
            text = describe(exc, self.config, attempt.http_status)
            return failure(f"The call to {tool.name!r} on {name!r} failed: {text}")
        return results.from_call_result(result, max_chars=max_chars)

    async def aclose(self) -> None:
        self._closed = True
        attempt = self._attempt
        if attempt is not None:
            attempt.stop.set()
            if attempt.opening is not None and not attempt.settled.is_set():
                attempt.opening.cancel()  # still connecting: give up now
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT)
            for task in pending:
                logger.warning("Tool server %r did not close in time", self.config.name)
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self.state, self.error = "idle", ""

    def _timed_out(self, tool: Tool, timeout: float) -> str:
        return (
            f"The tool {tool.name!r} on {self.config.name!r} did not finish within "
            f"{timeout:g} seconds; the call was abandoned."
        )

    def _lost(self, attempt: _Attempt, exc: BaseException) -> str:
        reason = describe(exc, self.config, attempt.http_status)
        self._fail(attempt, f"lost the connection: {reason}", lost=True)
        return (
            f"Lost the connection to the tool server {self.config.name!r} ({reason}); "
            "it will be reopened for the next call."
        )

    # Opening

    async def _open(self) -> _Attempt | None:
        """The current attempt once its session is ready, or None if the server is unavailable."""
        if self._closed:
            self.error = "the site is shutting down"
            return None
        attempt = self._attempt
        if attempt is None or attempt.failed:
            if attempt is not None and time.monotonic() < self._retry_at:
                return None
            attempt = self._start()
        if not attempt.settled.is_set():
            try:
                async with asyncio.timeout(self._connect_timeout + CALL_GRACE):
                    await attempt.settled.wait()
            except TimeoutError:
                self._fail(attempt, self._no_answer(), lost=False)
        return None if attempt.failed else attempt

    def _start(self) -> _Attempt:
        self._generation += 1
        attempt = _Attempt(self._generation)
        self._attempt = attempt
        self.state, self.error = "connecting", ""
        attempt.task = asyncio.get_running_loop().create_task(
            self._own(attempt), name=f"tool server {self.config.name}"
        )
        self._tasks.add(attempt.task)
        attempt.task.add_done_callback(self._tasks.discard)
        return attempt

    def _no_answer(self) -> str:
        return f"it did not answer within {self._connect_timeout:g} seconds"

    async def _own(self, attempt: _Attempt) -> None:
        """The owner task: open the session, keep it while it is wanted, close it."""
        connected = False
        try:
            # One scope bounds the whole opening (connect, handshake, first listing);
            # lifting its deadline afterwards keeps every `async with` in this task.
            with anyio.CancelScope() as opening:
                attempt.opening = opening
                opening.deadline = anyio.current_time() + self._connect_timeout
                async with AsyncExitStack() as stack:
                    client = await stack.enter_async_context(await self._client(attempt, stack))
                    tools = await self._list_tools(client)
                    opening.deadline = math.inf
                    connected = True
                    self._ready(attempt, client, tools)
                    await self._serve(attempt, client)
            if not connected:
                self._fail(attempt, self._no_answer(), lost=False)
        except Exception as exc:
            reason = describe(exc, self.config, attempt.http_status)
            if connected:
                self._fail(attempt, f"lost the connection: {reason}", lost=True)
            else:
                self._fail(attempt, reason, lost=False)
            logger.debug("Tool server %r session ended", self.config.name, exc_info=True)
        finally:
            attempt.client = None
            attempt.failed = True  # a later call opens a new session
            attempt.settled.set()

    async def _client(self, attempt: _Attempt, stack: AsyncExitStack) -> Client:
        config = self.config

        async def on_message(message: mcp_types.ServerNotification | Exception) -> None:
            if isinstance(message, mcp_types.ToolListChangedNotification):
                self._mark_stale(attempt)
            elif isinstance(message, Exception):
                reason = describe(message, config, attempt.http_status)
                logger.info("Tool server %r: %s", config.name, reason)

        if config.transport == "http":

            async def note_status(response: httpx2.Response) -> None:
                if response.status_code >= 400:
                    attempt.http_status = response.status_code

            http = httpx2.AsyncClient(
                headers=config.headers,
                timeout=httpx2.Timeout(self._connect_timeout, read=300.0),
                event_hooks={"response": [note_status]},
            )
            await stack.enter_async_context(http)
            transport = streamable_http_client(config.url, http_client=http)
        else:
            parameters = StdioServerParameters(
                command=config.command, args=list(config.args), env=config.env
            )
            transport = stdio_client(parameters)
        return Client(
            transport,
            read_timeout_seconds=self._connect_timeout,
            message_handler=on_message,
            client_info=CLIENT_INFO,
            cache=None,  # the tool list is cached here, refreshed on change notifications
        )

    def _ready(self, attempt: _Attempt, client: Client, tools: tuple[Tool, ...]) -> None:
        if attempt is not self._attempt or attempt.failed or self._closed:
            attempt.stop.set()
            return
        attempt.client = client
        self.tools, self.state, self.error = tools, "ready", ""
        self._failures, self._stale = 0, False
        attempt.settled.set()
        logger.info("Tool server %r is ready with %d tools", self.config.name, len(tools))

    def _fail(self, attempt: _Attempt, error: str, *, lost: bool) -> None:
        """Record a failure once per attempt; a lost session may reopen at once, others back off."""
        attempt.stop.set()
        if attempt.failed or attempt is not self._attempt or self._closed:
            attempt.failed = True
            return
        attempt.failed = True
        attempt.client = None
        self.state, self.error = "failed", error
        if lost:
            self._retry_at = time.monotonic()
        else:
            self._failures += 1
            wait = min(self._retry_interval * 2 ** (self._failures - 1), MAX_RETRY_INTERVAL)
            self._retry_at = time.monotonic() + wait
        attempt.settled.set()
        logger.warning("Tool server %r: %s", self.config.name, error)

    async def _serve(self, attempt: _Attempt, client: Client) -> None:
        """Keep the session until asked to stop, following changes to its tool list."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._follow_changes, attempt)
            capabilities = client.server_capabilities.tools
            modern = client.protocol_version in MODERN_PROTOCOL_VERSIONS
            if modern and capabilities is not None and capabilities.list_changed:
                # Since 2026-07-28 change notifications flow only on a `subscriptions/listen`
                # stream; earlier servers push them on the session (see on_message).
                tasks.start_soon(self._listen, attempt, client)
            await attempt.stop.wait()
            tasks.cancel_scope.cancel()

    async def _listen(self, attempt: _Attempt, client: Client) -> None:
        delay, first = 1.0, True
        while True:
            try:
                async with client.listen(tools_list_changed=True) as subscription:
                    if not first:  # changes may have been missed while no stream was open
                        self._mark_stale(attempt)
                    first, delay = False, 1.0
                    async for _event in subscription:
                        self._mark_stale(attempt)
            except (SubscriptionLost, TimeoutError):
                pass
            except ListenNotSupportedError:
                return
            except MCPError as exc:
                if is_connection_loss(exc):
                    self._fail(attempt, "lost the connection: the server closed it", lost=True)
                else:
                    logger.info("Tool server %r refused change notifications", self.config.name)
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _follow_changes(self, attempt: _Attempt) -> None:
        while True:
            await attempt.changed.wait()
            attempt.changed.clear()
            await self._refresh(attempt)

    def _mark_stale(self, attempt: _Attempt) -> None:
        if attempt is self._attempt:
            self._stale = True
            attempt.changed.set()

    async def _refresh(self, attempt: _Attempt) -> None:
        async with self._refresh_lock:
            client = attempt.client
            if not self._stale or client is None:
                return
            self._stale = False
            try:
                tools = await self._list_tools(client)
            except Exception as exc:
                if is_connection_loss(exc):
                    self._lost(attempt, exc)
                else:
                    reason = describe(exc, self.config, attempt.http_status)
                    logger.warning(
                        "Tool server %r: listing tools failed: %s", self.config.name, reason
                    )
                return
            if attempt is self._attempt and not attempt.failed:
                self.tools = tools
                logger.info("Tool server %r now has %d tools", self.config.name, len(tools))

    async def _list_tools(self, client: Client) -> tuple[Tool, ...]:
        listed: list[Tool] = []
        cursor = None
        for _ in range(MAX_TOOL_PAGES):
            page = await client.list_tools(cursor=cursor)
            listed.extend(self._tool(tool) for tool in page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        return tuple(listed)

    def _tool(self, tool: mcp_types.Tool) -> Tool:
        annotations = tool.annotations
        return Tool(
            server=self.config.name,
            name=tool.name,
            description=tool.description or tool.title or "",
            input_schema=dict(tool.input_schema or {}),
            read_only=bool(annotations is not None and annotations.read_only_hint is True),
        )
