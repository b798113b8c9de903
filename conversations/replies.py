"""The reply task: runs one assistant reply from the upstream stream to the database.

A reply is not its socket. It runs as its own asyncio task, started by the
consumer that received the user's message, and lives on when that socket
closes. It:

1. reads typed events from :func:`upstream.stream_chat`, retrying a busy or
   failing upstream with backoff until the first token, never after;
2. coalesces new text into frames (at once after a quiet spell, then at most
   one per :func:`flush_interval`, which grows with the replies streaming in the
   process), renders each piece once and publishes it to the conversation's
   group with its offset in the reply;
3. answers ``reply.sync`` with a snapshot (the whole message element at a frame
   boundary), so a socket that joins late continues without gap or duplicate,
   and ``reply.stop`` by closing the upstream request;
4. has its text checkpointed every ``CHAT_CHECKPOINT_INTERVAL`` seconds, with
   every other running reply of the process in one statement (bounded by time,
   never per token), which also shows it is alive;
5. stores how it ended with one write, then publishes the final element.

Channel-layer events it sends to the conversation group (handled in consumers.py):
``reply.delta`` {message_id, start, end, html}, ``reply.status`` {message_id, html}
and ``reply.finished`` {message_id, html}; to one socket: ``reply.snapshot``
{message_id, offset, html}. It listens on the conversation's control group for
``reply.stop`` and ``reply.sync`` {reply_to}.
"""

import asyncio
import contextlib
import logging
import random
import sys
from dataclasses import dataclass

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from . import demo, upstream
from .models import Message
from .rendering import StreamingRenderer, delta_html, footer_html, message_html

log = logging.getLogger(__name__)

SHUTDOWN_ERROR = "The server restarted while this reply was being written."
ORPHAN_ERROR = "The server stopped while this reply was being written."


def group_name(conversation_id: int) -> str:
    """Every open socket of a conversation."""
    return f"conversation-{conversation_id}"


def control_group_name(conversation_id: int) -> str:
    """The reply tasks of a conversation (at most one runs at a time)."""
    return f"conversation-{conversation_id}-reply"


def upstream_base_url() -> str:
    return settings.OPENAI_BASE_URL or demo.demo_base_url(settings.CHAT_DEMO_TOKENS_PER_SECOND)


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
    """One assistant reply being written: its text so far, its offset, its subscribers.

    ``message.content`` is where the text starts: empty for a new reply, the
    text so far when an interrupted reply is continued.
    """

    def __init__(self, message: Message, prompt: list[dict]):
        self.message = message
        self.prompt = prompt
        self.conversation_id = message.conversation_id
        self.group = group_name(self.conversation_id)
        self.completion = upstream.Completion()
        self.base_usage = _usage_of(message)  # tokens already spent on a continued reply
        self.text = message.content  # content and refusal, as shown
        self.renderer = StreamingRenderer()  # holds the HTML of text[:sent]
        if self.text:
            self.renderer.feed(self.text)
        self.sent = len(self.text)  # offset up to which frames have been published
        self.notice = ""  # shown under the reply while it streams, e.g. "Retrying..."
        self.outcome_on_cancel: Outcome | None = None
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
        _install_shutdown_hook()
        _ensure_checkpoints()
        self.task = asyncio.create_task(self.run(), name=f"reply-{self.message.pk}")

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen())
        publisher = asyncio.create_task(self._publish_loop())
        self._reader = asyncio.create_task(self._read_upstream())
        try:
            outcome = await self._reader
        except asyncio.CancelledError:
            # This task itself was cancelled (the loop is going away): keep what arrived.
            outcome = Outcome(Message.Status.INTERRUPTED, SHUTDOWN_ERROR)
            await asyncio.shield(self._end(outcome, publisher, listener))
            raise
        await self._end(outcome, publisher, listener)

    async def _end(self, outcome: Outcome, publisher: asyncio.Task, listener: asyncio.Task):
        try:
            listener.cancel()
            # The publisher sends what is left and stops; frames are never cut in half.
            self._ended.set()
            self._wake.set()
            try:
                await publisher
            except Exception:  # the final element below still reaches every socket
                log.exception("publishing reply %s failed", self.message.pk)
            self.notice = ""
            await database_sync_to_async(self.message.finish)(
                status=outcome.status,
                content=self.text,
                tool_calls=self.completion.tool_calls,
                finish_reason=self.completion.finish_reason,
                usage=_add_usage(self.base_usage, self.completion.usage),
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
            running.pop(self.message.pk, None)
            await self.layer.group_discard(
                control_group_name(self.conversation_id), self.control_channel
            )

    def stop(self, outcome: Outcome | None = None) -> None:
        """End the reply now: close the upstream request and keep the text so far."""
        if self._reader is not None and not self._reader.done():
            self.outcome_on_cancel = outcome or Outcome(Message.Status.STOPPED)
            self._reader.cancel()

    # --- reading the upstream ----------------------------------------------

    async def _read_upstream(self) -> Outcome:
        limit = settings.CHAT_REPLY_TIMEOUT
        try:
            async with asyncio.timeout(limit):
                await self._stream_with_retries()
        except asyncio.CancelledError:
            if self.outcome_on_cancel is not None:
                return self.outcome_on_cancel
            raise
        except TimeoutError:
            return Outcome(
                Message.Status.INTERRUPTED,
                f"The reply took longer than the {limit:g}-second limit and was cut off.",
            )
        except upstream.StreamInterrupted as error:
            return Outcome(Message.Status.INTERRUPTED, str(error))
        except upstream.UpstreamError as error:
            return Outcome(Message.Status.FAILED, str(error))
        except Exception:
            log.exception("reply %s failed", self.message.pk)
            return Outcome(Message.Status.FAILED, "The reply failed because of an internal error.")
        return Outcome(Message.Status.COMPLETE)

    async def _stream_with_retries(self) -> None:
        """Stream the reply; a retryable failure before any token is retried with backoff."""
        attempt, waited = 1, 0.0
        while True:
            received = False
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
                        received = True
                        self.completion.feed(event)
                        if isinstance(event, upstream.TextDelta | upstream.RefusalDelta):
                            self.text += event.text
                            self._wake.set()
                return
            except upstream.UpstreamError as error:
                # Once anything arrived, a retry would duplicate text (and billing).
                delay = None if received else retry_delay(error, attempt, waited)
                if delay is None:
                    raise
                await self._announce_retry(error, delay, attempt)
                await asyncio.sleep(delay)
                attempt, waited = attempt + 1, waited + delay
                await self._announce_retry(None, 0, attempt)

    async def _announce_retry(self, error, delay: float, attempt: int) -> None:
        if error is None:
            self.notice = f"Trying again (attempt {attempt} of {settings.CHAT_RETRY_ATTEMPTS})…"
        else:
            self.notice = f"{error} Retrying in {delay:.1f} s…"
        await self.layer.group_send(
            self.group,
            {
                "type": "reply.status",
                "message_id": self.message.pk,
                "html": footer_html(self.message, notice=self.notice),
            },
        )

    # --- publishing --------------------------------------------------------

    async def _publish_loop(self) -> None:
        """Send frames: at once after a quiet spell, else at most one per flush interval."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            wait = self._last_flush + flush_interval() - loop.time()
            if wait > 0 and not self._sync_requests and not self._ended.is_set():
                with contextlib.suppress(TimeoutError):  # the end cuts the wait short
                    await asyncio.wait_for(self._ended.wait(), wait)
            self._last_flush = loop.time()
            await self._flush()
            if self._ended.is_set():
                await self._flush()  # text that arrived while the last frame was sent
                return

    async def _flush(self) -> None:
        """Publish the text not yet sent, then answer waiting sync requests at that boundary."""
        start, end = self.sent, len(self.text)
        if end > start:
            appended, tail = self.renderer.feed(self.text[start:end])
            self.sent = end
            await self.layer.group_send(
                self.group,
                {
                    "type": "reply.delta",
                    "message_id": self.message.pk,
                    "start": start,
                    "end": end,
                    "html": delta_html(self.message.pk, appended, tail),
                },
            )
        while self._sync_requests:
            await self.layer.send(self._sync_requests.pop(0), self.snapshot())

    def snapshot(self) -> dict:
        rendered, tail = self.renderer.snapshot()
        html = message_html(self.message, rendered=rendered, tail=tail, notice=self.notice)
        return {
            "type": "reply.snapshot",
            "message_id": self.message.pk,
            "offset": self.sent,
            "html": html,
        }

    # --- control ------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            event = await self.layer.receive(self.control_channel)
            if event.get("type") == "reply.stop":
                self.stop()
            elif event.get("type") == "reply.sync" and event.get("reply_to"):
                self._sync_requests.append(event["reply_to"])
                self._wake.set()


def flush_interval() -> float:
    """How long text is merged into one frame: longer as more replies stream in this process."""
    spread = settings.CHAT_FLUSH_INTERVAL_PER_REPLY * len(running)
    return min(settings.CHAT_FLUSH_MAX_INTERVAL, max(settings.CHAT_FLUSH_MIN_INTERVAL, spread))


# --- checkpoints: one statement per interval for all the replies of a process ------

_checkpoints: tuple[asyncio.AbstractEventLoop, asyncio.Task] | None = None


def _ensure_checkpoints() -> None:
    global _checkpoints
    loop = asyncio.get_running_loop()
    if _checkpoints is None or _checkpoints[0] is not loop or _checkpoints[1].done():
        _checkpoints = (loop, loop.create_task(_checkpoint_running(), name="checkpoints"))


async def _checkpoint_running() -> None:
    """Save the text of every running reply every CHAT_CHECKPOINT_INTERVAL seconds.

    Bounded by time, never per token: a crash loses at most one interval of
    text, and a reply whose checkpoint goes stale has lost its process.
    """
    while running:
        await asyncio.sleep(settings.CHAT_CHECKPOINT_INTERVAL)
        saves = [(reply.message, reply.text) for reply in list(running.values())]
        if not saves:
            continue
        try:
            await database_sync_to_async(Message.checkpoint_many)(saves)
        except Exception:
            log.exception("checkpoint of %d running replies failed", len(saves))


def retry_delay(error: upstream.UpstreamError, attempt: int, waited: float) -> float | None:
    """Seconds to wait before the next attempt, or None to give up.

    Exponential backoff with full jitter, honouring Retry-After, bounded in
    attempts (CHAT_RETRY_ATTEMPTS) and in total wait (CHAT_RETRY_MAX_WAIT).
    """
    if not error.retryable or attempt >= settings.CHAT_RETRY_ATTEMPTS:
        return None
    base = settings.CHAT_RETRY_BASE_DELAY * 2 ** (attempt - 1)
    delay = random.uniform(base / 2, base)
    if error.retry_after is not None:
        delay = max(error.retry_after, 0.0)
    if waited + delay > settings.CHAT_RETRY_MAX_WAIT:
        return None
    return delay


def _usage_of(message: Message) -> upstream.Usage | None:
    if message.total_tokens is None and message.completion_tokens is None:
        return None
    return upstream.Usage(message.prompt_tokens, message.completion_tokens, message.total_tokens)


def _add_usage(first: upstream.Usage | None, second: upstream.Usage | None):
    """Tokens of a continued reply: both requests count. Unknown stays unknown."""
    if first is None or second is None:
        return second if first is None else None

    def add(a, b):
        return None if a is None or b is None else a + b

    return upstream.Usage(
        add(first.prompt_tokens, second.prompt_tokens),
        add(first.completion_tokens, second.completion_tokens),
        add(first.total_tokens, second.total_tokens),
    )


async def start_reply(message: Message, prompt: list[dict]) -> ReplyStream:
    reply = ReplyStream(message, prompt)
    await reply.start()
    return reply


# --- process shutdown and orphans ---------------------------------------------


async def interrupt_all(error: str = SHUTDOWN_ERROR, grace: float = 5.0) -> None:
    """Store every running reply of this process as interrupted, with its text."""
    replies = list(running.values())
    for reply in replies:
        reply.stop(Outcome(Message.Status.INTERRUPTED, error))
    tasks = [reply.task for reply in replies if reply.task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=grace)


_shutdown_hook_installed = False


def _install_shutdown_hook() -> None:
    """Under Daphne (Twisted), store in-flight replies before the reactor stops on SIGTERM."""
    global _shutdown_hook_installed
    if _shutdown_hook_installed or "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import defer, reactor

    def before_shutdown():
        return defer.Deferred.fromFuture(asyncio.ensure_future(interrupt_all()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    _shutdown_hook_installed = True


def sweep_orphans(conversation_id: int | None = None, *, stale_after: float | None = None) -> int:
    """Mark streaming rows whose reply task is gone as interrupted (sync; call from a thread).

    A live reply checkpoints every CHAT_CHECKPOINT_INTERVAL seconds, so a row not
    running in this process and not checkpointed for CHAT_ORPHAN_AFTER seconds
    has lost its process.
    """
    if stale_after is None:
        stale_after = settings.CHAT_ORPHAN_AFTER
    messages = Message.objects.all()
    if conversation_id is not None:
        messages = messages.filter(conversation_id=conversation_id)
    orphans = messages.orphaned(running=list(running), stale_after=stale_after)
    return orphans.interrupt(ORPHAN_ERROR)


def sweep_orphans_at_start() -> None:
    """At process start, end the replies a crashed process left streaming.

    With the in-memory channel layer this is the only process, so every
    streaming row is an orphan. With a shared layer other processes may be
    streaming; only rows whose checkpoint is stale are taken.
    """
    single_process = "InMemory" in settings.CHANNEL_LAYERS["default"]["BACKEND"]
    if _loop_running():
        return  # imported by code already running (the tests): not a process start
    try:
        count = sweep_orphans(stale_after=0 if single_process else None)
    except DatabaseError:  # not migrated yet: nothing to sweep
        return
    except Exception:  # never keep the site from starting
        log.exception("could not look for replies left streaming")
        return
    if count:
        log.warning("marked %d reply(s) left streaming by a stopped process as interrupted", count)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
