"""Helpers for tests that talk to the consumer over a WebsocketCommunicator."""

import asyncio
import json
from html.parser import HTMLParser

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client


async def receive_until(communicator, predicate, seconds=5.0) -> list[str]:
    """Collect frames until one satisfies ``predicate``; return them all."""
    frames = []
    async with asyncio.timeout(seconds):
        while True:
            frame = await communicator.receive_from(seconds)
            frames.append(frame)
            if predicate(frame):
                return frames


async def eventually(condition, seconds=5.0):
    """Wait until ``await condition()`` is true (polling), or fail after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not await condition():  # noqa: ASYNC110 (a database state has no event)
            await asyncio.sleep(0.01)


def ends_reply(frame: str) -> bool:
    return 'data-role="assistant"' in frame and 'data-status="streaming"' not in frame


VOID = {"br", "hr", "img", "input", "meta", "link", "wbr"}


class _Frame(HTMLParser):
    """Text per top-level element of a frame, and per ``-text``/``-tail`` part of a message."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []  # ids of the open elements ("" when none)
        self.elements: list[tuple[dict, list[str]]] = []
        self.parts: dict[str, list[str]] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if not self.stack:
            self.elements.append((attrs, []))
        if tag not in VOID:
            self.stack.append(attrs.get("id") or "")

    def handle_endtag(self, tag):
        if self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if not self.stack:
            return
        self.elements[-1][1].append(data)
        for element_id in self.stack:
            if element_id.endswith(("-text", "-tail")):
                self.parts.setdefault(element_id[-4:], []).append(data)


def text_of(frames: list[str]) -> str:
    """The reply's text as a page shows it after these frames, white space folded.

    A whole message element (new, snapshot, resumed) sets the text; a delta
    appends finished blocks and replaces the open tail.
    """
    appended, tail = "", ""
    for frame in frames:
        parser = _Frame()
        parser.feed(frame)
        for attrs, text in parser.elements:
            swap = attrs.get("hx-swap-oob", "")
            if attrs.get("id", "").startswith("turn-") and 'data-role="assistant"' in frame:
                appended = "".join(parser.parts.get("text", []))
                tail = "".join(parser.parts.get("tail", []))
            elif swap.startswith("beforeend:#message-") and swap.endswith("-text"):
                appended += "".join(text)
            elif attrs.get("id", "").endswith("-tail") and swap == "true":
                tail = "".join(text)
    return words(appended + tail)


def words(text: str) -> str:
    """``text`` with its white space folded, as a rendered paragraph shows it."""
    return " ".join(text.split())


@database_sync_to_async
def messages_of(conversation):
    return list(conversation.messages.order_by("pk"))


async def send(communicator, **data):
    await communicator.send_to(text_data=json.dumps(data))


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
