"""Helpers for tests that talk to the consumer over a WebsocketCommunicator."""

import asyncio
import json
import re
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


PART = re.compile(r"message-\d+-(text|tail|reasoning-text|reasoning-tail)")


class _Frame(HTMLParser):
    """Text per top-level element of a frame, and per part of a message: its ``text`` and
    ``tail``, and its reasoning's (``reasoning-text``, ``reasoning-tail``)."""

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
            part = PART.fullmatch(element_id)
            if part:
                self.parts.setdefault(part.group(1), []).append(data)


def text_of(frames: list[str], reasoning: bool = False) -> str:
    """The reply's text (or its reasoning) as a page shows it after these frames, white
    space folded.

    A whole element (new, snapshot, resumed) sets the text; a delta appends
    finished blocks and replaces the open tail.
    """
    prefix = "reasoning-" if reasoning else ""
    appended, tail = "", ""
    for frame in frames:
        parser = _Frame()
        parser.feed(frame)
        for attrs, text in parser.elements:
            element_id, swap = attrs.get("id", ""), attrs.get("hx-swap-oob", "")
            target = PART.fullmatch(swap.removeprefix("beforeend:#"))
            whole_turn = element_id.startswith("turn-") and 'data-role="assistant"' in frame
            if whole_turn or (reasoning and element_id.endswith("-reasoning")):
                appended = "".join(parser.parts.get(prefix + "text", []))
                tail = "".join(parser.parts.get(prefix + "tail", []))
            elif swap.startswith("beforeend:") and target and target.group(1) == prefix + "text":
                appended += "".join(text)
            elif (part := PART.fullmatch(element_id)) and part.group(1) == prefix + "tail":
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


def socket_to(conversation_id: int | str, headers=()) -> WebsocketCommunicator:
    """A websocket through the whole ASGI stack (origin checks, sessions, routing)."""
    from chatsite.asgi import application

    return WebsocketCommunicator(
        application, f"/ws/conversations/{conversation_id}/", headers=list(headers)
    )
