"""The typed events ``stream_chat`` yields, one per piece of a reply."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "Finish", "RefusalDelta", "TextDelta", "ToolCallDelta", "Usage"]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


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


Event = TextDelta | RefusalDelta | ToolCallDelta | Finish | Usage
