"""The reply task: runs one assistant reply from the upstream stream to the database.

A reply is not its socket. It runs as its own asyncio task, started by the
consumer that received the user's message, and lives on when that socket
closes. It:

1. reads typed events from :func:`upstream.stream_chat`;
2. coalesces new text into frames (the first at once, then at most one per
   ``CHAT_FLUSH_INTERVAL``), renders each piece once and publishes it to the
   conversation's group with its offset in the reply;
3. answers ``reply.sync`` requests with a snapshot (the whole message element
   at a frame boundary), so a socket that joins late continues without gap or
   duplicate; and ``reply.stop`` by closing the upstream request;
4. stores how it ended with one write, then publishes the final element.

Channel-layer events it sends to the conversation group (handled in consumers.py):
``reply.delta`` {message_id, start, end, html}; ``reply.finished`` {message_id, html}.
It listens on the conversation's control group for ``reply.stop`` and ``reply.sync``.
"""

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from . import demo, upstream
from .models import Message
from .rendering import StreamingRenderer, delta_html, message_html

log = logging.getLogger(__name__)


def group_name(conversation_id: int) -> str:
    """Every open socket of a conversation."""
    return f"conversation-{conversation_id}"


def control_group_name(conversation_id: int) -> str:
    """The reply tasks of a conversation (at most one runs at a time)."""
    return f"conversation-{conversation_id}-reply"


def upstream_base_url() -> str:
    return settings.OPENAI_BASE_URL or demo.demo_base_url()


_first_model: dict[str, str] = {}


async def default_model() -> str:
    """CHAT_MODEL, else the upstream's first listed model (asked once per process)."""
    if settings.CHAT_MODEL:
        return settings.CHAT_MODEL
    if not settings.OPENAI_BASE_URL:
        return demo.DEMO_MODEL
    base_url = settings.OPENAI_BASE_URL
    if base_url not in _first_model:
        try:
            models = await upstream.list_models(base_url, api_key=settings.OPENAI_API_KEY)
        except upstream.UpstreamError as error:
            # Not cached: the next message asks again. The reply itself will show the error.
            log.warning("could not list the upstream's models: %s", error)
            return ""
        _first_model[base_url] = models[0] if models else ""
    return _first_model[base_url]


# Running replies of this process, by message id. Holding them here keeps the
# tasks alive (asyncio keeps only weak references) and lets shutdown find them.
running: dict[int, "ReplyStream"] = {}


@dataclass
class Outcome:
    status: str
    error: str = ""


class ReplyStream:
    """One assistant reply being written: its text so far, its offset, its subscribers."""

    def __init__(self, message: Message, prompt: list[dict]):
        self.message = message
        self.prompt = prompt
        self.conversation_id = message.conversation_id
        self.group = group_name(self.conversation_id)
        self.completion = upstream.Completion()
        self.text = ""  # content and refusal, as shown
        self.renderer = StreamingRenderer()
        self.sent = 0  # offset up to which frames have been published
        self.rendered = ""  # HTML of text[:sent], for snapshots
        self.tail = ""
        self.stop_requested = False
        self.layer = get_channel_layer()
        self.control_channel = ""
        self._wake = asyncio.Event()
        self._ended = asyncio.Event()
        self._sync_requests: list[str] = []
        self._last_flush = float("-inf")
        self._reader: asyncio.Task | None = None
        self.task: asyncio.Task | None = None

    # --- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Join the control group before returning, so a stop sent right away is heard."""
        self.control_channel = await self.layer.new_channel()
        await self.layer.group_add(control_group_name(self.conversation_id), self.control_channel)
        running[self.message.pk] = self
        self.task = asyncio.create_task(self.run(), name=f"reply-{self.message.pk}")

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen())
        publisher = asyncio.create_task(self._publish_loop())
        self._reader = asyncio.create_task(self._read_upstream())
        try:
            outcome = await self._reader
        except asyncio.CancelledError:
            # The process is shutting down: keep what arrived.
            outcome = Outcome(Message.Status.INTERRUPTED, "The server restarted during this reply.")
            await asyncio.shield(self._end(outcome, listener, publisher))
            raise
        await self._end(outcome, listener, publisher)

    async def _end(self, outcome: Outcome, listener: asyncio.Task, publisher: asyncio.Task):
        try:
            # The publisher sends what is left and stops; frames are never cut in half.
            self._ended.set()
            self._wake.set()
            try:
                await publisher
            except Exception:  # the final element below still reaches every socket
                log.exception("publishing reply %s failed", self.message.pk)
            await database_sync_to_async(self.message.finish)(
                status=outcome.status,
                content=self.text,
                tool_calls=self.completion.tool_calls,
                finish_reason=self.completion.finish_reason,
                usage=self.completion.usage,
                error=outcome.error,
            )
            await self.layer.group_send(
                self.group,
                {
                    "type": "reply.finished",
                    "message_id": self.message.pk,
                    "html": message_html(self.message),
                },
            )
        finally:
            listener.cancel()
            running.pop(self.message.pk, None)
            await self.layer.group_discard(
                control_group_name(self.conversation_id), self.control_channel
            )

    # --- reading the upstream ----------------------------------------------

    async def _read_upstream(self) -> Outcome:
        try:
            events = upstream.stream_chat(
                upstream_base_url(),
                model=self.message.model,
                messages=self.prompt,
                api_key=settings.OPENAI_API_KEY,
                idle_timeout=settings.CHAT_UPSTREAM_IDLE_TIMEOUT,
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    self.completion.feed(event)
                    if isinstance(event, upstream.TextDelta | upstream.RefusalDelta):
                        self.text += event.text
                        self._wake.set()
        except asyncio.CancelledError:
            if self.stop_requested:
                return Outcome(Message.Status.STOPPED)
            raise
        except upstream.StreamInterrupted as error:
            return Outcome(Message.Status.INTERRUPTED, str(error))
        except upstream.UpstreamError as error:
            return Outcome(Message.Status.FAILED, str(error))
        except Exception:
            log.exception("reply %s failed", self.message.pk)
            return Outcome(Message.Status.FAILED, "The reply failed because of an internal error.")
        return Outcome(Message.Status.COMPLETE)

    # --- publishing --------------------------------------------------------

    async def _publish_loop(self) -> None:
        """Send frames: at once after a quiet spell, else at most one per flush interval."""
        loop = asyncio.get_running_loop()
        interval = settings.CHAT_FLUSH_INTERVAL
        while True:
            await self._wake.wait()
            self._wake.clear()
            wait = self._last_flush + interval - loop.time()
            if wait > 0 and not self._sync_requests and not self._ended.is_set():
                with contextlib.suppress(TimeoutError):  # the end cuts the wait short
                    await asyncio.wait_for(self._ended.wait(), wait)
            self._last_flush = loop.time()
            await self._flush()
            if self._ended.is_set():
                return

    async def _flush(self) -> None:
        """Publish the text not yet sent, then answer waiting sync requests at that boundary."""
        start, end = self.sent, len(self.text)
        if end > start:
            appended, self.tail = self.renderer.feed(self.text[start:end])
            self.rendered += appended
            self.sent = end
            await self.layer.group_send(
                self.group,
                {
                    "type": "reply.delta",
                    "message_id": self.message.pk,
                    "start": start,
                    "end": end,
                    "html": delta_html(self.message.pk, appended, self.tail),
                },
            )
        while self._sync_requests:
            await self.layer.send(self._sync_requests.pop(0), self.snapshot())

    def snapshot(self) -> dict:
        return {
            "type": "reply.snapshot",
            "message_id": self.message.pk,
            "offset": self.sent,
            "html": message_html(self.message, rendered=self.rendered, tail=self.tail),
        }

    # --- control -----------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            event = await self.layer.receive(self.control_channel)
            if event.get("type") == "reply.stop":
                self.stop()
            elif event.get("type") == "reply.sync" and event.get("reply_to"):
                self._sync_requests.append(event["reply_to"])
                self._wake.set()

    def stop(self) -> None:
        if self._reader is not None and not self._reader.done():
            self.stop_requested = True
            self._reader.cancel()


async def start_reply(message: Message, prompt: list[dict]) -> ReplyStream:
    reply = ReplyStream(message, prompt)
    await reply.start()
    return reply
