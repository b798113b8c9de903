"""This process's chat runtime: the replies it runs and what they share.

One object, ``runtime``, lives from the process's first request to its
shutdown. It holds the running replies (which keeps their tasks alive and lets
shutdown find them), the loop that checkpoints them, the HTTP client for the
upstream, the upstream's default model, and the offline demo model's server.
"""

import asyncio
import collections
import contextlib
import logging
import signal
import sys
import time

import httpx
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from . import demo, tools, upstream
from .endpoints import Endpoint, KeyUnreadable, Server
from .events import SiteClosing
from .models import Message

log = logging.getLogger(__name__)

SHUTDOWN_ERROR = "The server restarted while this reply was being written."
ORPHAN_ERROR = "The server stopped while this reply was being written."


class Runtime:
    def __init__(self) -> None:
        # Every reply row this process makes is checkpointed after this moment.
        self.created_at = timezone.now()
        self.replies: dict = {}  # message id -> replies.ReplyStream
        self.sockets: dict[str, int] = {}  # this process's open sockets: channel -> user id
        self._sockets_per_user: collections.Counter[int] = collections.Counter()
        self._turns: dict[int, asyncio.Lock] = {}
        self._syncs: dict[int, TokenBucket] = {}  # per user
        self._turn_takers: collections.Counter[int] = collections.Counter()
        self._started = False
        self.loop: asyncio.AbstractEventLoop | None = None  # the one serving requests
        self._checkpoints: asyncio.Task | None = None
        # An AsyncClient's pool belongs to the event loop it first ran on.
        self._http: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None
        self._first_models: dict[str, str] = {}
        self._models: dict[str, tuple[float, list[str]]] = {}  # base URL -> (at, names)
        # The admin's endpoints (enabled ones), read every CHAT_ENDPOINTS_TTL seconds.
        self._endpoints: tuple[float, dict[int, Server]] | None = None
        self.without_stream_options: set[str] = set()  # base URLs that refuse it
        self._demo: demo.ServerThread | None = None
        # The MCP servers' sessions belong to the event loop that opened them.
        self._tools: tuple[asyncio.AbstractEventLoop, tools.ToolServers] | None = None
        self._opening_tools: asyncio.Future | None = None  # held, so it is not collected
        self.tool_config_error = ""  # why CHAT_MCP_CONFIG could not be used
        self.without_tools: set[tuple[str, str]] = set()  # (base URL, model) refusing them
        # Imports running on threads of this process: job id -> (thread, its stop event).
        self.imports: dict[int, tuple] = {}

    # --- start and shutdown -------------------------------------------------------------

    def serving(self, application):
        """``application``, starting this runtime before it serves the first request."""

        async def app(scope, receive, send):
            if not self._started:
                self._started = True
                self.loop = asyncio.get_running_loop()
                self._hook_shutdown()
                await database_sync_to_async(self._sweep_at_start)()
                self._open_tool_servers()
            return await application(scope, receive, send)

        return app

    def _sweep_at_start(self) -> None:
        try:
            ended = self.sweep_orphans()
        except DatabaseError:  # not migrated yet: nothing to sweep
            return
        except Exception:  # never keep the site from serving
            log.exception("could not look for replies left streaming")
            return
        if ended:
            log.warning(
                "marked %d reply(s) left streaming by a stopped process as interrupted", len(ended)
            )

    def _hook_shutdown(self) -> None:
        """Under Daphne (Twisted), store running replies before the reactor stops."""
        if "twisted.internet.reactor" not in sys.modules:
            return
        from twisted.internet import defer, reactor

        if not reactor.running:  # imported (by channels.testing, say), not serving
            return

        def before_shutdown():
            return defer.Deferred.fromFuture(asyncio.ensure_future(self.shutdown()))

        reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)

        # Daphne's own shutdown trigger cancels every socket at once, which would lose
        # the final elements: on SIGTERM the replies end and the sockets close first.
        loop, previous = asyncio.get_running_loop(), signal.getsignal(signal.SIGTERM)

        def stop_reactor(_):
            with contextlib.suppress(Exception):  # already stopping
                reactor.stop()

        def on_sigterm(signum, frame):
            signal.signal(signal.SIGTERM, previous)  # a second SIGTERM stops at once
            loop.call_soon_threadsafe(
                lambda: asyncio.ensure_future(self.shutdown()).add_done_callback(stop_reactor)
            )

        signal.signal(signal.SIGTERM, on_sigterm)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Store every running reply as interrupted, with its text; abandon the imports
        running here (they store nothing); close the HTTP client."""
        running = list(self.replies.values())
        for reply in running:
            reply.stop(Message.Status.INTERRUPTED, SHUTDOWN_ERROR)
        importing = list(self.imports.values())
        for _, stopping in importing:  # each rolls back and records that it stored nothing
            stopping.set()
        tasks = [reply.task for reply in running if reply.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for thread, _ in importing:
            await asyncio.to_thread(thread.join, grace)
        await self._close_sockets()
        await self.close_tool_servers()
        if self._http is not None:
            _, client = self._http
            self._http = None
            await client.aclose()

    async def _close_sockets(self, grace: float = 1.0) -> None:
        """Each socket closes with 1001 once it has sent what is queued for it (the final
        elements just published come first: a channel delivers in order)."""
        layer = get_channel_layer()
        for channel in list(self.sockets):
            await layer.send(channel, SiteClosing().as_message())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.sockets and loop.time() < deadline:  # noqa: ASYNC110 (sockets leave one by one)
            await asyncio.sleep(0.01)

    def socket_opened(self, channel: str, user_id: int) -> bool:
        """Count an open socket; False (and not counted) past CHAT_SOCKETS_PER_USER."""
        if self._sockets_per_user[user_id] >= settings.CHAT_SOCKETS_PER_USER:
            return False
        self.sockets[channel] = user_id
        self._sockets_per_user[user_id] += 1
        return True

    def socket_closed(self, channel: str) -> None:
        user_id = self.sockets.pop(channel, None)
        if user_id is not None:
            self._sockets_per_user[user_id] -= 1
            if not self._sockets_per_user[user_id]:
                del self._sockets_per_user[user_id]
                self._syncs.pop(user_id, None)

    def sync_delay(self, user_id: int) -> float:
        """0 when a sync of ``user_id`` may run now (it is counted); else seconds to wait.

        A sync reads and renders the page's whole conversation: each user has
        CHAT_SYNCS_PER_SECOND over all their sockets, four times as many at once.
        """
        bucket = self._syncs.get(user_id)
        if bucket is None:
            rate = settings.CHAT_SYNCS_PER_SECOND
            bucket = self._syncs[user_id] = TokenBucket(rate, burst=max(1, round(rate * 4)))
        return bucket.delay()

    @contextlib.asynccontextmanager
    async def turn(self, user_id: int):
        """One socket action at a time per user in this process.

        The database thread serves requests in the order they come: a user with many
        sockets sending as fast as they can would queue ahead of every other user's
        page. Taking turns, they have at most one action waiting on it.
        """
        lock = self._turns.get(user_id)
        if lock is None:
            lock = self._turns[user_id] = asyncio.Lock()
        self._turn_takers[user_id] += 1
        try:
            async with lock:
                yield
        finally:
            self._turn_takers[user_id] -= 1
            if not self._turn_takers[user_id]:
                del self._turn_takers[user_id], self._turns[user_id]

    # --- the upstream ------------------------------------------------------------------

    def http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._http[0] is not loop or self._http[1].is_closed:
            self._http = (loop, upstream.new_client(settings.CHAT_UPSTREAM_CLIENT))
        return self._http[1]

    def base_url(self) -> str:
        """OPENAI_BASE_URL, else the offline demo model, started on first use."""
        if settings.OPENAI_BASE_URL:
            return settings.OPENAI_BASE_URL
        if self._demo is None:
            self._demo = demo.ServerThread(demo.DemoModel(settings.CHAT_DEMO_TOKENS_PER_SECOND))
            self._demo.start()
        return self._demo.base_url

    async def default_model(self) -> str:
        """CHAT_MODEL, else the upstream's first listed model (asked once per base URL)."""
        if settings.CHAT_MODEL:
            return settings.CHAT_MODEL
        if not settings.OPENAI_BASE_URL:
            return demo.DEMO_MODEL
        base_url = settings.OPENAI_BASE_URL
        if base_url not in self._first_models:
            try:
                models = await upstream.list_models(
                    base_url, client=self.http(), api_key=settings.OPENAI_API_KEY
                )
            except upstream.UpstreamError as error:
                # Not kept: the next message asks again. The reply itself will show the error.
                log.warning("could not list the upstream's models: %s", error)
                return ""
            self._first_models[base_url] = models[0] if models else ""
        return self._first_models[base_url]

    def default_server(self) -> Server:
        """OPENAI_BASE_URL with OPENAI_API_KEY, else the offline demo model."""
        return Server(
            id=None,
            name=settings.OPENAI_ENDPOINT_NAME,
            base_url=self.base_url(),
            api_key=settings.OPENAI_API_KEY,
            send_reasoning=settings.CHAT_SEND_REASONING,
        )

    async def server(self, endpoint_id: int | None) -> Server | None:
        """The server of a reply (its ``Message.endpoint_id``); None when that endpoint is
        no longer offered (deleted, switched off, or its API key unreadable)."""
        if endpoint_id is None:
            return self.default_server()
        return (await self.endpoints()).get(endpoint_id)

    async def endpoints(self) -> dict[int, Server]:
        """The enabled endpoints of the admin, in their order, read at most every
        CHAT_ENDPOINTS_TTL seconds (and after a change in this process)."""
        kept = self._kept_endpoints()
        return kept if kept is not None else await database_sync_to_async(self.read_endpoints)()

    def _kept_endpoints(self) -> dict[int, Server] | None:
        if self._endpoints is None:
            return None
        at, servers = self._endpoints
        return servers if time.monotonic() - at <= settings.CHAT_ENDPOINTS_TTL else None

    def read_endpoints(self) -> dict[int, Server]:
        """``endpoints()`` from a thread that may use the database (sync)."""
        kept = self._kept_endpoints()
        if kept is not None:
            return kept
        servers = {}
        try:
            rows = list(Endpoint.objects.filter(enabled=True))
        except DatabaseError:  # not migrated yet
            return {}
        for row in rows:
            try:
                servers[row.pk] = row.server()
            except KeyUnreadable as error:  # the admin's endpoint page says so too
                log.error("endpoint %r cannot be used: %s", row.name, error)
        self._endpoints = (time.monotonic(), servers)
        return servers

    def endpoints_changed(self) -> None:
        """An endpoint was saved or deleted here: read them again, and their models."""
        self._endpoints = None
        self._models.clear()

    async def models(self, client: httpx.AsyncClient | None = None) -> list[str]:
        """The model names to offer: the upstream's /models (kept CHAT_MODELS_TTL seconds;
        a failure is asked again after 30 s), CHAT_MODEL first if it is not listed."""
        if not settings.OPENAI_BASE_URL:
            return [demo.DEMO_MODEL]
        names = await self._listed(self.default_server(), client)
        configured = [settings.CHAT_MODEL] if settings.CHAT_MODEL else []
        return configured + [name for name in names if name not in configured]

    async def _listed(self, server: Server, client: httpx.AsyncClient | None) -> list[str]:
        """What ``server`` lists at GET /models, kept CHAT_MODELS_TTL seconds (a failure:
        nothing, asked again after 30 s)."""
        key, now = f"{server.id}:{server.base_url}", time.monotonic()
        at, names = self._models.get(key, (float("-inf"), []))
        if now - at > (settings.CHAT_MODELS_TTL if names else 30.0):
            try:
                names = await upstream.list_models(
                    server.base_url, client=client or self.http(), api_key=server.api_key
                )
            except upstream.UpstreamError as error:
                log.warning("could not list the models of %s: %s", server.name, error)
                names = []
            self._models[key] = (now, names)
        return names

    async def model_groups(self, client=None, endpoints=None) -> list[tuple[Server, list[str]]]:
        """Every server with the models it offers, the default server first: an
        endpoint's configured models, else those its GET /models lists (asked of every
        server at once). ``endpoints``: as ``endpoints()`` returns them, if read already."""
        servers = list((endpoints if endpoints is not None else await self.endpoints()).values())

        async def offered(server: Server) -> list[str]:
            return list(server.models) or await self._listed(server, client)

        lists = await asyncio.gather(self.models(client), *(offered(s) for s in servers))
        return [(self.default_server(), lists[0]), *zip(servers, lists[1:], strict=True)]

    def model_choices(self) -> list[tuple[Server, list[str]]]:
        """``model_groups()`` from a request's thread (a sync view): on the serving loop, or,
        when no server runs the site (a test's client), on a loop of its own."""
        endpoints = self.read_endpoints()  # here: the serving loop may wait on this thread
        loop = self.loop
        if loop is not None and loop.is_running():
            groups = self.model_groups(endpoints=endpoints)
            with contextlib.suppress(Exception):
                # A page waits at most 3 s for servers that do not answer.
                return asyncio.run_coroutine_threadsafe(groups, loop).result(3)
            return [(self.default_server(), [])]

        async def once():
            async with upstream.new_client() as client:
                return await self.model_groups(client, endpoints)

        return async_to_sync(once)()

    # --- tools ---------------------------------------------------------------------

    def tool_servers(self) -> "tools.ToolServers | None":
        """The MCP servers of CHAT_MCP_CONFIG (sessions open lazily), or None for no tools."""
        loop = asyncio.get_running_loop()
        if self._tools is None or self._tools[0] is not loop:
            configs = self._tool_configs()
            if configs is None:
                return None
            servers = tools.ToolServers(
                configs,
                connect_timeout=settings.CHAT_TOOL_CONNECT_TIMEOUT,
                retry_interval=settings.CHAT_TOOL_RETRY_INTERVAL,
            )
            self._tools = (loop, servers)
        return self._tools[1]

    def _open_tool_servers(self) -> None:
        """Open the tool servers' sessions in the background, so the first reply need not
        wait for a server to start."""
        servers = self.tool_servers()
        if servers is not None:
            self._opening_tools = asyncio.ensure_future(servers.tools())

    def _tool_configs(self) -> "dict[str, tools.ServerConfig] | None":
        setting = (settings.CHAT_MCP_CONFIG or "").strip()
        if setting.lower() == "off":
            return None
        if not setting:
            return tools.builtin_config()
        try:
            configs = tools.load_config(setting)
        except tools.ConfigError as error:
            # Chatting goes on without tools; the admin and the log say why.
            if self.tool_config_error != str(error):
                log.error("CHAT_MCP_CONFIG cannot be used: %s", error)
            self.tool_config_error = str(error)
            return None
        self.tool_config_error = ""
        return configs

    async def close_tool_servers(self) -> None:
        if self._tools is not None:
            _, servers = self._tools
            self._tools = None
            try:
                await servers.aclose()
            except Exception:
                log.exception("closing the tool servers failed")

    # --- running replies ---------------------------------------------------------------

    def add(self, reply) -> None:
        self.replies[reply.message.pk] = reply
        if self._checkpoints is None or self._checkpoints.done():
            self._checkpoints = asyncio.create_task(self._checkpoint_running(), name="checkpoints")

    def discard(self, reply) -> None:
        self.replies.pop(reply.message.pk, None)

    async def _checkpoint_running(self) -> None:
        """Save the text of every running reply every CHAT_CHECKPOINT_INTERVAL seconds.

        Bounded by time, never per token: a crash loses at most one interval of
        text, and a reply whose checkpoint goes stale has lost its process.
        """
        while self.replies:
            await asyncio.sleep(settings.CHAT_CHECKPOINT_INTERVAL)
            running = list(self.replies.values())
            saves = [(r.message, r.reply.text, r.reply.reasoning) for r in running]
            if not saves:
                continue
            try:
                await database_sync_to_async(Message.checkpoint_many)(saves)
            except Exception:
                log.exception("checkpoint of %d running replies failed", len(saves))

    def sweep_orphans(self, conversation_id: int | None = None) -> list[int]:
        """End streaming rows whose reply task is gone as interrupted; their ids (sync).

        A row not running here is an orphan when its checkpoint is older than
        CHAT_ORPHAN_AFTER (a live reply checkpoints far more often) or, when this
        is the only process (the in-memory channel layer), older than this process.
        """
        rows = Message.objects.all()
        if conversation_id is not None:
            rows = rows.filter(conversation_id=conversation_id)
        single_process = "InMemory" in settings.CHANNEL_LAYERS["default"]["BACKEND"]
        orphans = rows.orphaned(
            running=list(self.replies),
            stale_after=settings.CHAT_ORPHAN_AFTER,
            older_than=self.created_at if single_process else None,
        )
        ids = list(orphans.values_list("pk", flat=True))
        if not ids:
            return []
        # The same conditions again, so a row that came alive meanwhile is left alone.
        if orphans.filter(pk__in=ids).interrupt(ORPHAN_ERROR) < len(ids):
            ended = Message.objects.filter(pk__in=ids, status=Message.Status.INTERRUPTED)
            ids = list(ended.values_list("pk", flat=True))
        return ids


class TokenBucket:
    """``rate`` actions a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> bool:
        return self.delay() == 0

    def delay(self) -> float:
        """0 when an action is taken now; otherwise the seconds until one can be."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return (1 - self.tokens) / self.rate
        self.tokens -= 1
        return 0.0


runtime = Runtime()
