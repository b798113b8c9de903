"""Fixtures of the tests that need no browser: users, conversations, sockets, an upstream.

The live site and Chromium for the browser tests are in tests/browser/conftest.py.
"""

import inspect

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from django.db import connections
from mcp_servers.serving import HttpServer
from mcp_servers.toolbox import build
from sockets import SITE_ORIGIN, session_cookie, socket_to

from conversations.demo import ChatCompletionsServer
from conversations.models import Conversation


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    """Each test gets a new in-memory channel layer, bound to its own event loop."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(autouse=True)
def no_tools_unless_asked(settings):
    """Replies offer no tools, unless a test configures tool servers (tests/test_tool_replies),
    and ask for no title, unless a test wants one (tests/test_titles): the upstream then
    sees only the requests a test makes."""
    settings.CHAT_MCP_CONFIG = "off"
    settings.CHAT_GENERATE_TITLES = False


@pytest.fixture(autouse=True)
def close_connections_after_async_tests(request):
    """Close the connections Channels' database thread opened, so test databases can be dropped."""
    yield
    uses_database = request.node.get_closest_marker("django_db") is not None
    if uses_database and inspect.iscoroutinefunction(getattr(request.node, "function", None)):
        async_to_sync(database_sync_to_async(connections.close_all))()


@pytest.fixture(scope="module")
def toolbox():
    """The test MCP server (tests/mcp_servers/toolbox.py) over streamable HTTP, per module."""
    server = HttpServer(lambda: build().streamable_http_app())
    server.start()
    yield server
    server.stop()


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


@pytest.fixture
def connect():
    """Open a websocket to a conversation as ``user``, as the browser would (to a new
    page's socket when ``conversation`` is not stored)."""

    async def open_socket(conversation, user):
        headers = [*SITE_ORIGIN, (b"cookie", await session_cookie(user))]
        communicator = socket_to(conversation.pk or "new", headers)  # unsaved: a new page
        connected, _ = await communicator.connect()
        assert connected
        return communicator

    return open_socket


def pytest_collection_modifyitems(items):
    """Browser tests last: Playwright's sync API holds an event loop while it runs."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
