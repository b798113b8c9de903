"""Server-Sent Events decoding, bytes in, events out (WHATWG event-stream format).

Lines end at CR, LF or CRLF and nowhere else: ``str.splitlines`` (and so
``httpx.Response.aiter_lines``) also splits at U+2028, U+2029 and U+0085, which
servers leave raw inside JSON strings. Lines are split as bytes, before UTF-8
decoding, which is safe because CR and LF never occur inside a multi-byte UTF-8
sequence; a sequence split between chunks waits in the unfinished line.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEDecoder", "ServerSentEvent"]

_BOM = b"\xef\xbb\xbf"


class ServerSentEvent(NamedTuple):
    data: str
    event: str = "message"
    id: str = ""  # the last event ID, which carries over to later events


class SSEDecoder:
    """Incremental: ``feed`` each chunk as it arrives, ``flush`` once at EOF."""

    __slots__ = ("_cr", "_data", "_event", "_start", "_tail", "last_event_id", "retry")

    def __init__(self) -> None:
        self._tail: list[bytes] = []  # the line still waiting for its ending, in pieces
        self._cr = False  # the last chunk ended with CR: a LF opening the next one is its pair
        self._start = True  # a BOM may still come
        self._data: list[bytes] = []
        self._event = b""
        self.last_event_id = ""
        self.retry: int | None = None  # the reconnection time the server asked for, in ms

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events completed by ``chunk``."""
        if self._cr and chunk:
            self._cr = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        if (
            chunk.startswith(b"data: ")
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk.endswith(b"\n\n")
            and b"\r" not in chunk
            and not (self._tail or self._data or self._event)
        ):
            # Nearly every chunk: one whole event of one data line.
            self._start = False
            data = chunk[6:-2].decode("utf-8", "replace")
            return [ServerSentEvent(data, "message", self.last_event_id)]
        if b"\n" not in chunk and b"\r" not in chunk:
            if chunk:
                self._tail.append(chunk)  # joined once the line ends: linear however it trickles
            return []
        if self._tail:
            self._tail.append(chunk)
            chunk = b"".join(self._tail)
            self._tail.clear()
        if b"\r" in chunk:
            # A final CR ends its line now, not when the next chunk shows what follows it.
            self._cr = chunk[-1] == 0x0D
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        last = lines.pop()
        if last:
            self._tail.append(last)
        return self._lines(lines)

    def flush(self) -> list[ServerSentEvent]:
        """At EOF: the last line even without its ending, and the event it completes.

        The spec drops an event not followed by a blank line; many servers end
        the stream right after the last event's data line, so it is kept.
        """
        lines = [b"".join(self._tail), b""] if self._tail else [b""]
        self._tail.clear()
        self._cr = False
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[ServerSentEvent]:
        if self._start and lines:
            self._start = False
            lines[0] = lines[0].removeprefix(_BOM)
        events = []
        data = self._data
        for line in lines:
            if not line:  # a blank line dispatches the event
                if data:
                    text = b"\n".join(data).decode("utf-8", "replace")
                    event = self._event.decode("utf-8", "replace") if self._event else "message"
                    events.append(ServerSentEvent(text, event, self.last_event_id))
                    data.clear()
                self._event = b""
                continue
            if line.startswith(b"data: "):  # nearly every line: skip the general parse
                data.append(line[6:])
                continue
            name, _, value = line.partition(b":")
            if not name:
                continue  # a comment (keep-alive pings, ": OPENROUTER PROCESSING")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                self._event = value
            elif name == b"id":
                if b"\0" not in value:
                    self.last_event_id = value.decode("utf-8", "replace")
            elif name == b"retry" and value.isdigit():  # bytes.isdigit: ASCII digits only
                self.retry = int(value)
        return events
