"""The bench upstream: an OpenAI-compatible server (``conversations.demo``'s) that streams
``--tokens`` numbered tokens ``w000001 w000002 ...`` at ``--rate`` per second, a blank line
after every ``--paragraph``. Per request, named by the ``bench-...`` word of its last user
message, it keeps when the request arrived and when each token was written (CLOCK_MONOTONIC,
the same clock in every process): ``GET /bench/times``; ``POST /bench/reset`` forgets them.
"""

import argparse
import asyncio
import json
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conversations.demo import ChatCompletionsServer, Exchange, chunk

TOKEN = re.compile(r"w(\d{6})")  # a token's number, wherever its text ends up (even glued)
REQUEST_NAME = re.compile(r"\bbench-[\w-]+")


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
        method, path = exchange.method, exchange.path
        if path == "/bench/times":
            await exchange.respond_json(200, self.times)
        elif path == "/bench/reset" and method == "POST":
            self.times.clear()
            if self.server is not None:
                self.server.exchanges.clear()
            await exchange.respond_json(200, {})
        elif method == "GET" and path.endswith("/models"):
            await exchange.respond_json(200, {"object": "list", "data": [{"id": "bench"}]})
        elif method == "POST" and path.endswith("/chat/completions"):
            await self.complete(exchange, time.monotonic())
        else:
            await exchange.respond_json(404, {"error": {"message": "Not found"}})

    def texts(self) -> list[str]:
        """The tokens, each with its separator: a blank line after every ``paragraph``."""
        every = self.paragraph
        ends = ["\n\n" if every and n % every == 0 else " " for n in range(1, self.tokens + 1)]
        return [f"w{n:06d}{end}" for n, end in enumerate(ends, 1)]

    async def complete(self, exchange: Exchange, arrived: float) -> None:
        try:
            request = exchange.json
            users = [m for m in request["messages"] if m.get("role") == "user"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return await exchange.respond_json(400, {"error": {"message": "Invalid request body"}})
        found = REQUEST_NAME.search(str(users[-1].get("content") or "")) if users else None
        sent: list[float] = []
        name = found[0] if found else f"unnamed-{uuid.uuid4().hex[:8]}"
        self.times[name] = {"arrived": arrived, "sent": sent}
        model, cid = request.get("model") or "bench", f"chatcmpl-bench-{uuid.uuid4().hex[:12]}"
        # Encoded before the clock starts, so pacing measures the network, not json.dumps.
        # BENCH_REASONING_TOKENS: the first ones come as a reasoning model's delta.reasoning.
        thinking = int(os.environ.get("BENCH_REASONING_TOKENS") or 0)
        texts = enumerate(self.texts())
        events = [
            sse(chunk(cid, model, {"reasoning" if i < thinking else "content": t}))
            for i, t in texts
        ]
        await exchange.start()
        await exchange.write(sse(chunk(cid, model, {"role": "assistant", "content": ""})))
        delay = 1 / self.tokens_per_second if self.tokens_per_second > 0 else 0
        started = time.monotonic()
        for index, event in enumerate(events):
            # Paced against the clock: a late write is not made up for by the next wait.
            if (wait := started + index * delay - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            sent.append(time.monotonic())
            await exchange.write(event)
        await exchange.write(sse(chunk(cid, model, {}, "stop")))
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 1, "completion_tokens": self.tokens}
            usage["total_tokens"] = 1 + self.tokens
            await exchange.write(sse(chunk(cid, model, usage=usage)))
        await exchange.write(b"data: [DONE]\n\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8401)
    parser.add_argument("--rate", type=float, default=100.0, help="tokens per second per reply")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per reply")
    parser.add_argument("--paragraph", type=int, default=50, help="tokens per paragraph")
    args = parser.parse_args()
    model = BenchModel(args.rate, args.tokens, args.paragraph)

    async def serve() -> None:
        model.server = await ChatCompletionsServer(model, "127.0.0.1", args.port).start()
        print(f"bench upstream at {model.server.base_url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
