"""CPU the site spends per SSE chunk it reads from an upstream: ``stream_chat`` (the
function the reply task reads a reply with) over loopback, N streams at once.

A server process (``--serve``) streams ``--chunks`` chat.completion chunks to every open
request at ``--rate`` a second, in OpenAI's shape (one word of ``delta.content`` each,
``logprobs: null``), then the finish, usage and ``[DONE]`` chunks. Each variant runs in a
client process of its own (``--client``), which reads ``--streams`` replies at once and
reports its own ``time.process_time`` (user + system CPU of that process only, not wall
time: the machine is shared) divided by the content chunks it received. ``parse only``
feeds the same bytes straight to ``StreamParser``, one chunk at a time, without HTTP.

Variants: the code of this tree, and with ``--before REV`` the code of that commit
(``git archive``, read only); the site's client (``upstream.new_client()``, or the one
``CHAT_UPSTREAM_CLIENT`` names: httpcore on the site's asyncio sockets since 568a034),
``--httpcore`` (httpx's own transport on its default anyio sockets) or
``--aiohttp`` (httpx-aiohttp's transport); asyncio's event loop or ``--uvloop``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PHASES = 10

WORDS = (
    " The",
    " stream",
    " arrives",
    " one",
    " token",
    " at",
    " a",
    " time,",
    " and",
    " each",
    " is",
    " shown",
    " as",
    " soon",
    " as",
    " it",
    " comes.\n\n",
    " Caf\u00e9",
    " na\u00efve",
    " \u2014",
)


def event(delta: dict | None, finish_reason=None, **extra) -> bytes:
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    )
    payload = {
        "id": "chatcmpl-bench0123456789",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "bench-model",
        "system_fingerprint": "fp_bench",
        "choices": choices,
        **extra,
    }
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def events(chunks: int) -> list[bytes]:
    """One reply's SSE events, as a server writes them."""
    usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
    return [
        event({"role": "assistant", "content": ""}),
        *(event({"content": WORDS[n % len(WORDS)]}) for n in range(chunks)),
        event({}, "stop"),
        event(None, usage=usage),
        b"data: [DONE]\n\n",
    ]


# --- the server ---------------------------------------------------------------------------


class _Exchange(asyncio.Protocol):
    """One request; answered with a chunked event stream that the ticker writes."""

    def __init__(self, streaming: set, body: list[bytes], phase: int):
        self.streaming, self.body, self.next, self.phase = streaming, body, 0, phase
        self.head, self.transport = b"", None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            return  # the rest of a request body, not read
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.head = None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n"
            )
            self.streaming.add(self)

    def connection_lost(self, exc) -> None:
        self.streaming.discard(self)

    def write_next(self) -> None:
        data = self.body[self.next]
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.next += 1
        if self.next == len(self.body):
            self.transport.write(b"0\r\n\r\n")
            self.transport.close()
            self.streaming.discard(self)


async def serve(rate: float, chunks: int) -> None:
    streaming: set[_Exchange] = set()
    body = events(chunks)
    loop = asyncio.get_running_loop()
    phases = itertools.cycle(range(PHASES))
    server = await loop.create_server(
        lambda: _Exchange(streaming, body, next(phases)), "127.0.0.1", 0
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    # One ticker for every stream: each gets its next chunk every 1/rate s, in one of
    # PHASES groups spread over that period, as replies that did not start at once.
    period, tick, phase = 1 / rate / PHASES, time.monotonic(), 0
    while True:
        tick += period
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
        phase = (phase + 1) % PHASES
        for exchange in [each for each in streaming if each.phase == phase]:
            exchange.write_next()


# --- a client process ---------------------------------------------------------------------


def new_client(transport: str):
    import httpx

    from conversations import upstream

    if transport == "site":  # as the site reads, CHAT_UPSTREAM_CLIENT included
        return upstream.new_client(os.environ.get("CHAT_UPSTREAM_CLIENT") or "httpcore")
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    if transport == "httpcore":
        return upstream.new_client("anyio")
    from httpx_aiohttp import AiohttpTransport

    return httpx.AsyncClient(transport=AiohttpTransport(limits=limits), follow_redirects=False)


async def read_replies(url: str, streams: int, transport: str) -> dict:
    from conversations import upstream
    from conversations.upstream import client as http_side

    reads = 0

    class CountingParser(http_side.StreamParser):
        """Counts the reads: a loaded machine merges chunks into fewer, which costs less."""

        def feed(self, chunk):
            nonlocal reads
            reads += 1
            return super().feed(chunk)

    http_side.StreamParser = CountingParser
    client = new_client(transport)
    messages = [{"role": "user", "content": "Tell me about streams."}]

    async def one() -> int:
        received = 0
        replies = upstream.stream_chat(url, client=client, model="bench-model", messages=messages)
        async for item in replies:
            if isinstance(item, upstream.TextDelta):
                received += 1
        return received

    cpu, wall = time.process_time(), time.perf_counter()
    received = await asyncio.gather(*(one() for _ in range(streams)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await client.aclose()
    return {"cpu": cpu, "wall": wall, "chunks": sum(received), "reads": reads}


def parse_only(chunks: int, total: int) -> dict:
    """``StreamParser`` alone, fed one event per call, ``total`` content chunks in all."""
    from conversations.upstream.parse import StreamParser

    body = events(chunks)
    replies = max(1, total // chunks)
    received = 0
    cpu = time.process_time()
    for _ in range(replies):
        parser = StreamParser()
        for data in body:
            for _event in parser.feed(data):
                received += 1
        for _event in parser.close():
            received += 1
    cpu = time.process_time() - cpu
    return {"cpu": cpu, "chunks": replies * chunks}


def client_main(args) -> None:
    sys.path.insert(0, args.source)
    if args.parse_only:
        result = parse_only(args.chunks, args.parse_total)
    else:
        transport = "httpx-aiohttp" if args.aiohttp else "httpcore" if args.httpcore else "site"
        run = read_replies(args.url, args.streams, transport)
        if args.uvloop:
            import uvloop

            result = uvloop.run(run)
        else:
            result = asyncio.run(run)
    import conversations

    result["code"] = conversations.__file__  # which tree was measured
    print(json.dumps(result))


# --- the bench: server, then one client process per variant and repeat ---------------------


def variants(args, before: str | None) -> list[tuple[str, list[str]]]:
    """(label, client arguments) for every row of the table."""
    here = ["--source", str(ROOT)]
    rows = []
    if before:
        rows.append((f"{args.before}, its client, asyncio", ["--source", before]))
    rows.append(("this tree, the site's client, asyncio", here))
    if args.httpcore:
        rows.append(("this tree, httpcore on anyio, asyncio", [*here, "--httpcore"]))
    if args.aiohttp:
        rows.append(("this tree, httpx-aiohttp, asyncio", [*here, "--aiohttp"]))
    if args.uvloop:
        rows.append(("this tree, the site's client, uvloop", [*here, "--uvloop"]))
    if args.httpcore and args.uvloop:
        rows.append(("this tree, httpcore on anyio, uvloop", [*here, "--httpcore", "--uvloop"]))
    return rows


def run_client(arguments: list[str]) -> dict:
    command = [sys.executable, __file__, "--client", *arguments]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(arguments)} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def bench_main(args) -> None:
    with tempfile.TemporaryDirectory() as folder:
        before = None
        if args.before:
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.before, "conversations"],
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
            before = folder
        rows = variants(args, before)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", f"--rate={args.rate}", f"--chunks={args.chunks}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            url = f"http://127.0.0.1:{server.stdout.readline().strip()}/v1"
            common = [f"--url={url}", f"--streams={args.streams}", f"--chunks={args.chunks}"]
            parse_total = f"--parse-total={args.parse_total}"
            figures: dict[str, dict[str, list]] = {label: {} for label, _ in rows}
            for repeat in range(args.repeat):  # interleaved: drift hits every variant alike
                for label, arguments in rows:
                    stream = run_client([*arguments, *common])
                    expected = args.streams * args.chunks
                    if stream["chunks"] != expected:
                        raise RuntimeError(f"{label}: {stream['chunks']} chunks of {expected}")
                    found = figures[label]
                    found.setdefault("stream", []).append(stream)
                    if not {"--aiohttp", "--httpcore", "--uvloop"} & set(arguments):
                        parsed = run_client([*arguments, *common, "--parse-only", parse_total])
                        found.setdefault("parse", []).append(parsed)
                    merged = stream["chunks"] / stream["reads"]
                    print(f"{repeat + 1}: {label}: {per_chunk(stream):.1f} µs, {merged:.2f}/read")
        finally:
            server.terminate()
            server.wait()
    print_table(args, figures)


def per_chunk(result: dict) -> float:
    return result["cpu"] / result["chunks"] * 1e6


def print_table(args, figures: dict[str, dict[str, list]]) -> None:
    ideal = args.chunks / args.rate
    print(
        f"\n{args.streams} streams x {args.chunks} chunks at {args.rate:g}/s, "
        f"best / median of {args.repeat}, µs of client CPU per content chunk "
        f"(load average {os.getloadavg()[0]:.2f})\n"
    )
    print(
        "| variant | stream_chat over loopback | chunks per read | client CPU "
        "| wall (ideal) | parse only |"
    )
    print("|---|---|---|---|---|---|")
    for label, found in figures.items():
        streams = sorted(found["stream"], key=per_chunk)
        stream = streams[len(streams) // 2]
        share = stream["cpu"] / stream["wall"] * 100
        parse = ""
        if "parse" in found:
            costs = sorted(per_chunk(result) for result in found["parse"])
            parse = f"{costs[0]:.1f} / {statistics.median(costs):.1f}"
        best, median = per_chunk(streams[0]), statistics.median(map(per_chunk, streams))
        print(
            f"| {label} | {best:.1f} / {median:.1f} | {stream['chunks'] / stream['reads']:.2f} "
            f"| {share:.0f}% "
            f"| {stream['wall']:.1f} s ({ideal:.1f} s) | {parse} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--chunks", type=int, default=1000, help="content chunks per stream")
    parser.add_argument("--rate", type=float, default=100.0, help="chunks per second per stream")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", metavar="REV", help="also measure the code of this commit")
    parser.add_argument("--aiohttp", action="store_true", help="also with httpx-aiohttp")
    parser.add_argument("--httpcore", action="store_true", help="also httpx's own sockets")
    parser.add_argument("--uvloop", action="store_true", help="also with uvloop")
    parser.add_argument(
        "--smoke", action="store_true", help="10 streams x 200 chunks, once: a quick check"
    )
    parser.add_argument("--parse-total", type=int, default=200_000, help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parse-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", default=str(ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.rate, args.chunks))
    elif args.client:
        client_main(args)
    else:
        if args.smoke:
            args.streams, args.chunks, args.repeat, args.parse_total = 10, 200, 1, 20_000
        bench_main(args)


if __name__ == "__main__":
    main()
