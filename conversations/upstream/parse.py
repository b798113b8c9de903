"""What the chunks mean: chat.completion.chunk objects (and whole completions) to events.

Written against what real servers send (OpenAI, Azure, Ollama, llama.cpp, vLLM,
OpenRouter, Groq, Mistral, LiteLLM), not only against the spec: chunks without
choices, usage on its own chunk or on every chunk, tool calls without an index,
the pre-tools ``function_call``, error objects in the middle of a 200 stream,
and reasoning in any of the fields, content parts or inline tags servers use
(see ../shared/PROVIDERS.md and tests/test_providers.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from .errors import MAX_SHOWN, StreamError, error_fields, shorten
from .events import (
    Event,
    Finish,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from .sse import ServerSentEvent, SSEDecoder
from .think import ThinkTags

__all__ = ["StreamParser"]


class StreamParser:
    """Bytes in, events out, for one response.

    A chunk goes SSE event -> JSON object -> first choice -> delta, each step a
    plain call adding to one list per SSE event. ``feed`` and ``close`` yield
    those events one SSE event at a time, so the events of the SSE events read
    before a bad one arrive before its StreamError.
    """

    def __init__(self, api_key: str = ""):
        self._api_key = api_key  # redacted from the data quoted in errors
        self._sse = SSEDecoder()
        self._tags = ThinkTags()  # inline <think> tags in the first choice's content
        self.done = False  # [DONE] arrived: stop reading
        self.finished = False  # a finish_reason arrived: an EOF now is a normal end

    def feed(self, chunk: bytes) -> Iterator[Event]:
        """The events completed by the next piece of an event stream."""
        if not self.done:
            yield from self._sse_events(self._sse.feed(chunk))

    def close(self) -> Iterator[Event]:
        """At EOF: whatever is still buffered, even without a final blank line."""
        if not self.done:
            yield from self._sse_events(self._sse.flush())
            yield from self._tags.flush()

    def whole(self, body: bytes) -> list[Event]:
        """A complete (non-streamed) chat.completion object."""
        events: list[Event] = []
        self._data_events(body.decode("utf-8", "replace"), events)
        events += self._tags.flush()
        self.done = True
        return events

    def _sse_events(self, sse_events: list[ServerSentEvent]) -> Iterator[Event]:
        for sse in sse_events:
            if self.done:
                return
            # The event name is not looked at: servers send "message", "completion.chunk"
            # or none. Empty data (a bare "data:") carries nothing.
            if sse.data:
                events: list[Event] = []
                self._data_events(sse.data, events)
                yield from events

    def _data_events(self, data: str, events: list[Event]) -> None:
        if data.strip() == "[DONE]":
            self.done = True
            events += self._tags.flush()
            return
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            excerpt = shorten(data, 200, self._api_key)
            raise StreamError(f"upstream sent malformed data: {excerpt!r}")
        if _UNSTORABLE_ESCAPE.search(data):
            obj = _storable(obj)
        error = obj.get("error")
        if error:
            message, code = error_fields(obj)
            raise StreamError(
                "Upstream error during the reply: " + shorten(message, MAX_SHOWN, self._api_key),
                code=code,
            )
        choices = obj.get("choices")
        for position, choice in enumerate(choices if isinstance(choices, list) else []):
            # Only the first choice: with n>1 the others are alternatives we don't show.
            if isinstance(choice, dict) and _index(choice, position) == 0:
                self._choice_events(choice, events)
        # The usage chunk has empty choices; Azure's prompt_filter_results chunk has
        # neither choices nor usage; vLLM can repeat usage on every chunk; older
        # Groq puts it in x_groq on the last chunk.
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            groq = obj.get("x_groq")
            usage = groq.get("usage") if isinstance(groq, dict) else None
        if isinstance(usage, dict):
            events.append(_usage(usage))

    def _choice_events(self, choice: dict, events: list[Event]) -> None:
        # "delta" in a stream chunk, "message" in a whole completion.
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = choice.get("message")
        if not isinstance(delta, dict):
            delta = {}
        content = delta.get("content")
        if isinstance(content, str) and delta.keys() <= _TEXT_ONLY:
            # Nearly every chunk: text only, no other field to look for.
            if content:
                events += self._tags.feed(content)
        else:
            self._delta_events(delta, events)
        reason = choice.get("finish_reason")
        if reason:
            self.finished = True
            # The content is complete: nothing held back can become a tag any more.
            events += self._tags.flush()
            events.append(Finish(str(reason)))

    def _delta_events(self, delta: dict, events: list[Event]) -> None:
        reasoning = _reasoning(delta)
        if reasoning:
            events.append(ReasoningDelta(reasoning))
        content = delta.get("content")
        if isinstance(content, str) and content:
            events += self._tags.feed(content)
        elif isinstance(content, list):  # Mistral's content parts
            events += _content_parts(content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            events.append(RefusalDelta(refusal))
        tool_calls = delta.get("tool_calls")
        for position, call in enumerate(tool_calls if isinstance(tool_calls, list) else []):
            if isinstance(call, dict):
                # Older Ollama/vLLM send whole calls without an index: use the position.
                index = _index(call, position)
                events.append(_tool_call_delta(index, call.get("id"), call.get("function")))
        function_call = delta.get("function_call")  # the pre-tools API: always one call
        if isinstance(function_call, dict):
            events.append(_tool_call_delta(0, None, function_call))


# The keys of a delta whose string content is all it carries (the first also names the role).
_TEXT_ONLY = frozenset({"content", "role"})


def _reasoning(delta: dict) -> str:
    """The reasoning text of one delta (or message), however the server names it."""
    details = delta.get("reasoning_details")  # OpenRouter
    if isinstance(details, list):
        texts = [_detail_text(detail) for detail in details]
        if any(texts):
            # OpenRouter repeats the same text in delta.reasoning: read it once.
            return "".join(texts)
    # reasoning_content: DeepSeek, SGLang, llama.cpp, older vLLM; reasoning: vLLM,
    # Ollama, OpenRouter, Groq; reasoning_text: what chat-ui also reads. Servers in
    # transition send two of them with the same text.
    texts = []
    for key in ("reasoning_content", "reasoning", "reasoning_text"):
        text = delta.get(key)
        if isinstance(text, str) and text and text not in texts:
            texts.append(text)
    return "".join(texts)


# Where each kind of reasoning_details entry keeps its text. reasoning.encrypted
# entries are opaque (a provider's, for sending back) and never shown.
_DETAIL_TEXT = {"reasoning.text": "text", "reasoning.summary": "summary"}


def _detail_text(detail) -> str:
    field = _DETAIL_TEXT.get(detail.get("type")) if isinstance(detail, dict) else None
    text = detail.get(field) if field else None
    return text if isinstance(text, str) else ""


def _content_parts(parts: list) -> Iterator[Event]:
    """Mistral's ``[{"type": "thinking", "thinking": [...]}, {"type": "text", ...}]``."""
    for part in parts:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if isinstance(text, str) and text:
                yield TextDelta(text)
        elif kind == "thinking":
            thinking = part.get("thinking")
            if isinstance(thinking, list):
                thinking = "".join(
                    item["text"]
                    for item in thinking
                    if isinstance(item, dict) and isinstance(item.get("text"), str)
                )
            if isinstance(thinking, str) and thinking:
                yield ReasoningDelta(thinking)
        elif kind == "refusal":
            refusal = part.get("refusal")
            if isinstance(refusal, str) and refusal:
                yield RefusalDelta(refusal)


def _usage(usage: dict) -> Usage:
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        total_tokens=_count(usage.get("total_tokens")),
        reasoning_tokens=_count(reasoning),
    )


def _tool_call_delta(index: int, call_id, function) -> ToolCallDelta:
    function = function if isinstance(function, dict) else {}
    name = function.get("name")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = ""
    elif not isinstance(arguments, str):
        arguments = json.dumps(arguments)  # Ollama can send the arguments as an object
    return ToolCallDelta(
        index=index,
        id=str(call_id) if call_id else None,
        name=str(name) if name else None,
        arguments=arguments,
    )


def _index(item: dict, default: int) -> int:
    index = item.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else default


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


MAX_COUNT = 2**31 - 1  # more tokens than any reply has, and what the database column holds


def _count(value) -> int | None:
    """A token count, or None (unknown) for a negative, absurd or non-integer one."""
    value = _int(value)
    return value if value is not None and 0 <= value <= MAX_COUNT else None


# A lone surrogate or a NUL can only come from a \u escape; neither can be stored
# (UTF-8 has no surrogates, PostgreSQL text no NUL), so both become U+FFFD here.
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(value):
    """``value`` (parsed JSON) with every string's unstorable characters replaced."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {key: _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value
