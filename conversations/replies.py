"""The reply task: one assistant reply, from the upstream's stream to the database.

A reply is not its socket: it runs as its own asyncio task and lives on when
the socket that asked for it closes. Its pieces, in the order a token meets them:
:class:`Reply` (what has arrived), :meth:`ReplyStream._read` (the upstream,
with retries), :class:`Publisher` (frames to the conversation's sockets), and
:meth:`ReplyStream._end` (the one write, then the final element).
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from . import titles, upstream
from .endpoints import Server
from .events import (
    TO_REPLIES,
    DecideToolCall,
    ReplyDelta,
    ReplyFinished,
    ReplySnapshot,
    ReplyStarted,
    ReplyStatus,
    StopReply,
    SyncReply,
    parse,
    reply_group,
    sockets_group,
)
from .models import (
    ActionRefused,
    Conversation,
    Message,
    StartedReply,
    ToolPolicy,
    tool_round_messages,
)
from .rendering import (
    StreamingRenderer,
    delta_html,
    footer_html,
    message_html,
    reasoning_html,
    started_html,
    thought_html,
)
from .runtime import SHUTDOWN_ERROR, runtime
from .tool_calls import ToolRunner

log = logging.getLogger(__name__)


async def start_reply(started: StartedReply) -> "ReplyStream":
    """Start writing a reply that was just stored as streaming, and show it on every socket
    (its request leaves first)."""
    reply = ReplyStream(started.reply, started.prompt, started.tools, started.parameters)
    await reply.start(lambda: started_html(started))
    return reply


# How many turns of the event loop a reply's request gets to leave in before the turn's
# elements are rendered: enough for a request on a kept connection to be written, few
# enough that one waiting for a connection or a tool list does not hold the page back.
REQUEST_TURNS = 12


@dataclass(frozen=True, slots=True)
class Ending:
    """How a reply ended: the status it is stored with, and why."""

    status: str
    error: str = ""


class Reply:
    """Everything a reply has received: its answer and reasoning, tool calls, finish, usage.

    A continued reply starts from its stored text, reasoning and usage.
    """

    def __init__(self, message: Message):
        self.text = message.content  # content and refusal, in the order they arrived
        self.reasoning = message.reasoning
        self.reasoning_seconds = message.reasoning_seconds  # from the first reasoning to the answer
        self.finish_reason = ""
        self.usage: upstream.Usage | None = None  # of this request
        self.earlier_usage = _usage_of(message)  # of the requests before this one
        self.rounds: list[dict] = [dict(r) for r in message.tool_rounds or []]
        self._calls: dict[int, dict] = {}
        self._slots: dict[int, int] = {}  # a call's index upstream -> its key in _calls
        self._usage_lost = False  # a request of this reply sent no usage
        self._text_from = len(self.text)  # where this request's text starts
        self._thinking_since: float | None = None
        self._text_since: float | None = None

    def feed(self, event: upstream.Event) -> bool:
        """Take one upstream event; True when the text or the reasoning changed."""
        match event:
            case upstream.ReasoningDelta(text):
                if self._thinking_since is None:
                    self._thinking_since = time.monotonic()
                self.reasoning += text
                return bool(text)
            case upstream.TextDelta(text) | upstream.RefusalDelta(text):
                self.end_thinking()
                if self._text_since is None:
                    self._text_since = time.monotonic()
                self.text += text
                return True
            case upstream.TextWasReasoning():
                # A closing think tag without an opening one: what came so far was thinking.
                self._thinking_since = self._text_since
                self.reasoning += self.text[self._text_from :]
                self.text = self.text[: self._text_from]
                self.end_thinking()
                return True
            case upstream.ToolCallDelta(index, call_id, name, arguments):
                slot = self._slots.get(index, index)
                call = self._calls.get(slot)
                if call is not None and call_id and call["id"] and call_id != call["id"]:
                    # Some servers send index 0 for every call: a new id is a new call.
                    slot = self._slots[index] = max(self._calls) + 1
                    call = None
                if call is None:
                    call = self._calls[slot] = {
                        "id": "",
                        "type": "function",
                        "function": {"name": "", "arguments": ""},
                    }
                # The id and name come once; some servers repeat them, so the first wins.
                call["id"] = call["id"] or call_id or ""
                call["function"]["name"] = call["function"]["name"] or name or ""
                call["function"]["arguments"] += arguments
            case upstream.Finish(reason):
                self.finish_reason = reason
            case upstream.Usage():
                self.usage = event
        return False

    def begin_round(self) -> list[dict]:
        """The calls this request asked for become a tool round; its calls, to run."""
        ids = set()
        calls = [
            {
                "id": _unique(call["id"], ids),
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
                "state": "asked",
                "result": "",
                "seconds": None,
            }
            for call in self.tool_calls
        ]
        self.rounds.append({"text_end": len(self.text), "calls": calls})
        self._calls, self._slots = {}, {}
        return calls

    def next_request(self) -> None:
        """Another upstream request of the same reply begins, after a tool round."""
        if self.usage is None:
            self._usage_lost = True
        self.earlier_usage, self.usage = self.total_usage, None
        self.finish_reason = ""
        if self.text and not self.text.endswith("\n\n"):
            self.text += "\n\n"  # what the model writes next is a new paragraph
        self._text_from = len(self.text)

    def end_tool_calls(self, state: str) -> None:
        """The reply ended: calls not answered keep the state they were left in."""
        left = {"asked": "not_run", "waiting": "not_run", "running": state}
        for round_ in self.rounds:
            for call in round_["calls"]:
                call["state"] = left.get(call["state"], call["state"])

    def end_thinking(self) -> None:
        """The answer begins (or the reply ends): the reasoning's time is counted."""
        if self._thinking_since is not None:
            spent = time.monotonic() - self._thinking_since
            self.reasoning_seconds = (self.reasoning_seconds or 0.0) + spent
            self._thinking_since = None

    @property
    def tool_calls(self) -> list[dict]:
        """OpenAI-shaped tool calls in index order; a call sent without an id gets one."""
        return [
            {**call, "id": call["id"] or f"call_{index}", "function": {**call["function"]}}
            for index, call in sorted(self._calls.items())
        ]

    @property
    def total_usage(self) -> upstream.Usage | None:
        if self._usage_lost:
            return None  # a request's tokens are unknown, so the sum is too
        return add_usage(self.earlier_usage, self.usage)


class ReplyStream:
    """One assistant reply being written: read, published, then stored."""

    def __init__(
        self,
        message: Message,
        prompt: list[dict],
        tools: ToolPolicy | None = None,
        parameters: dict | None = None,
    ):
        self.message = message
        self.parameters = parameters or {}  # temperature, top_p, max_tokens
        self.prompt = prompt  # the conversation so far; tool rounds of this run follow it
        self.reply = Reply(message)
        self.layer = get_channel_layer()
        self.publisher = Publisher(message, self.reply, self.layer)
        self.task: asyncio.Task | None = None
        self._stopped: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
        self._control = ""  # this reply's channel in the conversation's reply group
        self._departed = asyncio.Event()  # its request is written, or waits for a connection
        self.tools = ToolRunner(self, tools or ToolPolicy())

    async def start(self, html: Callable[[], str]) -> None:
        """Join the reply group first, so that a stop sent right away is heard; then the
        task starts, which sends the request and then shows ``html()`` on every socket."""
        self._control = await self.layer.new_channel()
        await self.layer.group_add(reply_group(self.message.conversation_id), self._control)
        runtime.add(self)
        self.task = asyncio.create_task(self._run(html), name=f"reply-{self.message.pk}")

    def stop(self, status: str = Message.Status.STOPPED, error: str = "") -> None:
        """End the reply now with this status: the upstream request is closed, the text kept."""
        if not self._stopped.done():
            self._stopped.set_result(Ending(status, error))

    async def _run(self, html: Callable[[], str]) -> None:
        listening = asyncio.create_task(self._listen())
        reading = asyncio.create_task(self._read())
        try:
            await self._show(html, reading)
            ending = await self._read_until_stopped(reading)
        except asyncio.CancelledError:
            # This task itself was cancelled (the loop is going away): keep what arrived.
            reading.cancel()
            await asyncio.shield(self._end(Ending(Message.Status.INTERRUPTED, SHUTDOWN_ERROR)))
            raise
        finally:
            listening.cancel()
        await self._end(ending)

    async def _show(self, html: Callable[[], str], reading: asyncio.Task) -> None:
        """The turn's elements on every socket, once the request has left, or waits for the
        network (or ``reading`` ended), or REQUEST_TURNS turns of the loop went by; the
        publisher's frames follow them."""
        try:
            for _ in range(REQUEST_TURNS):
                if self._departed.is_set() or reading.done():
                    break
                await asyncio.sleep(0)
            started = ReplyStarted(self.message.pk, len(self.reply.text), html())
            await self.layer.group_send(
                sockets_group(self.message.conversation_id), started.as_message()
            )
        finally:
            self.publisher.start()

    async def _read_until_stopped(self, reading: asyncio.Task) -> Ending:
        try:
            await asyncio.wait([reading, self._stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not reading.done():
                reading.cancel()  # closes the upstream request
                await asyncio.wait([reading])
        if reading.cancelled():
            return self._stopped.result()
        return reading.result()  # it ended first, or before the stop reached it

    async def _listen(self) -> None:
        while True:
            event = parse(await self.layer.receive(self._control), TO_REPLIES)
            match event:
                case StopReply():
                    self.stop()
                case SyncReply(reply_to):
                    self.publisher.sync(reply_to)
                case DecideToolCall(message_id, call_id, allow) if message_id == self.message.pk:
                    self.tools.decide(call_id, allow)

    # --- reading the upstream ----------------------------------------------------------

    async def _read(self) -> Ending:
        limit = settings.CHAT_REPLY_TIMEOUT
        try:
            async with asyncio.timeout(limit):
                await self._write()
        except TimeoutError:
            error = f"The reply took longer than the {limit:g}-second limit and was cut off."
            return Ending(Message.Status.INTERRUPTED, error)
        except upstream.StreamInterrupted as error:
            return Ending(Message.Status.INTERRUPTED, str(error))
        except upstream.UpstreamError as error:
            return Ending(Message.Status.FAILED, str(error))
        except ActionRefused as refusal:  # a limit reached between tool rounds
            return Ending(Message.Status.INTERRUPTED, str(refusal))
        except Exception:
            log.exception("reply %s failed", self.message.pk)
            return Ending(Message.Status.FAILED, "The reply failed because of an internal error.")
        return Ending(Message.Status.COMPLETE)

    async def _write(self) -> None:
        """Stream the reply; when the model asks for tools, run them and stream on.

        Each round's calls and results join the next request. Rounds are bounded
        (CHAT_TOOL_MAX_ROUNDS): the request after the last one offers no tools.
        """
        server = await runtime.server(self.message.endpoint_id)
        if server is None:
            raise upstream.UpstreamError(
                f"The server “{self.message.endpoint_name}” is no longer offered on this site: "
                "choose another model in Settings."
            )
        offered = await self.tools.offer(server.base_url, self.message.model)
        text_from, rounds_from = len(self.reply.text), len(self.reply.rounds)
        while True:
            last = len(self.reply.rounds) - rounds_from >= settings.CHAT_TOOL_MAX_ROUNDS
            rounds = self.reply.rounds[rounds_from:]
            messages = self.prompt + tool_round_messages(self.reply.text, rounds, None, text_from)
            offered = await self._stream_with_retries(server, messages, offered, last=last)
            if not (offered and self.reply.tool_calls) or last:
                return  # calls asked for without tools offered are kept, not run
            await self.tools.run(self.reply.begin_round())
            self.reply.next_request()
            self.publisher.wake()
            await database_sync_to_async(Conversation.admit_tool_round)(
                self.message.conversation_id
            )

    async def _stream_with_retries(
        self, server: Server, messages: list[dict], offered: list[dict], *, last: bool
    ) -> list[dict]:
        """Stream one request; a retryable failure before any event is retried with backoff.

        Returns the tools still offered (none, once the server refused them).
        """
        attempt, waited, base_url = 1, 0.0, server.base_url
        while True:
            received = False
            include_usage = server.stream_options and base_url not in runtime.without_stream_options
            extra = dict(self.parameters)
            if offered:
                extra = {"tools": offered, "tool_choice": "none" if last else "auto"}
            try:
                events = upstream.stream_chat(
                    base_url,
                    client=runtime.http(),
                    model=self.message.model,
                    messages=messages,
                    api_key=server.api_key,
                    idle_timeout=settings.CHAT_UPSTREAM_IDLE_TIMEOUT,
                    include_usage=include_usage,
                    extra=extra,
                    departed=self._departed.set,
                    pace=read_pace,
                )
                async with contextlib.aclosing(events):
                    async for event in events:
                        received = True
                        if self.reply.feed(event):
                            self.publisher.wake()
                return offered
            except upstream.UpstreamError as error:
                if include_usage and not received and error.names("stream_options"):
                    # Some servers refuse it (HTTP 400): ask again without, and remember.
                    log.warning("%s refuses stream_options; usage will be unknown", base_url)
                    runtime.without_stream_options.add(base_url)
                    continue
                if offered and not received and error.names("tool"):
                    # A server or model without tool support: ask again without, and remember.
                    log.warning("%s refuses tools for %s", base_url, self.message.model)
                    runtime.without_tools.add((base_url, self.message.model))
                    offered = []
                    await self.publisher.status(
                        "This model's server does not take tools; answering without them."
                    )
                    continue
                # Once anything arrived, a retry would duplicate text (and billing).
                delay = None if received else retry_delay(error, attempt, waited)
                if delay is None:
                    raise
                await self.publisher.status(f"{error} Retrying in {delay:.1f} s…")
                await asyncio.sleep(delay)
                attempt, waited = attempt + 1, waited + delay
                limit = settings.CHAT_RETRY_ATTEMPTS
                await self.publisher.status(f"Trying again (attempt {attempt} of {limit})…")

    # --- the end -----------------------------------------------------------------------

    async def _end(self, ending: Ending) -> None:
        """Publish what is left, store the reply with one write, then show its final element."""
        try:
            try:
                await self.publisher.close()
            except Exception:  # the final element below still reaches every socket
                log.exception("publishing reply %s failed", self.message.pk)
            await self._store(ending)
            finished = ReplyFinished(self.message.pk, message_html(self.message))
            await self.layer.group_send(
                sockets_group(self.message.conversation_id), finished.as_message()
            )
            titles.after_reply(self.message, self.prompt)  # a first reply: a title, unawaited
        finally:
            runtime.discard(self)
            await self.layer.group_discard(reply_group(self.message.conversation_id), self._control)

    async def _store(self, ending: Ending) -> None:
        """The one write; should it fail, the text is stored as failed, with the reason."""
        self.reply.end_thinking()
        stopped = ending.status == Message.Status.STOPPED
        self.reply.end_tool_calls("stopped" if stopped else "interrupted")
        finish = database_sync_to_async(self.message.finish)
        try:
            await finish(
                status=ending.status,
                content=self.reply.text,
                reasoning=self.reply.reasoning,
                reasoning_seconds=self.reply.reasoning_seconds,
                tool_calls=self.reply.tool_calls,
                tool_rounds=self.reply.rounds,
                finish_reason=self.reply.finish_reason,
                usage=self.reply.total_usage,
                error=ending.error,
            )
            return
        except Exception:
            log.exception("storing reply %s failed; storing its text alone", self.message.pk)
        error = "The reply could not be stored whole; its text is kept."
        try:
            await finish(
                status=Message.Status.FAILED,
                content=self.reply.text,
                reasoning=self.reply.reasoning,
                tool_rounds=self.reply.rounds,
                error=error,
            )
        except Exception:
            # Even that failed (the database is away): the pages still get a final state,
            # and the row's last checkpoint is ended when it is found orphaned.
            log.exception("storing the text of reply %s failed", self.message.pk)
            self.message.status, self.message.error = Message.Status.FAILED, error


class Publisher:
    """A reply's frames to its conversation's sockets, each rendered once with its offset.

    The first text goes at once; after that at most one frame per
    :func:`flush_interval`. Offsets count the reasoning's and the answer's
    characters together, in the order they were published. A socket that asks
    (``sync``) gets a snapshot of the whole turn at a frame boundary, so it
    continues without gap or duplicate.
    """

    def __init__(self, message: Message, reply: Reply, layer):
        self.message = message
        self.reply = reply
        self.layer = layer
        self.group = sockets_group(message.conversation_id)
        self.notice = ""  # shown under the reply while it streams, e.g. "Retrying..."
        self._wake = asyncio.Event()
        self._closing = False  # close() was called: the next frame is the last
        self._napping: asyncio.Future | None = None  # the wait for the next frame
        self._sync_requests: list[str] = []
        self._last_flush = float("-inf")
        self._task: asyncio.Task | None = None  # from start(): after the turn is shown
        self._started = asyncio.Event()
        self._render_from_start()

    def _render_from_start(self) -> None:
        # Each renderer holds the HTML of what has been published of its text.
        self.answer, self.thinking = StreamingRenderer(), StreamingRenderer()
        if self.reply.text:
            self.answer.feed(self.reply.text)
        if self.reply.reasoning:
            self.thinking.feed(self.reply.reasoning)
        self.sent_text, self.sent_reasoning = len(self.reply.text), len(self.reply.reasoning)

    @property
    def sent(self) -> int:
        """The offset up to which frames have been published."""
        return self.sent_reasoning + self.sent_text

    def start(self) -> None:
        """The turn is on the pages: frames may follow."""
        self._started.set()
        self._task = asyncio.create_task(self._run(), name=f"publish-{self.message.pk}")

    def wake(self) -> None:
        """New text or reasoning arrived."""
        self._wake.set()

    def sync(self, reply_to: str) -> None:
        self._sync_requests.append(reply_to)
        self._wake.set()

    async def status(self, notice: str) -> None:
        await self._started.wait()  # after the element it goes in
        self.notice = notice
        event = ReplyStatus(self.message.pk, footer_html(self.message, notice=notice))
        await self.layer.group_send(self.group, event.as_message())

    async def close(self) -> None:
        """Publish what is left and stop; frames are never cut in half."""
        self.notice = ""
        self._closing = True
        self._wake.set()
        if self._napping is not None:
            _wake_up(self._napping)
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            wait = self._last_flush + flush_interval(len(runtime.replies)) - loop.time()
            if wait > 0 and not self._sync_requests and not self._closing:
                await self._nap(loop, wait)
            self._last_flush = loop.time()
            await self._flush()
            if self._closing:
                await self._flush()  # text that arrived while the last frame was sent
                return

    async def _nap(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """Wait until the next frame is due; closing cuts the wait short. A timer on a
        future: the cheapest wait there is, taken once per frame of every reply."""
        self._napping = nap = loop.create_future()
        timer = loop.call_later(seconds, _wake_up, nap)
        try:
            await nap
        finally:
            timer.cancel()
            self._napping = None

    async def _flush(self) -> None:
        """Publish what is not sent yet, then answer waiting sync requests at that boundary."""
        reply, start = self.reply, self.sent
        if len(reply.text) < self.sent_text:  # the text so far turned out to be reasoning
            self._render_from_start()
            event = ReplyStarted(self.message.pk, self.sent, self._turn_html())
            await self.layer.group_send(self.group, event.as_message())
            start = self.sent
        new_reasoning = reply.reasoning[self.sent_reasoning :]
        new_text = reply.text[self.sent_text :]
        reasoning_appears = new_reasoning and not self.sent_reasoning
        answer_begins = new_text and not self.sent_text and reply.reasoning
        self.sent_reasoning += len(new_reasoning)
        self.sent_text += len(new_text)
        if reasoning_appears or answer_begins:
            self._show_on_message()  # the partials below read the row's fields
        html = ""
        if new_reasoning:
            appended, tail = self.thinking.feed(new_reasoning)
            if reasoning_appears:  # the whole block, in place of the empty one
                html += reasoning_html(self.message, appended, tail)
            else:
                html += delta_html(self.message.pk, appended, tail, reasoning=True)
        if answer_begins and not reasoning_appears:  # "Thinking…" becomes "Thought for N s"
            html += thought_html(self.message)
        if new_text:
            appended, tail = self.answer.feed(new_text)
            html += delta_html(self.message.pk, appended, tail)
        if html:
            delta = ReplyDelta(self.message.pk, start, self.sent, html)
            await self.layer.group_send(self.group, delta.as_message())
        while self._sync_requests:
            await self.layer.send(self._sync_requests.pop(0), self.snapshot().as_message())

    def _show_on_message(self) -> None:
        # The templates read the reply's state from its row: keep the in-memory one current.
        text, reasoning = self.reply.text, self.reply.reasoning
        self.message.content = text if len(text) == self.sent_text else text[: self.sent_text]
        self.message.reasoning = (
            reasoning if len(reasoning) == self.sent_reasoning else reasoning[: self.sent_reasoning]
        )
        self.message.reasoning_seconds = self.reply.reasoning_seconds

    def _turn_html(self) -> str:
        self._show_on_message()
        rendered, tail = self.answer.snapshot()
        reasoning_rendered, reasoning_tail = self.thinking.snapshot()
        return message_html(
            self.message,
            rendered=rendered,
            tail=tail,
            reasoning_rendered=reasoning_rendered,
            reasoning_tail=reasoning_tail,
            notice=self.notice,
        )

    def snapshot(self) -> ReplySnapshot:
        return ReplySnapshot(self.message.pk, self.sent, self._turn_html())


# --- pure functions ------------------------------------------------------------------------


def flush_interval(streaming: int) -> float:
    """How long text is merged into one frame: longer as more replies stream in the process."""
    spread = settings.CHAT_FLUSH_INTERVAL_PER_REPLY * streaming
    return min(settings.CHAT_FLUSH_MAX_INTERVAL, max(settings.CHAT_FLUSH_MIN_INTERVAL, spread))


def _wake_up(nap: asyncio.Future) -> None:
    if not nap.done():
        nap.set_result(None)


def read_pace() -> float:
    """How long a reply's read may wait for more of its stream: half a frame. Chunks that
    arrive meanwhile are read, parsed and published together (upstream.stream_chat)."""
    return flush_interval(len(runtime.replies)) / 2


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


def add_usage(first: upstream.Usage | None, second: upstream.Usage | None):
    """Tokens of a continued reply: both requests count. Unknown stays unknown."""
    if first is None or second is None:
        return second if first is None else None

    def add(a, b):
        return None if a is None or b is None else a + b

    return upstream.Usage(
        add(first.prompt_tokens, second.prompt_tokens),
        add(first.completion_tokens, second.completion_tokens),
        add(first.total_tokens, second.total_tokens),
        add(first.reasoning_tokens, second.reasoning_tokens),
    )


def _unique(call_id: str, taken: set[str]) -> str:
    """A call's id, made unique within its round (a Deny must reach the right call)."""
    unique, n = call_id, 1
    while unique in taken:
        n += 1
        unique = f"{call_id}_{n}"
    taken.add(unique)
    return unique


def _usage_of(message: Message) -> upstream.Usage | None:
    if message.total_tokens is None and message.completion_tokens is None:
        return None
    return upstream.Usage(
        message.prompt_tokens,
        message.completion_tokens,
        message.total_tokens,
        message.reasoning_tokens,
    )
