"""The scripted upstream of bench/streaming.py: numbered tokens, and when each one left.

An OpenAI-compatible chat-completions server (the loopback server of
``conversations.demo``) that answers every streamed request with ``--tokens``
numbered words, ``w000001 w000002 ...`` with a blank line (a new Markdown
paragraph) after every ``--paragraph`` of them, at ``--rate`` tokens per
second, the first at once. So a client can tell exactly which token reached
it, and when.

A request is named by the ``bench-...`` word in its last user message. For
each name the server keeps, on CLOCK_MONOTONIC (``time.monotonic()``, which is
the same clock in every process on Linux), when the request arrived and when
each token was written to the socket. ``GET /bench/times`` returns them as
JSON; ``POST /bench/reset`` forgets them.

    .venv/bin/python bench/streaming_upstream.py --port 8401 --rate 100 --tokens 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conversations.demo import ChatCompletionsServer, Exchange, chunk  # noqa: E402

MODEL = "bench"
TOKEN = re.compile(r"w(\d{6})")  # a token's number, wherever its text ends up (even glued)
REQUEST_NAME = re.compile(r"\bbench-[\w-]+")
MAX_REQUESTS = 100_000  # times kept at most (the oldest are dropped): bounded memory


def token_text(number: int, paragraph: int) -> str:
    """Token ``number`` (from 1) as the model writes it, with its separator."""
    end_of_paragraph = paragraph and number % paragraph == 0
    return f"w{number:06d}" + ("\n\n" if end_of_paragraph else " ")


def reply_text(tokens: int, paragraph: int) -> str:
    return "".join(token_text(number, paragraph) for number in range(1, tokens + 1))


def request_name(messages: list) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            found = REQUEST_NAME.search(str(message.get("content") or ""))
            return found.group() if found else ""
    return ""


def sse(payload) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


@dataclass
class BenchModel:
    """Streams numbered tokens at a steady rate; records when each was written."""

    tokens_per_second: float = 100.0
    tokens: int = 200
    paragraph: int = 50
    times: dict[str, dict] = field(default_factory=dict)
    server: ChatCompletionsServer | None = None  # its list of exchanges is emptied on reset

    async def __call__(self, exchange: Exchange) -> None:
        path = exchange.path
        if path == "/bench/times":
            await exchange.respond_json(200, self.times)
        elif path == "/bench/reset" and exchange.method == "POST":
            self.times.clear()
            if self.server is not None:
                self.server.exchanges.clear()
            await exchange.respond_json(200, {})
        elif exchange.method == "GET" and path.endswith("/models"):
            await exchange.respond_json(200, {"object": "list", "data": [{"id": MODEL}]})
        elif exchange.method == "POST" and path.endswith("/chat/completions"):
            await self.complete(exchange)
        else:
            await exchange.respond_json(404, {"error": {"message": "Not found"}})

    async def complete(self, exchange: Exchange) -> None:
        arrived = time.monotonic()
        try:
            request = exchange.json
            messages = list(request["messages"])
        except (ValueError, KeyError, TypeError):
            await exchange.respond_json(400, {"error": {"message": "Invalid request body"}})
            return
        name = request_name(messages) or f"unnamed-{uuid.uuid4().hex[:8]}"
        sent: list[float] = []
        self._remember(name, {"arrived": arrived, "sent": sent})

        model = request.get("model") or MODEL
        cid = f"chatcmpl-bench-{uuid.uuid4().hex[:12]}"
        # Encoded before the clock starts, so pacing measures the network, not json.dumps.
        events = [
            sse(chunk(cid, model, {"content": token_text(number, self.paragraph)}))
            for number in range(1, self.tokens + 1)
        ]
        await exchange.start()
        await exchange.write(sse(chunk(cid, model, {"role": "assistant", "content": ""})))
        delay = 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0
        started = time.monotonic()
        for index, event in enumerate(events):
            # Paced against the clock: a late write is not made up for by the next wait.
            wait = started + index * delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            sent.append(time.monotonic())
            await exchange.write(event)
        await exchange.write(sse(chunk(cid, model, {}, "stop")))
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 1, "completion_tokens": self.tokens}
            usage["total_tokens"] = usage["prompt_tokens"] + self.tokens
            await exchange.write(sse(chunk(cid, model, usage=usage)))
        await exchange.write(b"data: [DONE]\n\n")

    def _remember(self, name: str, record: dict) -> None:
        while len(self.times) >= MAX_REQUESTS:
            del self.times[next(iter(self.times))]
        self.times[name] = record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8401)
    parser.add_argument("--rate", type=float, default=100.0, help="tokens per second per reply")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per reply")
    parser.add_argument("--paragraph", type=int, default=50, help="tokens per paragraph")
    parser.add_argument(
        "--lifetime", type=float, default=3600.0, help="exit after this many seconds"
    )
    args = parser.parse_args(argv)
    model = BenchModel(args.rate, args.tokens, args.paragraph)

    async def serve() -> None:
        server = await ChatCompletionsServer(model, args.host, args.port).start()
        model.server = server
        print(f"bench upstream at {server.base_url}", flush=True)
        await asyncio.sleep(args.lifetime)
        await server.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
