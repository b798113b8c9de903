"""The offline demo model: a scripted OpenAI-compatible chat-completions server.

It is not a language model. It answers every message with a fixed, labelled
reply, streamed word by word over Server-Sent Events on loopback HTTP, so the
site runs exactly the code path it runs against a real provider (SSE chunks,
``stream_options.include_usage``, tool calls when the request offers tools).
Offered the site's built-in tools, it calls them for "what time is it?" or
"calculate 2**10", then answers from the results the site sends back.

The HTTP server underneath (:class:`ChatCompletionsServer`) takes any handler,
which is how the tests script faults: cut streams, error objects, byte-by-byte
writes, stalls. No Django imports here.

Run it on its own (the benchmark does)::

    python -m conversations.demo --port 8001 --rate 200 --tokens 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

DEMO_MODEL = "demo"
DEMO_LABEL = "Demo model (scripted, not a language model)"

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

MAX_BODY = 32 * 1024 * 1024


@dataclass
class Exchange:
    """One HTTP request and the means to answer it, chunk by chunk."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    writer: asyncio.StreamWriter
    started: bool = False
    chunked: bool = True
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def json(self):
        return json.loads(self.body or b"{}")

    async def start(
        self,
        status: int = 200,
        content_type: str = "text/event-stream",
        headers: dict[str, str] | None = None,
        chunked: bool = True,
    ) -> None:
        """Send the status line and headers. ``chunked=False`` ends the body at close."""
        self.started = True
        self.chunked = chunked
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        lines.append(f"Content-Type: {content_type}")
        lines.append("Cache-Control: no-cache")
        lines.append("Connection: close")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self.writer.drain()

    async def write(self, data: bytes | str) -> None:
        """Send bytes as they are (one HTTP chunk when chunked)."""
        if isinstance(data, str):
            data = data.encode()
        if not data:
            return
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.writer.write(data)
        await self.writer.drain()

    async def send_event(self, payload) -> None:
        """Send one SSE event whose data is ``payload`` as JSON (or a literal string)."""
        data = payload if isinstance(payload, str) else json.dumps(payload)
        await self.write(f"data: {data}\n\n")

    async def finish(self) -> None:
        """End the body properly (the terminating chunk) and close."""
        if self.chunked:
            self.writer.write(b"0\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()
        self.writer.close()

    def abort(self) -> None:
        """Drop the connection without ending the body: a cut stream."""
        transport = self.writer.transport
        if transport is not None:
            transport.abort()

    async def respond_json(self, status: int, payload, headers: dict[str, str] | None = None):
        body = json.dumps(payload).encode()
        head = {"Content-Length": str(len(body)), **(headers or {})}
        await self.start(status, "application/json", head, chunked=False)
        self.writer.write(body)
        await self.writer.drain()
        self.writer.close()


Handler = Callable[[Exchange], Awaitable[None]]


class ChatCompletionsServer:
    """A small HTTP/1.1 server on loopback that hands each request to ``handler``.

    Every exchange is recorded in ``exchanges``; ``exchange.disconnected`` is
    set when the client closes its side, which is how tests observe that a
    stop really closed the upstream request.
    """

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ):
        self.handler = handler
        self.host = host
        self.port = port
        self.tls = tls  # serves https with this context
        self.exchanges: list[Exchange] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}/v1"

    async def start(self) -> ChatCompletionsServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            exchange = await self._read_request(reader, writer)
            if exchange is None:
                writer.close()
                return
            self.exchanges.append(exchange)
            watcher = asyncio.create_task(self._watch_disconnect(reader, exchange))
            try:
                await self.handler(exchange)
            except (ConnectionError, asyncio.CancelledError):
                exchange.disconnected.set()
            finally:
                watcher.cancel()
                if not writer.is_closing():
                    if exchange.started:
                        await exchange.finish()
                    else:
                        writer.close()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            writer.close()
        except asyncio.CancelledError:
            writer.close()  # cancelled (the server closing) before a request was read
            raise
        finally:
            self._tasks.discard(task)

    @staticmethod
    async def _watch_disconnect(reader: asyncio.StreamReader, exchange: Exchange) -> None:
        # The client sends nothing after its request, so EOF means it hung up.
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):
                pass
        exchange.disconnected.set()

    @staticmethod
    async def _read_request(reader, writer) -> Exchange | None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        if not request_line:
            return None
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if length > MAX_BODY:
            raise ValueError("request body too large")
        body = await reader.readexactly(length) if length else b""
        return Exchange(method, path.split("?", 1)[0], headers, body, writer)


# --- the demo model ----------------------------------------------------------

DEMO_REPLY = """\
This is the **offline demo model**: a scripted server that streams a fixed reply, \
not a language model. Point `OPENAI_BASE_URL` at a real OpenAI-compatible server \
(OpenAI, Ollama, llama.cpp, vLLM) to chat with one.

You wrote:

> {echo}

While you wait, here is what a streamed reply looks like:

1. Every word you see arrived as its own chunk over Server-Sent Events.
2. Reload the page while it streams: the reply keeps going.
3. Nothing is written to the database per word; the reply is stored once when it ends.

```python
def greet(name):
    return f"Hello, {{name}}!"
```

| piece | job |
|---|---|
| `upstream/` | reads the stream |
| `replies.py` | coalesces, publishes, stores |
"""

DEMO_REASONING = """\
The message reads: "{echo}". I am the offline demo model, not a language model, so \
I should say so first, quote the message back, and show what a streamed reply looks like.\
"""

WORDS = re.compile(r"\s*\S+|\s+")


def demo_reply_text(user_text: str, min_tokens: int = 0) -> str:
    echo = " ".join(user_text.split())[:300] or "(an empty message)"
    text = DEMO_REPLY.format(echo=echo)
    if min_tokens:
        filler = " Padding word for a long demo reply."
        while len(WORDS.findall(text)) < min_tokens:
            text += filler
    return text


def demo_title(messages: list) -> str | None:
    """A request whose system message asks for a title gets one: the first user message's
    first words. None for any other request."""
    asked = any(
        m.get("role") == "system" and "title" in _text(m.get("content")).lower() for m in messages
    )
    if not asked:
        return None
    first = next((_text(m.get("content")) for m in messages if m.get("role") == "user"), "")
    title = " ".join(first.split()[:5])
    return title[:1].upper() + title[1:] if title else "Demo conversation"


def demo_reasoning_text(user_text: str) -> str:
    """What the demo "thinks" before its reply (streamed as ``delta.reasoning``)."""
    return DEMO_REASONING.format(echo=" ".join(user_text.split())[:60] or "(empty)")


def split_tokens(text: str) -> list[str]:
    """Words with their leading spaces: the demo's idea of a token."""
    return WORDS.findall(text)


def chunk(
    completion_id: str, model: str, delta: dict | None = None, finish_reason=None, **extra
) -> dict:
    choices = []
    if delta is not None or finish_reason is not None:
        choices = [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}]
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }


def _text(content) -> str:
    """A message's content as text (a string, or a list of content parts)."""
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def _last_user_text(messages: list) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text(message.get("content"))
    return ""


# --- tool calls: the site's built-in tools -----------------------------------

TIME_TOOL = "builtin__current_time"
CALC_TOOL = "builtin__calculate"

TIME_ZONES = {
    "new york": "America/New_York",
    "los angeles": "America/Los_Angeles",
    "san francisco": "America/Los_Angeles",
    "chicago": "America/Chicago",
    "toronto": "America/Toronto",
    "sao paulo": "America/Sao_Paulo",
    "são paulo": "America/Sao_Paulo",
    "london": "Europe/London",
    "paris": "Europe/Paris",
    "berlin": "Europe/Berlin",
    "madrid": "Europe/Madrid",
    "rome": "Europe/Rome",
    "moscow": "Europe/Moscow",
    "dubai": "Asia/Dubai",
    "delhi": "Asia/Kolkata",
    "mumbai": "Asia/Kolkata",
    "beijing": "Asia/Shanghai",
    "shanghai": "Asia/Shanghai",
    "hong kong": "Asia/Hong_Kong",
    "singapore": "Asia/Singapore",
    "tokyo": "Asia/Tokyo",
    "sydney": "Australia/Sydney",
    "utc": "UTC",
    "gmt": "UTC",
}

_TIME_QUESTION = re.compile(
    r"\bwhat(?:['\u2019]s|\s+is)?\s+(?:the\s+)?(?:current\s+)?(?:time|date|day)\b"
    r"|\b(?:which|what)\s+day\b|\bday\s+is\s+it\b|\btime\s+(?:is\s+it|now|in)\b"
    r"|\b(?:current|today['\u2019]?s)\s+(?:time|date|day)\b|\bdate\s+today\b",
    re.IGNORECASE,
)
_IANA_ZONE = re.compile(r"\b[A-Z][A-Za-z_]+(?:/[A-Z][A-Za-z_+-]+)+")
_CALC_CUE = re.compile(
    r"\b(?:calculate|calc|compute|evaluate|solve|what(?:['\u2019]s|\s+is)|how\s+much\s+is)\b",
    re.IGNORECASE,
)
_MATH_NAMES = (
    "sqrt|cbrt|exp|log10|log2|log|ln|asin|acos|atan2|atan|sinh|cosh|tanh|sin|cos|tan"
    "|degrees|radians|hypot|floor|ceil|round|abs|min|max|factorial|pi|tau|e"
)
# A run of numbers, math names, operators, parentheses, commas and spaces.
_EXPRESSION = re.compile(
    rf"(?:\d+(?:\.\d+)?(?:e[-+]?\d+)?|\.\d+|\b(?:{_MATH_NAMES})\b|\*\*|//|[-+*/%^\u00d7\u00f7(),]|\s)+",
    re.IGNORECASE,
)
_OPERATION = re.compile(r"[\w).]\s*(?:\*\*|//|[-+*/%])\s*[\w(.]|\w\s*\(")


def wants_time(text: str) -> bool:
    """Whether ``text`` asks for the time, the date or the day."""
    return bool(_TIME_QUESTION.search(text))


def time_zone_in(text: str) -> str | None:
    """The IANA zone ``text`` names, directly ("Europe/Paris") or by city ("Tokyo")."""
    if match := _IANA_ZONE.search(text):
        return match.group()
    lowered = text.lower()
    for place, zone in TIME_ZONES.items():
        if re.search(rf"\b{re.escape(place)}\b", lowered):
            return zone
    return None


def expression_in(text: str) -> str | None:
    """The arithmetic expression ``text`` asks to work out, if there is one."""
    for match in _EXPRESSION.finditer(text):
        expression = _tidy_expression(match.group())
        if re.search(r"\d", expression) and _OPERATION.search(expression):
            whole = text.strip().rstrip("?=.! ") == match.group().strip()
            return expression if whole or _CALC_CUE.search(text) else None
    return None


def _tidy_expression(run: str) -> str:
    run = run.replace("^", "**").replace("\u00d7", "*").replace("\u00f7", "/")
    run = run.strip(" \t\n,").lstrip(")*/%").rstrip("(+-*/%,").strip()
    kept, depth = [], 0  # drop unmatched ")", close unclosed "("
    for char in run:
        if char == ")" and depth == 0:
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        kept.append(char)
    return "".join(kept).strip() + ")" * depth


def offered_functions(tools: list, tool_choice=None) -> list[str]:
    """The function names the request lets the model call."""
    if tool_choice == "none":
        return []
    names = [(t.get("function") or {}).get("name") for t in tools if isinstance(t, dict)]
    if isinstance(tool_choice, dict):  # a forced function
        forced = (tool_choice.get("function") or {}).get("name")
        names = [name for name in names if name == forced]
    return [name for name in names if name]


def requested_tool_calls(text: str, offered: list[str]) -> list[tuple[str, dict]]:
    """The built-in tool calls ``text`` asks for, among the ``offered`` function names."""
    calls = []
    if TIME_TOOL in offered and wants_time(text):
        zone = time_zone_in(text)
        calls.append((TIME_TOOL, {"timezone": zone} if zone else {}))
    if CALC_TOOL in offered and (expression := expression_in(text)):
        calls.append((CALC_TOOL, {"expression": expression}))
    if not calls and offered and "tool" in text.lower():
        # Asked for "a tool" by name: a harmless call to show the round trip.
        if TIME_TOOL in offered:
            calls.append((TIME_TOOL, {}))
        else:
            calls.append((offered[0], {"query": text[:100]}))
    return calls


def tool_call_preamble(calls: list[tuple[str, dict]]) -> str:
    """The short sentence the demo says before calling tools ("" for other tools)."""
    phrases = {TIME_TOOL: "check the clock", CALC_TOOL: "work that out"}
    said = [phrases[name] for name, _ in calls if name in phrases]
    return f"Let me {' and '.join(said)}." if said else ""


def tool_results(messages: list) -> list[tuple[str, dict, str]]:
    """(function name, arguments, result) of the tool messages that end ``messages``.

    Results are matched to the calls of the assistant message before them by
    ``tool_call_id``; a result without its call has an empty name.
    """
    trailing, calls = [], {}
    for message in reversed(messages):
        if message.get("role") != "tool":
            if message.get("role") == "assistant":
                calls = {
                    c.get("id"): c.get("function") or {} for c in message.get("tool_calls") or []
                }
            break
        trailing.append(message)
    results = []
    for message in reversed(trailing):
        function = calls.get(message.get("tool_call_id"), {})
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except (TypeError, ValueError):
            arguments = {}
        arguments = arguments if isinstance(arguments, dict) else {}
        results.append((function.get("name") or "", arguments, _text(message.get("content"))))
    return results


def _failure(result: str) -> str | None:
    """How a tool result says the call failed: "error", "denied", "not run", or None."""
    lowered = result.strip().lower()
    if lowered.startswith("error"):
        return "error"
    first_sentence = lowered.split(".", 1)[0]  # the site's notes say it first
    if "denied" in first_sentence:
        return "denied"
    if any(word in first_sentence for word in ("not run", "interrupted", "stopped")):
        return "not run"
    return None


def tool_answer_text(results: list[tuple[str, dict, str]]) -> str:
    """The demo's answer from what its tool calls returned."""
    return "\n\n".join(_tool_answer(*result) for result in results) or (
        "The tools gave no results."
    )


def _tool_answer(name: str, arguments: dict, result: str) -> str:
    result = result.strip()
    expression = str(arguments.get("expression", ""))
    purpose = {TIME_TOOL: "tell you the time", CALC_TOOL: f"calculate `{expression}`"}
    failure = _failure(result)
    if failure in ("denied", "not run"):
        verb = "was denied" if failure == "denied" else "did not run"
        return f"The tool call {verb}, so I cannot {purpose.get(name, 'answer that')}."
    if failure == "error":
        detail = re.sub(r"^error\s*:?\s*", "", result, flags=re.IGNORECASE).rstrip(".")
        detail = detail or "it gave no reason"
        if name == CALC_TOOL:
            return f"The calculator could not do that: {detail}."
        if name == TIME_TOOL:
            return f"The clock could not tell the time: {detail}."
        return f"The tool `{name or 'call'}` failed: {detail}."
    if name == TIME_TOOL:
        return f"The current time is {result}."
    if name == CALC_TOOL:
        return f"`{expression}` = {result}"
    shown = result if len(result) <= 1000 else result[:1000] + "…"
    return f"The tool `{name or 'call'}` returned:\n\n{shown}"


TOOL_REASONING = "The tool results are in; I should report them plainly."


@dataclass
class DemoModel:
    """Answers chat-completion requests the way a real server streams them."""

    tokens_per_second: float = 60.0
    min_tokens: int = 0
    reasoning: bool = True  # think briefly (``delta.reasoning``) before answering

    async def __call__(self, exchange: Exchange) -> None:
        if exchange.method == "GET" and exchange.path.endswith("/models"):
            models = {"object": "list", "data": [{"id": DEMO_MODEL, "object": "model"}]}
            await exchange.respond_json(200, models)
            return
        if exchange.method != "POST" or not exchange.path.endswith("/chat/completions"):
            await exchange.respond_json(404, {"error": {"message": "Not found"}})
            return
        try:
            request = exchange.json
            messages = list(request["messages"])
        except (ValueError, KeyError, TypeError):
            error = {"message": "Invalid request body", "type": "invalid_request_error"}
            await exchange.respond_json(400, {"error": error})
            return
        model = request.get("model") or DEMO_MODEL
        user_text = _last_user_text(messages)
        prompt_tokens = sum(len(split_tokens(_text(m.get("content")))) for m in messages)
        after_tools = bool(messages) and messages[-1].get("role") == "tool"
        if not request.get("stream"):
            text = tool_answer_text(tool_results(messages)) if after_tools else demo_title(messages)
            await self._respond_whole(exchange, model, user_text, prompt_tokens, text)
            return
        calls = []
        if after_tools:  # never call again here: answer from the results
            thinking = split_tokens(TOOL_REASONING) if self.reasoning else []
            answer = split_tokens(tool_answer_text(tool_results(messages)))
        else:
            offered = offered_functions(request.get("tools") or [], request.get("tool_choice"))
            calls = requested_tool_calls(user_text, offered)
            if calls:
                thinking, answer = [], split_tokens(tool_call_preamble(calls))
            else:
                thinking = split_tokens(demo_reasoning_text(user_text)) if self.reasoning else []
                answer = split_tokens(demo_reply_text(user_text, self.min_tokens))
        deltas = [{"reasoning": t} for t in thinking] + [{"content": t} for t in answer]
        deltas += tool_call_deltas(calls)
        finish = "tool_calls" if calls else "stop"

        cid = f"chatcmpl-demo-{uuid.uuid4().hex[:12]}"
        await exchange.start()
        await exchange.send_event(chunk(cid, model, {"role": "assistant", "content": ""}))
        delay = 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0
        started = time.monotonic()
        for sent, delta in enumerate(deltas, 1):
            # Pace against the clock so the rate holds whatever each write costs.
            wait = started + sent * delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await exchange.send_event(chunk(cid, model, delta))
        await exchange.send_event(chunk(cid, model, {}, finish))
        if (request.get("stream_options") or {}).get("include_usage"):
            tokens = len(deltas)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            }
            if thinking:
                usage["completion_tokens_details"] = {"reasoning_tokens": len(thinking)}
            await exchange.send_event(chunk(cid, model, usage=usage))
        await exchange.send_event("[DONE]")

    async def _respond_whole(self, exchange, model, user_text, prompt_tokens, text=None):
        text = text or demo_reply_text(user_text, self.min_tokens)
        tokens = len(split_tokens(text))
        body = {
            "id": f"chatcmpl-demo-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            },
        }
        await exchange.respond_json(200, body)


def tool_call_deltas(calls: list[tuple[str, dict]]) -> list[dict]:
    """The ``delta.tool_calls`` a real server streams for ``calls``: for each, a head
    (index, id, name, empty arguments), then the arguments JSON in two pieces."""
    deltas = []
    for index, (name, arguments) in enumerate(calls):
        head = {"index": index, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "function"}
        head["function"] = {"name": name, "arguments": ""}
        deltas.append({"tool_calls": [head]})
        text = json.dumps(arguments)
        for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    return deltas


class ServerThread:
    """Runs a :class:`ChatCompletionsServer` on its own event loop in a daemon thread.

    For callers without a running loop of their own: the site's default
    upstream when ``OPENAI_BASE_URL`` is unset, and the tests.
    """

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0):
        self.server = ChatCompletionsServer(handler, host, port)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chat-upstream", daemon=True)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the upstream server did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self._ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self.server.close(), self.loop)
        with contextlib.suppress(Exception):
            future.result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the offline demo model.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--rate", type=float, default=60.0, help="tokens per second")
    parser.add_argument("--tokens", type=int, default=0, help="pad replies to this many tokens")
    args = parser.parse_args(argv)

    async def serve():
        server = ChatCompletionsServer(DemoModel(args.rate, args.tokens), args.host, args.port)
        await server.start()
        print(f"demo model at {server.base_url}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
