"""Scripted OpenAI-compatible upstreams for the tests, on the project's own loopback server.

Each function returns a handler for :class:`conversations.demo.ChatCompletionsServer`.
"""

import asyncio
import json

from conversations.demo import Exchange, chunk


def tokens(count: int, word: str = "tok") -> list[str]:
    return [f"{word}{i} " for i in range(count)]


def text_stream(
    pieces: list[str],
    *,
    delay: float = 0.0,
    finish_reason: str = "stop",
    usage: bool = True,
    hold: asyncio.Event | None = None,
):
    """Streams ``pieces`` as content deltas, then finish_reason, usage and [DONE].

    ``hold``: wait for this event after the first piece (to act mid-reply).
    """

    async def handler(exchange: Exchange) -> None:
        request = exchange.json
        model = request.get("model", "test-model")
        await exchange.start()
        await exchange.send_event(chunk("c1", model, {"role": "assistant", "content": ""}))
        for index, piece in enumerate(pieces):
            await exchange.send_event(chunk("c1", model, {"content": piece}))
            if index == 0 and hold is not None:
                await hold.wait()
            if delay:
                await asyncio.sleep(delay)
        await exchange.send_event(chunk("c1", model, {}, finish_reason))
        if usage and (request.get("stream_options") or {}).get("include_usage"):
            counts = {"prompt_tokens": 7, "completion_tokens": len(pieces)}
            counts["total_tokens"] = 7 + len(pieces)
            await exchange.send_event(chunk("c1", model, usage=counts))
        await exchange.send_event("[DONE]")

    return handler


def numbered_words(count: int) -> list[str]:
    """Distinct words, so a gap or a duplicate anywhere in a reply shows."""
    return [f"w{i:04d} " for i in range(1, count + 1)]


def paced_words(count: int, tokens_per_second: float):
    """Streams ``numbered_words(count)`` at a steady pace, as a real model would."""

    async def handler(exchange: Exchange) -> None:
        request = exchange.json
        await exchange.start()
        started = asyncio.get_running_loop().time()
        for index, word in enumerate(numbered_words(count)):
            wait = started + index / tokens_per_second - asyncio.get_running_loop().time()
            if wait > 0:
                await asyncio.sleep(wait)
            await exchange.send_event(chunk("c1", "m", {"content": word}))
        await exchange.send_event(chunk("c1", "m", {}, "stop"))
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 3, "completion_tokens": count, "total_tokens": count + 3}
            await exchange.send_event(chunk("c1", "m", usage=usage))
        await exchange.send_event("[DONE]")

    return handler


def text_in_pieces(text: str, size: int = 7, delay: float = 0.002):
    """Streams ``text`` in pieces of ``size`` characters, splitting tags and links apart."""

    async def handler(exchange: Exchange) -> None:
        await exchange.start()
        for start in range(0, len(text), size):
            await exchange.send_event(chunk("c1", "m", {"content": text[start : start + size]}))
            await asyncio.sleep(delay)
        await exchange.send_event(chunk("c1", "m", {}, "stop"))
        await exchange.send_event("[DONE]")

    return handler


def cut_stream(pieces: list[str]):
    """Streams ``pieces`` and then drops the connection: no finish_reason, no [DONE]."""

    async def handler(exchange: Exchange) -> None:
        await exchange.start()
        for piece in pieces:
            await exchange.send_event(chunk("c1", "m", {"content": piece}))
        await asyncio.sleep(0.05)
        exchange.abort()

    return handler


def error_after(pieces: list[str], message: str):
    """Streams ``pieces``, then an error object inside the 200 stream."""

    async def handler(exchange: Exchange) -> None:
        await exchange.start()
        for piece in pieces:
            await exchange.send_event(chunk("c1", "m", {"content": piece}))
        await exchange.send_event({"error": {"message": message, "type": "server_error"}})

    return handler


def status_error(status: int, message: str, headers: dict | None = None):
    """Answers with a non-2xx status and an OpenAI-shaped error body."""

    async def handler(exchange: Exchange) -> None:
        body = {"error": {"message": message, "type": "error"}}
        await exchange.respond_json(status, body, headers)

    return handler


def silent(hold: asyncio.Event):
    """Accepts the request and sends nothing until ``hold`` is set, then a short reply."""

    async def handler(exchange: Exchange) -> None:
        await exchange.start()
        await hold.wait()
        await exchange.send_event(chunk("c1", "m", {"content": "late"}, "stop"))
        await exchange.send_event("[DONE]")

    return handler


def sequence(*handlers):
    """The n-th request gets the n-th handler; the last one answers every request after."""
    count = 0

    async def handler(exchange: Exchange) -> None:
        nonlocal count
        chosen = handlers[min(count, len(handlers) - 1)]
        count += 1
        await chosen(exchange)

    return handler


def tool_call_stream():
    async def handler(exchange: Exchange) -> None:
        await exchange.start()
        call = {"index": 0, "id": "call_1", "type": "function"}
        call["function"] = {"name": "get_weather", "arguments": ""}
        await exchange.send_event(chunk("c1", "m", {"tool_calls": [call]}))
        for piece in ('{"city": ', '"Paris"}'):
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            await exchange.send_event(chunk("c1", "m", delta))
        await exchange.send_event(chunk("c1", "m", {}, "tool_calls"))
        await exchange.send_event("[DONE]")

    return handler


def requests_of(server) -> list[dict]:
    return [json.loads(e.body) for e in server.exchanges if e.body]


def by_message(scenarios: dict, default):
    """Chooses the scenario by the last user message's first word, e.g. "fail-404 please".

    Lets one long-running upstream (the browser tests') play every scenario.
    """

    async def handler(exchange: Exchange) -> None:
        first_word = ""
        if exchange.body:
            messages = exchange.json.get("messages") or []
            users = [m for m in messages if m.get("role") == "user"]
            if users:
                first_word = (str(users[-1].get("content") or "").split() or [""])[0]
        await scenarios.get(first_word, default)(exchange)

    return handler


def reasoning_stream(
    reasoning: list[str],
    answer: list[str],
    *,
    field: str = "reasoning_content",
    delay: float = 0.0,
    hold: asyncio.Event | None = None,
    reasoning_tokens: int | None = None,
):
    """Streams ``reasoning`` pieces in ``delta.<field>`` (content null), then ``answer``.

    ``hold``: wait for this event after the first reasoning piece (to act mid-thought).
    """

    async def handler(exchange: Exchange) -> None:
        request = exchange.json
        await exchange.start()
        for index, piece in enumerate(reasoning):
            await exchange.send_event(chunk("c1", "m", {"content": None, field: piece}))
            if index == 0 and hold is not None:
                await hold.wait()
            if delay:
                await asyncio.sleep(delay)
        for piece in answer:
            await exchange.send_event(chunk("c1", "m", {"content": piece}))
            if delay:
                await asyncio.sleep(delay)
        await exchange.send_event(chunk("c1", "m", {}, "stop"))
        if (request.get("stream_options") or {}).get("include_usage"):
            count = len(reasoning) + len(answer)
            usage = {"prompt_tokens": 5, "completion_tokens": count, "total_tokens": 5 + count}
            if reasoning_tokens is not None:
                usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
            await exchange.send_event(chunk("c1", "m", usage=usage))
        await exchange.send_event("[DONE]")

    return handler


def refuses_stream_options(then):
    """Answers HTTP 400 (as some Azure deployments do) to a request with stream_options."""

    async def handler(exchange: Exchange) -> None:
        if "stream_options" in exchange.json:
            message = "Unrecognized request argument supplied: stream_options"
            error = {"message": message, "type": "invalid_request_error", "param": None}
            await exchange.respond_json(400, {"error": error})
            return
        await then(exchange)

    return handler


def paced_reasoning(thoughts: int, words: int, tokens_per_second: float):
    """Numbered thoughts ``t0001 …`` in ``delta.reasoning`` (vLLM's field), then numbered
    answer words ``w0001 …``, at a steady pace."""

    async def handler(exchange: Exchange) -> None:
        loop = asyncio.get_running_loop()
        await exchange.start()
        pieces = [("reasoning", f"t{i:04d} ") for i in range(1, thoughts + 1)]
        pieces += [("content", word) for word in numbered_words(words)]
        started = loop.time()
        for index, (field, piece) in enumerate(pieces):
            wait = started + index / tokens_per_second - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await exchange.send_event(chunk("c1", "m", {field: piece}))
        await exchange.send_event(chunk("c1", "m", {}, "stop"))
        await exchange.send_event("[DONE]")

    return handler


def tool_rounds_so_far(messages: list[dict]) -> list[list[dict]]:
    """The tool messages of each round since the last user message."""
    since_user = []
    for message in messages:
        since_user = [] if message.get("role") == "user" else [*since_user, message]
    rounds = []
    for message in since_user:
        if message.get("role") == "assistant" and message.get("tool_calls"):
            rounds.append([])
        elif message.get("role") == "tool" and rounds:
            rounds[-1].append(message)
    return rounds


def calls_tools(*rounds: list[tuple[str, str]], before: str = "Let me look. ", split: bool = True):
    """A model that calls tools: the n-th request of a reply asks for ``rounds[n]`` (each
    a list of (function name, arguments JSON)), streamed as real servers do (id and name
    first, the arguments in pieces); once every round is answered, it writes
    "Results: " and each tool message's content, joined by " | ".

    Each request's usage is 10 prompt + 2 completion tokens.
    """

    async def handler(exchange: Exchange) -> None:
        request = exchange.json
        done = tool_rounds_so_far(request.get("messages") or [])
        await exchange.start()
        if len(done) < len(rounds) and request.get("tools"):
            if before:
                await exchange.send_event(chunk("c1", "m", {"content": before}))
            for index, (name, arguments) in enumerate(rounds[len(done)]):
                call = {"index": index, "id": f"call_{len(done)}_{index}", "type": "function"}
                call["function"] = {"name": name, "arguments": ""}
                await exchange.send_event(chunk("c1", "m", {"tool_calls": [call]}))
                half = len(arguments) // 2 if split else len(arguments)
                for piece in (arguments[:half], arguments[half:]):
                    delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                    await exchange.send_event(chunk("c1", "m", delta))
            finish = "tool_calls"
        else:
            results = [m.get("content") or "" for m in (done[-1] if done else [])]
            await exchange.send_event(chunk("c1", "m", {"content": "Results: "}))
            await exchange.send_event(chunk("c1", "m", {"content": " | ".join(results)}))
            finish = "stop"
        await exchange.send_event(chunk("c1", "m", {}, finish))
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
            await exchange.send_event(chunk("c1", "m", usage=usage))
        await exchange.send_event("[DONE]")

    return handler


def refuses_tools(then):
    """Answers HTTP 400 to a request that offers tools, as servers without tool support do."""

    async def handler(exchange: Exchange) -> None:
        if "tools" in exchange.json:
            message = "This model does not support tools"
            await exchange.respond_json(400, {"error": {"message": message}})
            return
        await then(exchange)

    return handler
