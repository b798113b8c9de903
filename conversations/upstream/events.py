"""The typed events ``stream_chat`` yields, one per piece of a reply."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Event",
    "Finish",
    "ReasoningDelta",
    "RefusalDelta",
    "TextDelta",
    "TextWasReasoning",
    "ToolCallDelta",
    "Usage",
]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """Reasoning ("thinking") text to show, apart from the answer."""

    text: str


@dataclass(frozen=True, slots=True)
class TextWasReasoning:
    """All the text this stream has yielded as TextDelta so far was reasoning.

    Sent when a closing think tag arrives without an opening one (the chat
    template put ``<think>`` in the prompt); the text after it is answer again.
    """


@dataclass(frozen=True, slots=True)
class RefusalDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str  # finish_reason as sent: stop, length, tool_calls, content_filter, ...


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    reasoning_tokens: int | None = None  # usage.completion_tokens_details.reasoning_tokens


Event = (
    TextDelta | ReasoningDelta | TextWasReasoning | RefusalDelta | ToolCallDelta | Finish | Usage
)
