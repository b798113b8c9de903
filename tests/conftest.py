import inspect
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections
from django.test import Client
from hostile import STREAMABLE
from scripted_upstream import by_message, cut_stream, paced_words, status_error, text_in_pieces

from conversations.demo import ChatCompletionsServer, DemoModel, ServerThread
from conversations.models import Conversation
from conversations.rendering import render_markdown

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
LONG_REPLY_TOKENS = 600


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    """Each test gets a new in-memory channel layer, bound to its own event loop."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(autouse=True)
def close_connections_after_async_tests(request):
    """Close the connections Channels' database thread opened, so test databases can be dropped."""
    yield
    uses_database = request.node.get_closest_marker("django_db") is not None
    if uses_database and inspect.iscoroutinefunction(getattr(request.node, "function", None)):
        async_to_sync(database_sync_to_async(connections.close_all))()


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", password="correct horse battery")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob", password="another horse battery")


@pytest.fixture
def conversation(user):
    return Conversation.objects.create(owner=user, model="test-model")


@pytest.fixture
async def start_upstream(settings):
    """Start a scripted upstream on loopback and point the site at it."""
    servers = []

    async def start(handler):
        server = await ChatCompletionsServer(handler).start()
        servers.append(server)
        settings.OPENAI_BASE_URL = server.base_url
        return server

    yield start
    for server in servers:
        await server.close()


SITE_ORIGIN = [(b"origin", b"http://testserver"), (b"host", b"testserver")]


@database_sync_to_async
def session_cookie(user) -> bytes:
    """A real logged-in session for ``user``, as the browser's cookie header."""
    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}".encode()


def socket_to(conversation_id: int, headers=()) -> WebsocketCommunicator:
    """A websocket through the whole ASGI stack (origin checks, sessions, routing)."""
    from chatsite.asgi import application

    return WebsocketCommunicator(
        application, f"/ws/conversations/{conversation_id}/", headers=list(headers)
    )


@pytest.fixture
def connect():
    """Open a websocket to a conversation as ``user``, as the browser would."""

    async def open_socket(conversation, user):
        headers = [*SITE_ORIGIN, (b"cookie", await session_cookie(user))]
        communicator = socket_to(conversation.pk, headers)
        connected, _ = await communicator.connect()
        assert connected
        return communicator

    return open_socket


# --- a real site in its own Daphne process, for the browser tests ------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listened on port {port} within {timeout} s")


class LiveSite:
    """Daphne serving chatsite.asgi on a temporary SQLite database, against a scripted upstream."""

    username = "reader"
    password = "a long test password"

    def __init__(self, tmp: Path, upstream_url: str, **env: str):
        self.tmp = tmp
        self.db_path = tmp / "site.sqlite3"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{self.db_path}",
            "OPENAI_BASE_URL": upstream_url,
            "OPENAI_API_KEY": "",
            "CHAT_MODEL": "scripted-model",
            "DJANGO_DEBUG": "1",
            "REDIS_URL": "",
            "DJANGO_SUPERUSER_USERNAME": self.username,
            "DJANGO_SUPERUSER_PASSWORD": self.password,
            "DJANGO_SUPERUSER_EMAIL": "reader@example.com",
            **env,
        }
        self.process: subprocess.Popen | None = None

    def manage(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
        )

    def start(self) -> "LiveSite":
        self.manage("migrate", "--noinput")
        self.manage("createsuperuser", "--noinput")
        return self.launch()

    def launch(self) -> "LiveSite":
        """Start Daphne (again) on the same port and database."""
        self.log = open(self.tmp / "daphne.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "chatsite.asgi:application",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self.log.close()

    def query(self, sql: str, params=()) -> list[tuple]:
        """Read the site's database directly (SQLite file, or PostgreSQL when configured)."""
        url = self.env["DATABASE_URL"]
        if url.startswith("postgres"):
            import psycopg

            with psycopg.connect(url) as db:
                return db.execute(sql, params).fetchall()
        with sqlite3.connect(self.db_path) as db:
            return db.execute(sql, params).fetchall()


@pytest.fixture(scope="session")
def live_upstream():
    """The demo model at a pace a person (and a test) can watch, plus scripted faults."""
    scenarios = {
        "fail-404": status_error(404, "The model `scripted-model` does not exist"),
        "cut-stream": cut_stream(["Half ", "a reply"]),
        # About 12 seconds of numbered words, to act on a reply in progress.
        "long-reply": paced_words(LONG_REPLY_TOKENS, tokens_per_second=50),
        "hostile": text_in_pieces("\n\n".join(STREAMABLE)),
    }
    thread = ServerThread(by_message(scenarios, DemoModel(tokens_per_second=40))).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def live_site(tmp_path_factory, live_upstream):
    site = LiveSite(tmp_path_factory.mktemp("site"), live_upstream.base_url).start()
    yield site
    site.stop()


def pytest_collection_modifyitems(items):
    """Browser tests last: Playwright's sync API holds an event loop while it runs."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM} (bin/test installs it).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_site):
    context = browser.new_context(base_url=live_site.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def log_in(page, site: LiveSite) -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=username]", site.username)
    page.fill("input[name=password]", site.password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/")


def shown_as(page, markdown: str) -> str:
    """The visible text of ``markdown`` rendered by the site, laid out by this page's CSS."""
    return page.evaluate(
        """html => {
            const probe = document.createElement("div");
            probe.className = "message";
            probe.innerHTML = `<div class="message-text markdown">${html}</div>`;
            document.getElementById("messages").appendChild(probe);
            const text = probe.innerText;
            probe.remove();
            return text;
        }""",
        render_markdown(markdown),
    )
