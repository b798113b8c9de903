"""The benchmarks' websocket client, in a process of its own (its CPU is not the site's):
``site`` (N websockets, one reply each), ``direct`` (the same streams straight from the
upstream) or ``idle`` (sockets that only stay open), from and to JSON files (run_client).
Frames are only stored with their arrival time (``time.monotonic()``); what the page shows,
and when each numbered token first appeared, is worked out afterwards.
"""

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
from streaming_upstream import TOKEN
from websockets.asyncio.client import connect as ws_connect
from websockets.protocol import State

CONNECT_CONCURRENCY = 100  # handshakes in flight at once


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


def open_socket(url: str, path: str, cookie: str, timeout: float):
    """A websocket the way the conversation page opens it: its own Origin, the session cookie."""
    options = {"origin": url, "additional_headers": {"Cookie": cookie}, "proxy": None}
    options |= {"open_timeout": timeout, "ping_interval": None, "close_timeout": 2}
    options["max_size"] = None
    return ws_connect("ws://" + url.removeprefix("http://") + path, **options)


def is_notice(frame: str) -> bool:
    return 'id="notices"' in frame


async def read_reply(socket, received: Received, seconds: float) -> None:
    """Store frames until the assistant's element arrives in a final state (or a notice)."""
    try:
        async with asyncio.timeout(seconds):
            async for frame in socket:
                received.frames.append((time.monotonic(), frame))
                if 'data-role="assistant"' in frame and 'data-status="streaming"' not in frame:
                    return
                if is_notice(frame):
                    received.error = "refused: " + " ".join(Page().apply(frame).split())
                    return
        received.error = "the socket closed before the reply ended"
    except TimeoutError:
        received.error = f"no final frame within {seconds:.0f} s"
    except websockets.ConnectionClosed as closed:
        received.error = f"the socket closed before the reply ended ({closed})"


async def connect_all(url: str, targets: list[dict], open_timeout: float) -> list:
    """A socket per target (or why not, a string), CONNECT_CONCURRENCY handshakes at a time."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(target: dict):
        async with gate:
            try:
                return await open_socket(url, target["path"], target["cookie"], open_timeout)
            except (OSError, TimeoutError, websockets.WebSocketException) as error:
                return f"{type(error).__name__}: {error}"[:120]

    return await asyncio.gather(*(connect(target) for target in targets))


async def run_site(spec: dict) -> dict:
    streams, live = [Received(stream["name"]) for stream in spec["streams"]], []
    sockets = await connect_all(spec["url"], spec["streams"], 30)
    for stream, socket in zip(streams, sockets, strict=True):
        if isinstance(socket, str):
            stream.error = f"could not connect: {socket}"
        else:
            live.append((socket, stream))
    readers = [asyncio.create_task(read_reply(s, stream, spec["timeout"])) for s, stream in live]

    async def send(socket, stream: Received) -> None:
        stream.sent_at = time.monotonic()
        await socket.send(json.dumps({"action": "send", "content": f"{stream.name} go"}))

    cpu, started = cpu_seconds(), time.monotonic()
    await asyncio.gather(*(send(socket, stream) for socket, stream in live))  # all at once
    await asyncio.gather(*readers)
    ended, cpu = time.monotonic(), cpu_seconds() - cpu
    async with asyncio.timeout(10):
        await asyncio.gather(*(socket.close() for socket, _ in live), return_exceptions=True)
    summaries = [summarize_site(stream, spec["tokens"]) for stream in streams]
    return {"started": started, "ended": ended, "cpu_seconds": cpu, "streams": summaries}


class Page(HTMLParser):
    """The reply as the conversation page shows it, each frame applied as htmx would: appended
    blocks, the tail, a whole turn (a snapshot while it streams, else its end)."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.appended, self.tail, self.final, self.status = [], "", None, "streaming"
        self.snapshots = 0

    def apply(self, frame: str) -> str:
        """Apply one frame; return the text of its top-level elements."""
        self.top: list[tuple[dict, list[str]]] = []  # (attributes, text pieces)
        self.text_of: dict[str, list[str]] = collections.defaultdict(list)  # id -> text pieces
        self.status_of: dict[str, tuple[str, str]] = {}  # id -> (data-role, data-status)
        self.inside: list[tuple[str, str]] = []  # (tag, id) of the elements we are in
        self.reset()
        self.feed(frame)
        self.close()
        for attributes, pieces in self.top:
            swap, element_id = attributes.get("hx-swap-oob", ""), attributes.get("id", "")
            if swap.startswith("beforeend:#message-") and swap.endswith("-text"):
                self.appended.append("".join(pieces))
            elif element_id.startswith("message-") and element_id.endswith("-tail"):
                self.tail = "".join(pieces)
            elif element_id.startswith("turn-"):
                self.turn(f"message-{element_id.removeprefix('turn-')}")
        return "\n".join("".join(pieces) for _, pieces in self.top)

    def turn(self, message: str) -> None:
        role, status = self.status_of.get(message, ("", ""))
        text = self.text_in
        if role == "assistant" and status == "streaming":
            self.appended, self.tail = [text(f"{message}-text")], text(f"{message}-tail")
            self.snapshots += 1
        elif role == "assistant":
            self.final, self.status = text(message), status

    def text_in(self, element_id: str) -> str:
        return "".join(self.text_of.get(element_id, ()))

    def handle_starttag(self, tag, attrs):
        attributes = {name: value or "" for name, value in attrs}
        element_id = attributes.get("id", "")
        if not self.inside:
            self.top.append((attributes, []))
        if "data-status" in attributes and element_id:
            self.status_of[element_id] = (
                attributes.get("data-role", ""),
                attributes["data-status"],
            )
        if tag not in self.VOID:
            self.inside.append((tag, element_id))

    def handle_endtag(self, tag):
        tags = [open_tag for open_tag, _ in self.inside]
        if tag in tags:
            del self.inside[len(tags) - 1 - tags[::-1].index(tag) :]

    def handle_data(self, data):
        if self.top and self.inside:
            self.top[-1][1].append(data)
        for element_id in {element_id for _, element_id in self.inside if element_id}:
            self.text_of[element_id].append(data)


def numbers(text: str) -> list[int]:
    return [int(number) for number in TOKEN.findall(text)]


def note_first_seen(first_seen: list[float | None], text: str, arrived: float) -> None:
    for number in numbers(text):
        if 0 < number <= len(first_seen) and first_seen[number - 1] is None:
            first_seen[number - 1] = arrived


def summarize_site(stream: Received, tokens: int) -> dict:
    page, first_seen = Page(), [None] * tokens
    for arrived, frame in stream.frames:
        note_first_seen(first_seen, page.apply(frame), arrived)
    final = None if page.final is None else numbers(page.final)
    shown = numbers("".join(page.appended) + page.tail)
    return summary(stream, first_seen, shown, final, page.status, page.snapshots)


def summary(stream: Received, first_seen, shown, final, status: str, snapshots=0) -> dict:
    """``first_seen``: per token number - 1, when it first reached the client; ``shown``: the
    token numbers in the order the page shows them; ``final``: those of the final element."""
    times = [arrived for arrived, _ in stream.frames] or [None]
    out = {"name": stream.name, "sent_at": stream.sent_at, "error": stream.error}
    out |= {"frames": len(stream.frames), "bytes": sum(len(f.encode()) for _, f in stream.frames)}
    out |= {"first_frame_at": times[0], "last_frame_at": times[-1], "first_seen": first_seen}
    return out | {"shown": shown, "final": final, "status": status, "snapshots": snapshots}


async def read_direct(client: httpx.AsyncClient, spec: dict, stream: Received) -> None:
    """The upstream's SSE stream, read the way the site reads it."""
    body = {"model": spec["model"], "messages": [{"role": "user", "content": f"{stream.name} go"}]}
    body |= {"stream": True, "stream_options": {"include_usage": True}}
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
    limits, timeout = httpx.Limits(max_connections=len(streams) + 10), spec["timeout"]
    options = {"limits": limits, "timeout": httpx.Timeout(timeout, connect=30), "trust_env": False}
    async with httpx.AsyncClient(**options) as client:
        # One request first, as the site's long-lived client has made many.
        (await client.get(spec["base_url"] + "/models")).raise_for_status()
        cpu, started = cpu_seconds(), time.monotonic()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(read_direct(client, spec, stream) for stream in streams))
        ended, cpu = time.monotonic(), cpu_seconds() - cpu
    summaries = [summarize_direct(stream, spec["tokens"]) for stream in streams]
    return {"started": started, "ended": ended, "cpu_seconds": cpu, "streams": summaries}


def summarize_direct(stream: Received, tokens: int) -> dict:
    first_seen, text = [None] * tokens, []
    stream.frames = [f for f in stream.frames if f[1].startswith("data: {")]  # the SSE events
    for arrived, line in stream.frames:
        for choice in json.loads(line[6:]).get("choices") or []:
            text.append((choice.get("delta") or {}).get("content") or "")
            note_first_seen(first_seen, text[-1], arrived)
    shown = numbers("".join(text))
    return summary(stream, first_seen, shown, shown, "failed" if stream.error else "complete")


async def run_idle(spec: dict) -> dict:
    """Sockets that only stay open; then round trips on a few (an unknown action: a notice)."""
    count, started = spec["count"], time.monotonic()
    targets = [spec["targets"][index % len(spec["targets"])] for index in range(count)]
    sockets = await connect_all(spec["url"], targets, 60)
    errors = collections.Counter(s for s in sockets if isinstance(s, str))
    sockets = [socket for socket in sockets if not isinstance(socket, str)]
    connected = time.monotonic()
    await asyncio.sleep(spec["hold"])
    open_sockets = [socket for socket in sockets if socket.state is State.OPEN]
    probe_ms = []
    for socket in open_sockets[: spec["probes"]]:
        sent = time.monotonic()
        try:
            async with asyncio.timeout(10):
                await socket.send(json.dumps({"action": "bench-probe"}))
                while not is_notice(await socket.recv()):
                    pass
        except (TimeoutError, websockets.ConnectionClosed):
            continue
        probe_ms.append((time.monotonic() - sent) * 1000)
    held = time.monotonic()
    async with asyncio.timeout(10 + count / 500):
        await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
    out = {"started": started, "connected": connected, "held": held, "opened": len(sockets)}
    return out | {"open_at_end": len(open_sockets), "errors": errors, "probe_ms": probe_ms}


def main() -> None:
    mode, spec_path, out_path = sys.argv[1:4]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # each socket is a file
    hard = max(soft, 1_048_576) if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run = {"site": run_site, "direct": run_direct, "idle": run_idle}[mode]
    result = asyncio.run(run(json.loads(Path(spec_path).read_text())))
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
