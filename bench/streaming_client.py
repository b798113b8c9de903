"""The client side of bench/streaming.py, in a process of its own (so its CPU is not the site's).

    python bench/streaming_client.py site   SPEC OUT   # N websockets to the site, one reply each
    python bench/streaming_client.py direct SPEC OUT   # the same streams straight from the upstream
    python bench/streaming_client.py idle   SPEC OUT   # many websockets that only stay open

SPEC and OUT are JSON files written and read by bench/streaming.py. Every time
is ``time.monotonic()`` (CLOCK_MONOTONIC), comparable with the upstream's.

While streams run, the client only stores each frame with its arrival time;
it works out what the page shows (and when each numbered token first
appeared) afterwards, so parsing costs nothing during the measurement.
"""

from __future__ import annotations

import asyncio
import collections
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx
import websockets
from websockets.asyncio.client import connect as ws_connect
from websockets.protocol import State

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streaming_upstream import TOKEN

CONNECT_CONCURRENCY = 100  # handshakes in flight at once
CLOSE_TIMEOUT = 10.0


@dataclass
class Received:
    """One stream as it arrived: each frame (or SSE line) with its arrival time."""

    name: str
    sent_at: float = 0.0
    frames: list[tuple[float, str]] = field(default_factory=list)
    error: str = ""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_open_files_limit() -> int:
    """Allow as many sockets as the hard limit does (each socket is a file)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1_048_576)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def open_socket(url: str, path: str, cookie: str, timeout: float):
    """A websocket the way the conversation page opens it: same Origin, session cookie."""
    return ws_connect(
        "ws://" + url.removeprefix("http://") + path,
        origin=url,  # the site refuses any Origin but its own
        additional_headers={"Cookie": cookie},
        proxy=None,
        open_timeout=timeout,
        ping_interval=None,  # the server pings; the library answers
        max_size=None,
        close_timeout=2,
    )


def ends_reply(frame: str) -> bool:
    """The assistant's element in a final state (cheap test; the exact parse comes later)."""
    return 'data-role="assistant"' in frame and 'data-status="streaming"' not in frame


def is_notice(frame: str) -> bool:
    return 'id="notices"' in frame


# --- site: websockets -------------------------------------------------------------------


async def read_reply(socket, received: Received, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            async for frame in socket:
                received.frames.append((time.monotonic(), frame))
                if ends_reply(frame):
                    return
                if is_notice(frame):
                    received.error = "refused: " + " ".join(Fragments(frame).text().split())
                    return
        received.error = "the socket closed before the reply ended"
    except TimeoutError:
        received.error = f"no final frame within {seconds:.0f} s"
    except websockets.ConnectionClosed as closed:
        received.error = f"the socket closed before the reply ended ({closed})"


async def run_site(spec: dict) -> dict:
    url, seconds = spec["url"], spec["timeout"]
    streams = [Received(stream["name"]) for stream in spec["streams"]]
    sockets: list = [None] * len(streams)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(index: int) -> None:
        stream = spec["streams"][index]
        async with gate:
            try:
                sockets[index] = await open_socket(url, stream["path"], stream["cookie"], 30)
            except (OSError, TimeoutError, websockets.WebSocketException) as error:
                streams[index].error = f"could not connect: {error}"

    await asyncio.gather(*(connect(index) for index in range(len(streams))))
    live = [(socket, stream) for socket, stream in zip(sockets, streams, strict=True) if socket]
    readers = [asyncio.create_task(read_reply(s, stream, seconds)) for s, stream in live]

    async def send(socket, stream: Received) -> None:
        stream.sent_at = time.monotonic()
        await socket.send(json.dumps({"action": "send", "content": f"{stream.name} go"}))

    print("sending", flush=True)  # bench/streaming.py may start its profiler now
    cpu, started = cpu_seconds(), time.monotonic()
    await asyncio.gather(*(send(socket, stream) for socket, stream in live))  # all at once
    await asyncio.gather(*readers)
    ended, cpu = time.monotonic(), cpu_seconds() - cpu
    async with asyncio.timeout(CLOSE_TIMEOUT):
        await asyncio.gather(*(socket.close() for socket, _ in live), return_exceptions=True)
    return {
        "started": started,
        "ended": ended,
        "cpu_seconds": cpu,
        "streams": [summarize_site(stream, spec["tokens"], spec["keep"]) for stream in streams],
    }


class Fragments(HTMLParser):
    """A frame's elements: the top-level ones, the text inside each id, each message's status."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "wbr"}

    def __init__(self, frame: str):
        super().__init__(convert_charrefs=True)
        self.top: list[tuple[dict, list[str]]] = []  # (attributes, text pieces)
        self.text_of_id: dict[str, list[str]] = collections.defaultdict(list)
        self.status_of_message: dict[str, tuple[str, str]] = {}  # id -> (role, status)
        self._open: list[tuple[str, str]] = []  # (tag, id) of the elements we are inside
        self.feed(frame)
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = {name: value or "" for name, value in attrs}
        if not self._open:
            self.top.append((attributes, []))
        element_id = attributes.get("id", "")
        if "data-status" in attributes and element_id:
            role = attributes.get("data-role", "")
            self.status_of_message[element_id] = (role, attributes["data-status"])
        if tag not in self.VOID:
            self._open.append((tag, element_id))

    def handle_endtag(self, tag):
        for depth in range(len(self._open) - 1, -1, -1):
            if self._open[depth][0] == tag:
                del self._open[depth:]
                return

    def handle_data(self, data):
        if self.top and self._open:
            self.top[-1][1].append(data)
        for _, element_id in self._open:
            if element_id:
                self.text_of_id[element_id].append(data)

    def text(self) -> str:
        return "\n".join("".join(pieces) for _, pieces in self.top)

    def text_in(self, element_id: str) -> str:
        return "".join(self.text_of_id.get(element_id, ()))


@dataclass
class Page:
    """The reply as the conversation page shows it, after applying each frame as htmx would."""

    appended: list[str] = field(default_factory=list)
    tail: str = ""
    final: str | None = None
    status: str = "streaming"
    snapshots: int = 0

    def apply(self, fragments: Fragments) -> None:
        for attributes, pieces in fragments.top:
            swap, element_id = attributes.get("hx-swap-oob", ""), attributes.get("id", "")
            if swap.startswith("beforeend:#message-") and swap.endswith("-text"):
                self.appended.append("".join(pieces))
            elif element_id.startswith("message-") and element_id.endswith("-tail"):
                self.tail = "".join(pieces)
            elif element_id.startswith("turn-"):
                self.replace(fragments, element_id.removeprefix("turn-"))

    def replace(self, fragments: Fragments, pk: str) -> None:
        """A whole message element: a snapshot while streaming, or the final state."""
        role, status = fragments.status_of_message.get(f"message-{pk}", ("", ""))
        if role != "assistant":
            return
        if status == "streaming":
            self.appended = [fragments.text_in(f"message-{pk}-text")]
            self.tail = fragments.text_in(f"message-{pk}-tail")
            self.snapshots += 1
        else:
            self.final = fragments.text_in(f"message-{pk}")
            self.status = status

    def tokens(self) -> list[int]:
        return [int(number) for number in TOKEN.findall("".join(self.appended) + self.tail)]


def summarize_site(stream: Received, tokens: int, keep: bool = False) -> dict:
    page = Page()
    first_seen: list[float | None] = [None] * tokens
    for arrived, frame in stream.frames:
        fragments = Fragments(frame)
        page.apply(fragments)
        note_first_seen(first_seen, fragments.text(), arrived)
    final = None if page.final is None else [int(n) for n in TOKEN.findall(page.final)]
    result = summary(stream, first_seen, page.tokens(), final, page.status, page.snapshots)
    if keep:  # every frame as it arrived, to look into a lost or doubled token
        result["received"] = stream.frames
    return result


def note_first_seen(first_seen: list[float | None], text: str, arrived: float) -> None:
    for number in TOKEN.findall(text):
        index = int(number) - 1
        if 0 <= index < len(first_seen) and first_seen[index] is None:
            first_seen[index] = arrived


def summary(stream, first_seen, shown, final, status, snapshots=0) -> dict:
    times = [arrived for arrived, _ in stream.frames]
    return {
        "name": stream.name,
        "sent_at": stream.sent_at,
        "error": stream.error,
        "frames": len(stream.frames),
        "bytes": sum(len(frame.encode()) for _, frame in stream.frames),
        "first_frame_at": times[0] if times else None,
        "last_frame_at": times[-1] if times else None,
        "first_seen": first_seen,  # per token number - 1: when it first reached the client
        "shown": shown,  # token numbers in the order the page shows them
        "final": final,  # token numbers of the final message element (None: never came)
        "status": status,
        "snapshots": snapshots,
    }


# --- direct: the upstream's SSE stream, read the way the site reads it -------------------


async def read_direct(client: httpx.AsyncClient, spec: dict, stream: Received) -> None:
    body = {
        "model": spec["model"],
        "messages": [{"role": "user", "content": f"{stream.name} go"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    stream.sent_at = time.monotonic()
    try:
        url = spec["base_url"] + "/chat/completions"
        async with client.stream("POST", url, json=body) as response:
            async for line in response.aiter_lines():
                if line:
                    stream.frames.append((time.monotonic(), line))
                if line == "data: [DONE]":
                    return
        stream.error = "the stream ended without [DONE]"
    except httpx.HTTPError as error:
        stream.error = f"{type(error).__name__}: {error}"


async def run_direct(spec: dict) -> dict:
    streams = [Received(stream["name"]) for stream in spec["streams"]]
    limits = httpx.Limits(max_connections=len(streams) + 10)
    timeout = httpx.Timeout(spec["timeout"], connect=30)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        # One request first, as the site's long-lived client has made many.
        (await client.get(spec["base_url"] + "/models")).raise_for_status()
        cpu, started = cpu_seconds(), time.monotonic()
        async with asyncio.timeout(spec["timeout"]):
            await asyncio.gather(*(read_direct(client, spec, stream) for stream in streams))
        ended, cpu = time.monotonic(), cpu_seconds() - cpu
    return {
        "started": started,
        "ended": ended,
        "cpu_seconds": cpu,
        "streams": [summarize_direct(stream, spec["tokens"]) for stream in streams],
    }


def summarize_direct(stream: Received, tokens: int) -> dict:
    first_seen: list[float | None] = [None] * tokens
    text, events = [], []
    for arrived, line in stream.frames:
        if not line.startswith("data: {"):
            continue
        events.append((arrived, line))
        for choice in json.loads(line[6:]).get("choices") or []:
            content = (choice.get("delta") or {}).get("content") or ""
            text.append(content)
            note_first_seen(first_seen, content, arrived)
    stream.frames = events  # SSE events are what the direct path's "frames" are
    shown = [int(number) for number in TOKEN.findall("".join(text))]
    status = "complete" if not stream.error else "failed"
    return summary(stream, first_seen, shown, shown, status)


# --- idle: many open sockets ------------------------------------------------------------


async def run_idle(spec: dict) -> dict:
    url, targets, count = spec["url"], spec["targets"], spec["count"]
    sockets, errors = [], collections.Counter()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(index: int) -> None:
        target = targets[index % len(targets)]
        async with gate:
            try:
                sockets.append(await open_socket(url, target["path"], target["cookie"], 60))
            except (OSError, TimeoutError, websockets.WebSocketException) as error:
                errors[f"{type(error).__name__}: {error}"[:120]] += 1

    started = time.monotonic()
    await asyncio.gather(*(connect(index) for index in range(count)))
    connected = time.monotonic()
    await asyncio.sleep(spec["hold"])
    open_at_end = sum(1 for socket in sockets if socket.state is State.OPEN)
    probe_ms = await probe(sockets[: spec["probes"]])
    held = time.monotonic()
    async with asyncio.timeout(CLOSE_TIMEOUT + count / 500):
        await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
    return {
        "started": started,
        "connected": connected,
        "held": held,
        "opened": len(sockets),
        "open_at_end": open_at_end,
        "errors": dict(errors),
        "probe_ms": probe_ms,
    }


async def probe(sockets) -> list[float]:
    """Round trips while the sockets are open: an unknown action, answered with a notice."""
    times = []
    for socket in sockets:
        if socket.state is not State.OPEN:
            continue
        sent = time.monotonic()
        try:
            async with asyncio.timeout(10):
                await socket.send(json.dumps({"action": "bench-probe"}))
                while not is_notice(await socket.recv()):
                    pass
        except (TimeoutError, websockets.ConnectionClosed):
            continue
        times.append((time.monotonic() - sent) * 1000)
    return times


def main() -> None:
    mode, spec_path, out_path = sys.argv[1:4]
    raise_open_files_limit()
    spec = json.loads(Path(spec_path).read_text())
    run = {"site": run_site, "direct": run_direct, "idle": run_idle}[mode]
    result = asyncio.run(run(spec))
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
