"""Reasoning in inline tags (``<think>…</think>``) told apart from the answer as it streams.

Models whose server has no reasoning parser write their thinking into
``content``, in tags that may be split between chunks at any character.
"""

from __future__ import annotations

import re
import string

from .events import Event, ReasoningDelta, TextDelta, TextWasReasoning

__all__ = ["ThinkTags"]

NAMES = ("think", "thinking", "thought", "reasoning")  # Gemma writes <thought>
_OPENING = tuple(f"<{name}>" for name in NAMES)
_CLOSING = tuple(f"</{name}>" for name in NAMES)
_LONGEST = max(len(tag) for tag in _CLOSING)


def _pattern(*tags: str) -> re.Pattern:
    # ASCII-only case folding: Unicode folding would let "K" (U+212A) spell "k".
    return re.compile("|".join(re.escape(tag) for tag in tags), re.IGNORECASE | re.ASCII)


_ANY_CLOSING = _pattern(*_CLOSING)
_CLOSING_OF = {tag: _pattern(tag) for tag in _CLOSING}
_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)  # keeps the length

_START = "start"  # nothing but whitespace yet: an opening tag may come
_INSIDE = "inside"  # in a block opened by a tag: reasoning until its closing tag
_TEXT = "text"  # no opening tag came: a first closing tag says the text was reasoning
_ANSWER = "answer"  # tags are plain text from here on


def _partial(text: str, tags: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` may still become one of ``tags``."""
    tail = text[-(_LONGEST - 1) :].translate(_LOWER)
    at = tail.rfind("<")  # every tag starts with "<" and has no other
    if at < 0:
        return 0
    tail = tail[at:]
    return len(tail) if any(tag.startswith(tail) for tag in tags) else 0


class ThinkTags:
    """One stream's string ``content`` in, TextDelta / ReasoningDelta / TextWasReasoning out.

    ``feed`` each piece as it arrives, ``flush`` once at the end. Only the
    characters that may still be part of a tag are held back.
    """

    __slots__ = ("_closing", "_held", "_state", "_strip", "_text_sent")

    def __init__(self) -> None:
        self._state = _START
        self._closing = ""  # the tag that ends the open block
        self._held = ""
        self._strip = False  # drop whitespace up to the next other character
        self._text_sent = False

    def feed(self, text: str) -> list[Event]:
        """The events ``text`` completes."""
        tagless = self._state == _ANSWER or (self._state == _TEXT and "<" not in text)
        if tagless and text and not (self._held or self._strip):
            # Nearly every piece: answer text in which no tag can start, as it is.
            self._text_sent = True
            return [TextDelta(text)]
        events: list[Event] = []
        rest, self._held = self._held + text, ""
        while rest:
            if self._strip:
                stripped = rest.lstrip()
                if not stripped:
                    break
                rest, self._strip = stripped, False
            if self._state == _START:
                rest = self._start(rest)
            elif self._state == _INSIDE:
                rest = self._inside(rest, events)
            elif self._state == _TEXT:
                rest = self._text(rest, events)
            else:
                events.append(TextDelta(rest))
                rest = ""
        return events

    def flush(self) -> list[Event]:
        """At the end of the stream: what was held back, as what it was."""
        held, self._held = self._held, ""
        state, self._state = self._state, _ANSWER
        if not held:
            return []
        return [ReasoningDelta(held) if state == _INSIDE else TextDelta(held)]

    def _start(self, rest: str) -> str:
        body = rest.lstrip()
        if not body:
            self._held = rest
            return ""
        if body[0] == "<":
            head = body[:_LONGEST].translate(_LOWER)
            for opening, closing in zip(_OPENING, _CLOSING, strict=True):
                if head.startswith(opening):
                    self._state, self._closing, self._strip = _INSIDE, closing, True
                    return body[len(opening) :]
            match = _ANY_CLOSING.match(body)
            if match:  # a closing tag first: an empty block whose opening tag was in the prompt
                self._state, self._strip = _ANSWER, True
                return body[match.end() :]
            if _partial(body, _OPENING + _CLOSING) == len(body):
                self._held = rest
                return ""
        self._state = _TEXT
        return rest

    def _inside(self, rest: str, events: list[Event]) -> str:
        match = _CLOSING_OF[self._closing].search(rest)
        if match:
            if match.start():
                events.append(ReasoningDelta(rest[: match.start()]))
            self._state, self._strip = _ANSWER, True
            return rest[match.end() :]
        keep = _partial(rest, (self._closing,))
        if keep:
            rest, self._held = rest[:-keep], rest[-keep:]
        if rest:
            events.append(ReasoningDelta(rest))
        return ""

    def _text(self, rest: str, events: list[Event]) -> str:
        match = _ANY_CLOSING.search(rest)
        if match:
            self._send_text(rest[: match.start()], events)
            if self._text_sent:  # nothing sent: nothing to take back
                events.append(TextWasReasoning())
            self._state, self._strip = _ANSWER, True
            return rest[match.end() :]
        keep = _partial(rest, _CLOSING)
        if keep:
            rest, self._held = rest[:-keep], rest[-keep:]
        self._send_text(rest, events)
        return ""

    def _send_text(self, text: str, events: list[Event]) -> None:
        if text:
            events.append(TextDelta(text))
            self._text_sent = True
