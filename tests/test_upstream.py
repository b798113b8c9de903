"""conversations.upstream against the loopback ChatCompletionsServer: real HTTP, scripted faults."""

import asyncio
import json
import socket
import time
from email.utils import formatdate

import httpx
import pytest

from conversations import upstream
from conversations.demo import ChatCompletionsServer, DemoModel, chunk, demo_reply_text
from conversations.upstream import (
    ConnectError,
    Finish,
    HTTPStatusError,
    IdleTimeout,
    ReasoningDelta,
    RefusalDelta,
    StreamError,
    StreamInterrupted,
    TextDelta,
    TextWasReasoning,
    ToolCallDelta,
    UpstreamError,
    Usage,
    list_models,
    stream_chat,
)
from conversations.upstream.think import ThinkTags

MODEL = "test-model"
MESSAGES = [{"role": "user", "content": "Hello"}]
SECRET = "sk-test-0123456789abcdef"


def c(delta=None, finish=None, **extra) -> dict:
    """One chat.completion.chunk."""
    return chunk("chatcmpl-test", MODEL, delta, finish, **extra)


def sse_body(*payloads, done=True, newline="\n") -> bytes:
    """A whole event stream; JSON keeps non-ASCII raw, as most servers send it."""
    events = [p if isinstance(p, str) else json.dumps(p, ensure_ascii=False) for p in payloads]
    if done:
        events.append("[DONE]")
    return "".join(f"data: {e}{newline}{newline}" for e in events).encode()


def streaming(*payloads, done=True):
    """A handler that streams ``payloads`` as SSE events and ends the body properly."""

    async def handler(exchange):
        await exchange.start()
        for payload in payloads:
            await exchange.send_event(payload)
        if done:
            await exchange.send_event("[DONE]")

    return handler


def raw(body: bytes, content_type="text/event-stream"):
    """A handler that sends ``body`` in one HTTP chunk."""

    async def handler(exchange):
        await exchange.start(content_type=content_type)
        await exchange.write(body)

    return handler


@pytest.fixture
async def serve():
    servers = []

    async def start(handler) -> ChatCompletionsServer:
        server = await ChatCompletionsServer(handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture(params=["httpcore", "aiohttp"])
async def client(request):
    """Every test of the HTTP side runs through both transports the site can use."""
    http = upstream.new_client(request.param)
    yield http
    await http.aclose()


async def collect(client, server, **kwargs) -> list:
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("messages", MESSAGES)
    return [event async for event in stream_chat(server.base_url, client=client, **kwargs)]


async def collect_until_error(client, server, **kwargs) -> tuple[list, UpstreamError]:
    """The events that arrived before the stream failed, and the error."""
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("messages", MESSAGES)
    events = []
    with pytest.raises(UpstreamError) as info:
        async for event in stream_chat(server.base_url, client=client, **kwargs):
            events.append(event)
    return events, info.value


def free_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- deltas ------------------------------------------------------------------


async def test_role_only_and_empty_deltas_yield_nothing(serve, client):
    server = await serve(
        streaming(
            c({"role": "assistant", "content": ""}),
            c({"role": "assistant"}),
            c({"content": "Hi"}),
            c({"content": None}),
            c({"content": ""}),
            c({}),
            c({"content": " there"}),
            c({}, "stop"),
        )
    )
    assert await collect(client, server) == [TextDelta("Hi"), TextDelta(" there"), Finish("stop")]


async def test_chunks_without_choices(serve, client):
    azure_filter = {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    }
    server = await serve(
        streaming(
            azure_filter,
            c({"role": "assistant", "content": ""}),
            c({"content": "ok"}),
            c({}, "stop"),
            c(usage=None),
            c(usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}),
        )
    )
    assert await collect(client, server) == [TextDelta("ok"), Finish("stop"), Usage(3, 1, 4)]


async def test_usage_absent_and_missing_usage_fields(serve, client):
    server = await serve(streaming(c({"content": "ok"}), c({}, "stop")))
    assert await collect(client, server) == [TextDelta("ok"), Finish("stop")]

    server = await serve(
        streaming(c({"content": "ok"}), c({}, "stop"), c(usage={"prompt_tokens": 5}))
    )
    events = await collect(client, server)
    assert events[-1] == Usage(prompt_tokens=5, completion_tokens=None, total_tokens=None)


async def test_parallel_tool_calls_keep_their_index(serve, client):
    def call(index, arguments, **first):
        body = {"index": index, "function": {"arguments": arguments}}
        if first:
            body["id"] = first["id"]
            body["type"] = "function"
            body["function"]["name"] = first["name"]
        return c({"tool_calls": [body]})

    server = await serve(
        streaming(
            c({"role": "assistant", "content": None}),
            call(0, "", id="call_a", name="get_weather"),
            call(1, "", id="call_b", name="get_time"),
            call(0, '{"city": '),
            call(1, '{"tz": "UTC"}'),
            call(0, '"Paris"}'),
            c({}, "tool_calls"),
        )
    )
    assert await collect(client, server) == [
        ToolCallDelta(0, "call_a", "get_weather", ""),
        ToolCallDelta(1, "call_b", "get_time", ""),
        ToolCallDelta(0, None, None, '{"city": '),
        ToolCallDelta(1, None, None, '{"tz": "UTC"}'),
        ToolCallDelta(0, None, None, '"Paris"}'),
        Finish("tool_calls"),
    ]


async def test_whole_tool_calls_without_index(serve, client):
    # Older Ollama / vLLM: every call complete in one delta, no "index".
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": '{"x": 1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": {"y": 2}}},
    ]
    server = await serve(streaming(c({"tool_calls": calls}), c({}, "tool_calls")))
    events = await collect(client, server)
    assert events[:2] == [
        ToolCallDelta(0, "call_1", "a", '{"x": 1}'),
        ToolCallDelta(1, "call_2", "b", '{"y": 2}'),  # an object becomes JSON text
    ]
    assert [json.loads(event.arguments) for event in events[:2]] == [{"x": 1}, {"y": 2}]


async def test_legacy_function_call(serve, client):
    server = await serve(
        streaming(
            c({"role": "assistant", "function_call": {"name": "lookup", "arguments": ""}}),
            c({"function_call": {"arguments": '{"q": '}}),
            c({"function_call": {"arguments": '"cats"}'}}),
            c({}, "function_call"),
        )
    )
    events = await collect(client, server)
    assert events == [
        ToolCallDelta(0, None, "lookup", ""),
        ToolCallDelta(0, None, None, '{"q": '),
        ToolCallDelta(0, None, None, '"cats"}'),
        Finish("function_call"),
    ]


async def test_refusal_deltas(serve, client):
    server = await serve(
        streaming(
            c({"role": "assistant", "content": None, "refusal": ""}),
            c({"refusal": "I can't"}),
            c({"refusal": " help with that."}),
            c({}, "stop"),
        )
    )
    events = await collect(client, server)
    assert events == [RefusalDelta("I can't"), RefusalDelta(" help with that."), Finish("stop")]


@pytest.mark.parametrize(
    "reason", ["stop", "length", "tool_calls", "content_filter", "function_call"]
)
async def test_every_finish_reason_with_content_in_the_same_chunk(serve, client, reason):
    server = await serve(streaming(c({"content": "a"}), c({"content": "b"}, reason)))
    events = await collect(client, server)
    assert events == [TextDelta("a"), TextDelta("b"), Finish(reason)]


async def test_other_choices_are_ignored(serve, client):
    two = c()
    two["choices"] = [
        {"index": 1, "delta": {"content": "B"}, "finish_reason": None},
        {"index": 0, "delta": {"content": "A"}, "finish_reason": None},
    ]
    server = await serve(streaming(two, c({"content": "!"}), c({}, "stop")))
    assert await collect(client, server) == [TextDelta("A"), TextDelta("!"), Finish("stop")]


# --- reasoning ---------------------------------------------------------------


def split(*pieces: str) -> list:
    """The events ThinkTags gives for ``pieces`` fed one by one, the flush included."""
    tags = ThinkTags()
    events = [event for piece in pieces for event in tags.feed(piece)]
    return events + tags.flush()


def merged(events: list) -> list:
    """``events`` with neighbouring deltas of one kind joined: how they read."""
    out = []
    for event in events:
        kind = type(event)
        if out and kind in (TextDelta, ReasoningDelta) and type(out[-1]) is kind:
            out[-1] = kind(out[-1].text + event.text)
        else:
            out.append(event)
    return out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "<think>\nThe user greets me.\n</think>\n\nHello!",
            [ReasoningDelta("The user greets me.\n"), TextDelta("Hello!")],
        ),
        ("\n \n<think>a</think>b", [ReasoningDelta("a"), TextDelta("b")]),
        ("<THOUGHT>a</Thought>  b", [ReasoningDelta("a"), TextDelta("b")]),
        ("<thinking>a</thinking>b", [ReasoningDelta("a"), TextDelta("b")]),
        ("<reasoning>a</reasoning>b", [ReasoningDelta("a"), TextDelta("b")]),
        # Only the opening tag's own closing tag ends the block.
        ("<think>a</thinking>b</think>c", [ReasoningDelta("a</thinking>b"), TextDelta("c")]),
        # Qwen3 with thinking off: an empty block, then the answer.
        ("<think>\n\n</think>\n\nHi", [TextDelta("Hi")]),
        # After the block, and anywhere but the start, tags are text.
        (
            "<think>a</think>b <think>c</think>",
            [ReasoningDelta("a"), TextDelta("b <think>c</think>")],
        ),
        ("Say <think> twice", [TextDelta("Say <think> twice")]),
        # The opening tag was in the prompt (vllm#12999): the text so far was reasoning.
        (
            "Okay, 2 + 2.\n</think>\n\n4",
            [TextDelta("Okay, 2 + 2.\n"), TextWasReasoning(), TextDelta("4")],
        ),
        ("a</THINK>b</think>c", [TextDelta("a"), TextWasReasoning(), TextDelta("b</think>c")]),
        # ...and when nothing came before it, there is nothing to take back.
        ("</think>\n\nHi", [TextDelta("Hi")]),
        ("\n</think>Hi", [TextDelta("Hi")]),
        # A block never closed (cut by max_tokens) stays reasoning.
        ("<think>Let me", [ReasoningDelta("Let me")]),
        ("<think>Let me </th", [ReasoningDelta("Let me </th")]),
        # What looked like a tag's start is released at the end as what it was.
        ("<thi", [TextDelta("<thi")]),
        ("x </", [TextDelta("x </")]),
        ("  \n", [TextDelta("  \n")]),
        ("", []),
        # Case folding is ASCII only: KELVIN SIGN is not a "k", and "İ" keeps its length.
        ("a</thin\u212a>b", [TextDelta("a</thin\u212a>b")]),
        ("İİ</think>x", [TextDelta("İİ"), TextWasReasoning(), TextDelta("x")]),
        ("<b>bold</b> and 1 < 2", [TextDelta("<b>bold</b> and 1 < 2")]),
    ],
)
def test_think_tags(content, expected):
    assert merged(split(content)) == expected
    # Split anywhere, or a character at a time, it reads the same.
    for cut in range(len(content) + 1):
        assert merged(split(content[:cut], content[cut:])) == expected, cut
    assert merged(split(*content)) == expected


def test_think_tags_hold_back_only_a_possible_tag():
    tags = ThinkTags()
    assert tags.feed("  ") == []  # an opening tag may still follow
    assert tags.feed("<") == []
    assert tags.feed("p>") == [TextDelta("  <p>")]  # it cannot be one any more
    assert tags.feed("x <") == [TextDelta("x ")]
    assert tags.feed("</thi") == [TextDelta("<")]  # the first "<" cannot start a tag
    assert tags.feed("s") == [TextDelta("</this")]
    assert tags.feed("</think") == []
    assert tags.feed(">\n\nAnswer") == [TextWasReasoning(), TextDelta("Answer")]
    assert tags.feed("</think>") == [TextDelta("</think>")]
    assert tags.flush() == []

    tags = ThinkTags()
    assert tags.feed("<think>") == []
    assert tags.feed("\n") == []  # the reasoning's leading whitespace is dropped
    assert tags.feed("Hmm</") == [ReasoningDelta("Hmm")]
    assert tags.feed("b>") == [ReasoningDelta("</b>")]
    assert tags.feed("</think>") == []
    assert tags.feed(" \n") == []  # so is the answer's
    assert tags.feed(" Yes") == [TextDelta("Yes")]


def test_think_tags_flush_releases_and_ends():
    tags = ThinkTags()
    assert tags.feed("<think>a</thin") == [ReasoningDelta("a")]
    assert tags.flush() == [ReasoningDelta("</thin")]
    assert tags.flush() == []
    assert tags.feed("<think>late") == [TextDelta("<think>late")]  # the stream had ended


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "reasoning_text"])
async def test_reasoning_fields(serve, client, field):
    server = await serve(
        streaming(
            c({"role": "assistant", "content": None, field: ""}),
            c({"content": None, field: "Hmm"}),
            c({field: ", yes."}),
            c({"content": "Yes", field: None}),
            c({}, "stop"),
        )
    )
    assert await collect(client, server) == [
        ReasoningDelta("Hmm"),
        ReasoningDelta(", yes."),
        TextDelta("Yes"),
        Finish("stop"),
    ]


async def test_the_same_reasoning_in_two_fields_counts_once(serve, client):
    server = await serve(
        streaming(
            c({"reasoning": "a", "reasoning_content": "a"}),
            c({"reasoning": "b", "reasoning_content": "b", "content": "c"}),
            c({}, "stop"),
        )
    )
    events = await collect(client, server)
    assert events == [ReasoningDelta("a"), ReasoningDelta("b"), TextDelta("c"), Finish("stop")]


async def test_reasoning_details(serve, client):
    def details(*entries, reasoning=None):
        return c({"content": "", "reasoning": reasoning, "reasoning_details": list(entries)})

    text = {"type": "reasoning.text", "format": "anthropic-claude-v1", "index": 0}
    server = await serve(
        streaming(
            details(),
            details({**text, "text": "", "signature": ""}),
            details({**text, "text": "Think"}, reasoning="Think"),  # once, not twice
            details({**text, "text": "ing"}, {**text, "text": "."}, reasoning="ing."),
            details({"type": "reasoning.summary", "summary": " In short."}),
            details({**text, "text": None, "signature": "EqQBCkYIBx"}),
            details({"type": "reasoning.encrypted", "data": "gAAAAABo95Ad", "index": 0}),
            # Only an encrypted entry, but the text in delta.reasoning: that is shown.
            details({"type": "reasoning.encrypted", "data": "x"}, reasoning=" Also."),
            details("not a dict", {"type": "reasoning.unknown", "text": "?"}),
            c({"content": "Done"}, "stop"),
        )
    )
    assert merged(await collect(client, server)) == [
        ReasoningDelta("Thinking. In short. Also."),
        TextDelta("Done"),
        Finish("stop"),
    ]


async def test_content_parts(serve, client):
    def parts(*items):
        return c({"content": list(items)})

    def thinking(thought):
        return {"type": "thinking", "thinking": thought}

    server = await serve(
        streaming(
            parts(thinking([{"type": "text", "text": "Okay"}])),
            parts(
                thinking([{"type": "text", "text": ", a"}, {"type": "text", "text": " greeting."}])
            ),
            parts(thinking("As a string.")),
            parts(thinking([]), thinking(None), {"type": "image_url"}, "text", {"type": "text"}),
            parts({**thinking([{"type": "text", "text": ""}]), "closed": True}),
            parts({"type": "text", "text": "Hello"}, {"type": "text", "text": "!"}),
            c({"content": " How can I help?"}),
            parts({"type": "refusal", "refusal": "No."}),
            c({}, "stop"),
        )
    )
    assert await collect(client, server) == [
        ReasoningDelta("Okay"),
        ReasoningDelta(", a greeting."),
        ReasoningDelta("As a string."),
        TextDelta("Hello"),
        TextDelta("!"),
        TextDelta(" How can I help?"),
        RefusalDelta("No."),
        Finish("stop"),
    ]


async def test_inline_tags_over_the_wire(serve, client):
    server = await serve(
        streaming(
            c({"role": "assistant", "content": ""}),
            c({"content": "\n<th"}),
            c({"content": "ink>\nHi"}),
            c({"content": "?</thi"}),
            c({"content": "nk>\n\nHello"}),
            c({"content": " </think>"}),  # after the block, tags are text
            c({}, "stop"),
        )
    )
    assert await collect(client, server) == [
        ReasoningDelta("Hi"),
        ReasoningDelta("?"),
        TextDelta("Hello"),
        TextDelta(" </think>"),
        Finish("stop"),
    ]


async def test_held_back_text_is_released_by_done_and_by_eof(serve, client):
    server = await serve(streaming(c({"content": "a <"})))  # [DONE], no finish_reason
    assert await collect(client, server) == [TextDelta("a "), TextDelta("<")]

    server = await serve(raw(sse_body(c({"content": "<thi"}), done=False)))
    events, error = await collect_until_error(client, server)
    assert events == [TextDelta("<thi")]
    assert type(error) is StreamInterrupted


async def test_held_back_text_survives_a_cut_after_finish(serve, client):
    async def handler(exchange):
        await exchange.start()
        await exchange.send_event(c({"content": "x </"}, "length"))
        await asyncio.sleep(0.05)
        exchange.abort()

    server = await serve(handler)
    assert await collect(client, server) == [TextDelta("x "), TextDelta("</"), Finish("length")]


async def test_whole_completion_with_reasoning(serve, client):
    def completion(message):
        return {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": 20,
                "total_tokens": 29,
                "completion_tokens_details": {"reasoning_tokens": 12},
            },
        }

    messages = [
        {"role": "assistant", "reasoning_content": "Hmm.", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nHmm.\n</think>\n\nHi"},
        {"role": "assistant", "content": "Hmm.\n</think>\n\nHi"},
    ]
    results = []
    for message in messages:

        async def handler(exchange, message=message):
            await exchange.respond_json(200, completion(message))

        server = await serve(handler)
        results.append(await collect(client, server))
    assert results[0] == [
        ReasoningDelta("Hmm."),
        TextDelta("Hi"),
        Finish("stop"),
        Usage(9, 20, 29, 12),
    ]
    assert results[1] == [
        ReasoningDelta("Hmm.\n"),
        TextDelta("Hi"),
        Finish("stop"),
        Usage(9, 20, 29, 12),
    ]
    assert results[2][:3] == [TextDelta("Hmm.\n"), TextWasReasoning(), TextDelta("Hi")]


async def test_reasoning_tokens_and_groq_usage(serve, client):
    details = {"reasoning_tokens": 64, "accepted_prediction_tokens": 0}
    usage = {"prompt_tokens": 15, "completion_tokens": 78, "total_tokens": 93}
    groq_usage = {
        "queue_time": 0.07,
        "prompt_tokens": 23,
        "completion_tokens": 19,
        "total_tokens": 42,
    }
    server = await serve(
        streaming(
            c({}, "stop"),
            c(usage={**usage, "completion_tokens_details": details}),
            c(usage={**usage, "completion_tokens_details": {"reasoning_tokens": "64"}}),
            c(usage=None, x_groq={"id": "req_01hy8ppkajfqk987jv2vx88m9r", "usage": groq_usage}),
        )
    )
    assert await collect(client, server) == [
        Finish("stop"),
        Usage(15, 78, 93, 64),
        Usage(15, 78, 93, None),
        Usage(23, 19, 42),
    ]
    assert Usage(1, 2, 3) == Usage(1, 2, 3, None)
    assert Usage(1, 2, 3).reasoning_tokens is None


# --- how the stream ends -----------------------------------------------------


async def test_done_ends_the_stream_without_waiting_for_eof(serve, client):
    body = sse_body(c({"content": "x"}), c({}, "stop")) + sse_body(c({"content": "late"}))

    async def handler(exchange):
        await exchange.start()
        await exchange.write(body)
        await asyncio.sleep(10)  # keeps the connection open: only [DONE] can end this

    server = await serve(handler)
    events = await asyncio.wait_for(collect(client, server), 2)
    assert events == [TextDelta("x"), Finish("stop")]


async def test_eof_without_done_after_finish_is_normal(serve, client):
    server = await serve(streaming(c({"content": "x"}), c({}, "stop"), done=False))
    assert await collect(client, server) == [TextDelta("x"), Finish("stop")]


async def test_eof_without_finish_raises_interrupted(serve, client):
    server = await serve(streaming(c({"content": "x"}), done=False))
    events, error = await collect_until_error(client, server)
    assert events == [TextDelta("x")]
    assert type(error) is StreamInterrupted
    assert error.retryable
    assert "finish" in str(error)


async def test_done_without_finish_is_normal(serve, client):
    # [DONE] is the server saying it is done; trust it.
    server = await serve(streaming(c({"content": "x"})))
    assert await collect(client, server) == [TextDelta("x")]


async def test_eof_of_unchunked_body_after_finish(serve, client):
    async def handler(exchange):
        await exchange.start(chunked=False)  # the body ends when the connection closes
        await exchange.write(sse_body(c({"content": "x"}), c({}, "stop"), done=False))
        exchange.writer.close()

    server = await serve(handler)
    assert await collect(client, server) == [TextDelta("x"), Finish("stop")]


async def test_cut_connection_after_finish_is_normal(serve, client):
    async def handler(exchange):
        await exchange.start()
        await exchange.send_event(c({"content": "x"}))
        await exchange.send_event(c({}, "stop"))
        await asyncio.sleep(0.05)
        exchange.abort()

    server = await serve(handler)
    assert await collect(client, server) == [TextDelta("x"), Finish("stop")]


async def test_cut_connection_before_finish_raises_interrupted(serve, client):
    async def handler(exchange):
        await exchange.start()
        await exchange.send_event(c({"content": "x"}))
        await asyncio.sleep(0.05)
        exchange.abort()

    server = await serve(handler)
    events, error = await collect_until_error(client, server)
    assert events == [TextDelta("x")]
    assert type(error) is StreamInterrupted
    assert error.retryable


async def test_cut_inside_an_http_chunk_raises_interrupted(serve, client):
    async def handler(exchange):
        await exchange.start()
        await exchange.send_event(c({"content": "x"}))
        # A chunk header announcing 0x100 bytes, then only a few of them.
        exchange.writer.write(b'100\r\ndata: {"choi')
        await exchange.writer.drain()
        await asyncio.sleep(0.05)
        exchange.abort()

    server = await serve(handler)
    events, error = await collect_until_error(client, server)
    assert events == [TextDelta("x")]
    assert type(error) is StreamInterrupted


async def test_idle_timeout(serve, client):
    async def handler(exchange):
        await exchange.start()
        await exchange.send_event(c({"content": "x"}))
        await asyncio.sleep(5)

    server = await serve(handler)
    started = time.monotonic()
    events, error = await collect_until_error(client, server, idle_timeout=0.3)
    assert time.monotonic() - started < 3
    assert events == [TextDelta("x")]
    assert isinstance(error, IdleTimeout)
    assert isinstance(error, StreamInterrupted)
    assert error.retryable
    assert "0.3 s" in str(error)


async def test_idle_timeout_after_finish_is_normal(serve, client):
    async def handler(exchange):
        await exchange.start()
        await exchange.send_event(c({}, "stop"))
        await asyncio.sleep(5)  # neither usage nor [DONE] ever comes

    server = await serve(handler)
    assert await collect(client, server, idle_timeout=0.3) == [Finish("stop")]


# --- errors ------------------------------------------------------------------


async def test_error_object_mid_stream(serve, client):
    error = {"message": "The server had an error while processing", "type": "server_error"}
    server = await serve(streaming(c({"content": "x"}), {"error": error}))
    events, exc = await collect_until_error(client, server)
    assert events == [TextDelta("x")]
    assert type(exc) is StreamError
    assert "The server had an error while processing" in str(exc)
    assert exc.code == "server_error"
    assert exc.retryable


async def test_events_read_with_an_error_arrive_before_it(serve, client):
    # One read can carry several events (a loaded machine, a proxy that buffers).
    for bad in ({"error": {"message": "boom"}}, '{"choices": ['):
        server = await serve(raw(sse_body(c({"content": "x"}), bad, done=False)))
        events, exc = await collect_until_error(client, server)
        assert events == [TextDelta("x")]
        assert type(exc) is StreamError


async def test_error_string_mid_stream(serve, client):
    server = await serve(streaming({"error": "model crashed"}))
    _, exc = await collect_until_error(client, server)
    assert type(exc) is StreamError
    assert "model crashed" in str(exc)
    assert not exc.retryable


async def test_malformed_json_raises_stream_error(serve, client):
    server = await serve(streaming(c({"content": "x"}), '{"choices": [' + "x" * 1000))
    events, exc = await collect_until_error(client, server)
    assert events == [TextDelta("x")]
    assert type(exc) is StreamError
    assert str(exc).startswith("upstream sent malformed data: ")
    assert len(str(exc)) < 300


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected", "code"),
    [
        (
            400,
            "application/json",
            {"error": {"message": "Invalid 'messages'", "type": "invalid_request_error"}},
            "Invalid 'messages'",
            "invalid_request_error",
        ),
        (
            500,
            "application/json",
            {"error": {"message": "boom", "type": "server_error", "code": "internal"}},
            "boom",
            "internal",
        ),
        (400, "application/json", {"error": "model 'x' not found"}, "model 'x' not found", None),
        (400, "application/json", {"detail": "Context too long"}, "Context too long", None),
        (
            422,
            "application/json",
            {"detail": [{"loc": ["body", "messages"], "msg": "field required"}]},
            "body.messages: field required",
            None,
        ),
        (
            400,
            "application/json",
            {"object": "error", "message": "max_tokens too big", "code": 400},
            "max_tokens too big",
            "400",
        ),
        (502, "text/plain", "upstream connect error", "upstream connect error", None),
        (
            502,
            "text/html",
            "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
            "502 Bad Gateway",
            None,
        ),
    ],
)
async def test_http_error_bodies(serve, client, status, content_type, body, expected, code):
    async def handler(exchange):
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        await exchange.start(status, content_type)  # chunked, like a streaming proxy
        await exchange.write(data)

    server = await serve(handler)
    _, exc = await collect_until_error(client, server)
    assert type(exc) is HTTPStatusError
    assert exc.status_code == status
    assert expected in str(exc)
    assert f"HTTP {status}" in str(exc)
    assert "<" not in str(exc)
    assert exc.code == code
    assert exc.retryable is (status >= 500)


def _with_status(status, body: bytes, headers=None):
    async def handler(exchange):
        await exchange.start(status, "text/plain", headers)
        await exchange.write(body)

    return handler


async def test_http_error_long_text_is_truncated(serve, client):
    server = await serve(_with_status(500, b"y" * 5000))
    _, exc = await collect_until_error(client, server)
    assert type(exc) is HTTPStatusError
    assert "yyyy" in str(exc)
    assert len(str(exc)) < 700


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_errors_say_check_the_api_key(serve, client, status):
    async def handler(exchange):
        await exchange.respond_json(status, {"error": {"message": "Forbidden.", "code": None}})

    server = await serve(handler)
    _, exc = await collect_until_error(client, server, api_key=SECRET)
    assert type(exc) is HTTPStatusError
    assert "Forbidden" in str(exc)
    assert "Check the API key" in str(exc)
    assert not exc.retryable


async def test_404_names_the_model(serve, client):
    async def handler(exchange):
        await exchange.respond_json(404, {"error": {"message": "Not found"}})

    server = await serve(handler)
    _, exc = await collect_until_error(client, server)
    assert type(exc) is HTTPStatusError
    assert MODEL in str(exc)
    assert "Not found" in str(exc)
    assert not exc.retryable


async def test_retry_after_seconds(serve, client):
    async def handler(exchange):
        error = {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}
        await exchange.respond_json(429, {"error": error}, {"Retry-After": "7"})

    server = await serve(handler)
    _, exc = await collect_until_error(client, server)
    assert type(exc) is HTTPStatusError
    assert (exc.status_code, exc.retry_after, exc.code) == (429, 7.0, "rate_limit_exceeded")
    assert exc.retryable
    assert "Rate limit reached" in str(exc)


async def test_retry_after_http_date(serve, client):
    when = formatdate(time.time() + 30, usegmt=True)
    server = await serve(_with_status(503, b"overloaded", {"Retry-After": when}))
    _, exc = await collect_until_error(client, server)
    assert exc.status_code == 503
    assert 25 <= exc.retry_after <= 31
    assert exc.retryable


async def test_redirect_is_an_error(serve, client):
    server = await serve(_with_status(301, b"", {"Location": "https://example.com/v1/"}))
    _, exc = await collect_until_error(client, server)
    assert type(exc) is HTTPStatusError
    assert "https://example.com/v1/" in str(exc)


async def test_connection_refused(client):
    port = free_port()
    with pytest.raises(ConnectError) as info:
        async for _ in stream_chat(
            f"http://127.0.0.1:{port}/v1", client=client, model=MODEL, messages=MESSAGES
        ):
            pass
    assert str(info.value) == f"Could not connect to 127.0.0.1:{port}: connection refused."
    assert info.value.retryable
    assert info.value.status_code is None


async def test_dns_failure(client):
    with pytest.raises(ConnectError) as info:
        async for _ in stream_chat(
            "http://nonexistent.invalid/v1", client=client, model=MODEL, messages=[]
        ):
            pass
    assert "nonexistent.invalid:80" in str(info.value)
    assert "resolve" in str(info.value)
    assert info.value.retryable


async def test_tls_failure(client):
    """An https URL pointing at a server that does not speak TLS."""

    async def not_tls(reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_tls, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectError) as info:
            async for _ in stream_chat(
                f"https://127.0.0.1:{port}/v1", client=client, model=MODEL, messages=[]
            ):
                pass
        assert "TLS" in str(info.value)
        assert f"127.0.0.1:{port}" in str(info.value)
    finally:
        server.close()


async def test_api_key_never_appears_in_errors(serve, client):
    async def echo_key(exchange):
        key = exchange.headers["authorization"].removeprefix("Bearer ")
        if exchange.path.endswith("/models"):
            await exchange.respond_json(401, {"error": f"bad key {key}"})
            return
        match exchange.json["messages"][0]["content"]:
            case "status":
                message = f"Incorrect API key provided: {key}."
                await exchange.respond_json(401, {"error": {"message": message}})
            case "midstream":
                await exchange.start()
                await exchange.send_event({"error": {"message": f"key {key} revoked"}})
            case "malformed":
                await exchange.start()
                await exchange.send_event(f"not json {key}")

    server = await serve(echo_key)
    errors = []
    for content in ("status", "midstream", "malformed"):
        messages = [{"role": "user", "content": content}]
        _, exc = await collect_until_error(client, server, messages=messages, api_key=SECRET)
        errors.append(exc)
    with pytest.raises(HTTPStatusError) as info:
        await list_models(server.base_url, client=client, api_key=SECRET)
    errors.append(info.value)
    with pytest.raises(ConnectError) as info:
        await list_models(f"http://127.0.0.1:{free_port()}/v1", client=client, api_key=SECRET)
    errors.append(info.value)

    assert [type(e) for e in errors] == [
        HTTPStatusError,
        StreamError,
        StreamError,
        HTTPStatusError,
        ConnectError,
    ]
    for exc in errors:
        assert SECRET not in str(exc)
        assert SECRET not in repr(exc)
        assert SECRET not in exc.message
    assert "[redacted]" in str(errors[0])


def test_retryable_by_status():
    for status in (408, 409, 429, 500, 502, 503, 504):
        assert HTTPStatusError("x", status_code=status).retryable
    for status in (400, 401, 403, 404, 413, 422):
        assert not HTTPStatusError("x", status_code=status).retryable
    assert ConnectError("x").retryable
    assert IdleTimeout("x").retryable
    assert not UpstreamError("x").retryable


# --- the SSE framing ---------------------------------------------------------


async def test_comments_and_other_fields_are_ignored(serve, client):
    body = (
        ": ping\n\n"
        ": OPENROUTER PROCESSING\n\n"
        "event: message\nid: 1\nretry: 3000\n"
        f"data: {json.dumps(c({'content': 'a'}))}\n\n"
        "id: 2\n\n"
        "event: ping\n\n"
        f"data:{json.dumps(c({'content': 'b'}, 'stop'))}\n\n"
        "data: [DONE]\n\n"
    )
    server = await serve(raw(body.encode()))
    assert await collect(client, server) == [TextDelta("a"), TextDelta("b"), Finish("stop")]


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
async def test_crlf_and_cr_line_endings(serve, client, newline):
    body = sse_body(c({"content": "a"}), c({"content": "b"}, "stop"), newline=newline)
    server = await serve(raw(body))
    assert await collect(client, server) == [TextDelta("a"), TextDelta("b"), Finish("stop")]


async def test_raw_line_and_paragraph_separators_stay_in_the_text(serve, client):
    text = "one\u2028two\u2029three\x85four"
    server = await serve(raw(sse_body(c({"content": text}), c({}, "stop"))))
    assert await collect(client, server) == [TextDelta(text), Finish("stop")]


async def test_last_event_without_blank_line(serve, client):
    body = sse_body(c({"content": "a"}), done=False) + f"data: {json.dumps(c({}, 'stop'))}".encode()
    server = await serve(raw(body))
    assert await collect(client, server) == [TextDelta("a"), Finish("stop")]


async def test_missing_content_type(serve, client):
    async def handler(exchange):
        # Written by hand: Exchange.start always sends a Content-Type.
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        exchange.writer.write(sse_body(c({"content": "a"}), c({}, "stop")))
        await exchange.writer.drain()

    server = await serve(handler)
    assert await collect(client, server) == [TextDelta("a"), Finish("stop")]


async def test_whole_json_completion_when_stream_is_ignored(serve, client):
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "search", "arguments": '{"q": "x"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    }

    async def handler(exchange):
        await exchange.respond_json(200, completion)

    server = await serve(handler)
    assert await collect(client, server) == [
        TextDelta("Let me look."),
        ToolCallDelta(0, "call_9", "search", '{"q": "x"}'),
        Finish("tool_calls"),
        Usage(9, 4, 13),
    ]


async def test_html_page_with_200_is_an_error(serve, client):
    server = await serve(raw(b"<!doctype html><html>Welcome</html>", content_type="text/html"))
    _, exc = await collect_until_error(client, server)
    assert type(exc) is UpstreamError
    assert "base URL" in str(exc)
    assert not exc.retryable


# --- delivery ----------------------------------------------------------------

REALISTIC = [
    c({"role": "assistant", "content": "", "refusal": None}),
    c({"content": "Grüße"}),
    c({"content": " - 3 € and 😀 "}),
    c({"content": "line\u2028break"}),
    c(
        {
            "tool_calls": [
                {"index": 0, "id": "call_x", "type": "function", "function": {"name": "f"}}
            ]
        }
    ),
    c({"tool_calls": [{"index": 0, "function": {"arguments": '{"ü": "𝄞"}'}}]}),
    c({}, "tool_calls"),
    c(usage={"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}),
]
REALISTIC_EVENTS = [
    TextDelta("Grüße"),
    TextDelta(" - 3 € and 😀 "),
    TextDelta("line\u2028break"),
    ToolCallDelta(0, "call_x", "f", ""),
    ToolCallDelta(0, None, None, '{"ü": "𝄞"}'),
    Finish("tool_calls"),
    Usage(12, 7, 19),
]


async def test_whole_delivery(serve, client):
    server = await serve(raw(sse_body(*REALISTIC, newline="\r\n")))
    assert await collect(client, server) == REALISTIC_EVENTS


async def test_byte_by_byte_delivery(serve, client):
    body = sse_body(*REALISTIC, newline="\r\n")

    async def handler(exchange):
        await exchange.start()
        for i in range(len(body)):
            await exchange.write(body[i : i + 1])  # one HTTP chunk per byte
            if i % 8 == 0:
                await asyncio.sleep(0.001)

    server = await serve(handler)
    assert await collect(client, server) == REALISTIC_EVENTS


async def test_multibyte_character_split_between_writes(serve, client):
    body = sse_body(c({"content": "a😀b"}), c({}, "stop"))
    cut = body.index("😀".encode()) + 2

    async def handler(exchange):
        await exchange.start()
        await exchange.write(body[:cut])
        await asyncio.sleep(0.02)
        await exchange.write(body[cut:])

    server = await serve(handler)
    assert await collect(client, server) == [TextDelta("a😀b"), Finish("stop")]


# --- closing early -----------------------------------------------------------


def slow_stream():
    async def handler(exchange):
        await exchange.start()
        await exchange.send_event(c({"role": "assistant", "content": ""}))
        for _ in range(100):
            await exchange.send_event(c({"content": "word "}))
            await asyncio.sleep(0.1)

    return handler


async def test_aclose_closes_the_connection(serve, client):
    server = await serve(slow_stream())
    gen = stream_chat(server.base_url, client=client, model=MODEL, messages=MESSAGES)
    assert await anext(gen) == TextDelta("word ")
    await gen.aclose()
    (exchange,) = server.exchanges
    await asyncio.wait_for(exchange.disconnected.wait(), 1)


async def test_cancelling_the_consumer_closes_the_connection(serve, client):
    server = await serve(slow_stream())
    first = asyncio.Event()

    async def consume():
        async for _ in stream_chat(server.base_url, client=client, model=MODEL, messages=MESSAGES):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (exchange,) = server.exchanges
    await asyncio.wait_for(exchange.disconnected.wait(), 1)


# --- the request -------------------------------------------------------------


async def test_request_body_and_headers(serve, client):
    server = await serve(streaming(c({}, "stop")))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    async for _ in stream_chat(
        server.base_url + "/",
        client=client,
        model=MODEL,
        messages=MESSAGES,
        extra={"temperature": 0.5, "tools": tools},
    ):
        pass
    async for _ in stream_chat(
        server.base_url, client=client, model=MODEL, messages=MESSAGES, api_key=SECRET
    ):
        pass

    without_key, with_key = server.exchanges
    assert (without_key.method, without_key.path) == ("POST", "/v1/chat/completions")
    assert without_key.json == {
        "model": MODEL,
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
        "tools": tools,
    }
    assert without_key.headers["accept"] == "text/event-stream"
    assert "authorization" not in without_key.headers
    assert with_key.headers["authorization"] == f"Bearer {SECRET}"
    assert with_key.json["stream"] is True
    assert with_key.json["stream_options"] == {"include_usage": True}


async def test_given_client_is_used(serve):
    server = await serve(DemoModel(tokens_per_second=0))
    seen = []

    async def record(request):
        seen.append(request.url.path)

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as client:
        events = await collect(client, server)
        assert await list_models(server.base_url, client=client) == ["demo"]
    assert Finish("stop") in events
    assert seen == ["/v1/chat/completions", "/v1/models"]


async def test_new_client_is_configured_for_upstreams():
    client = upstream.new_client()
    try:
        assert client.timeout == httpx.Timeout(60.0, connect=10.0)
        assert not client.follow_redirects
    finally:
        await client.aclose()


# --- the demo model ----------------------------------------------------------


async def test_demo_model_stream(serve, client):
    server = await serve(DemoModel(tokens_per_second=0))
    messages = [{"role": "user", "content": "Tell me something"}]
    events = await collect(client, server, model="demo", messages=messages)
    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    assert text == demo_reply_text("Tell me something")
    assert events[-2] == Finish("stop")
    usage = events[-1]
    assert isinstance(usage, Usage)
    assert usage.completion_tokens > 100
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert not any(isinstance(event, ToolCallDelta) for event in events)


async def test_demo_model_tool_call(serve, client):
    server = await serve(DemoModel(tokens_per_second=0))
    tools = [
        {
            "type": "function",
            "function": {
                "name": "web_search",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
            },
        }
    ]
    messages = [{"role": "user", "content": "Use a tool for this"}]
    events = await collect(client, server, model="demo", messages=messages, extra={"tools": tools})
    assert Finish("tool_calls") in events
    assert not any(isinstance(event, TextDelta) for event in events)
    calls = [event for event in events if isinstance(event, ToolCallDelta)]
    assert {call.index for call in calls} == {0}
    assert calls[0].id.startswith("call_")
    assert calls[0].name == "web_search"
    assert all(call.id is None and call.name is None for call in calls[1:])
    arguments = "".join(call.arguments for call in calls)
    assert json.loads(arguments) == {"query": "Use a tool for this"}


async def test_list_models(serve, client):
    server = await serve(DemoModel())
    assert await list_models(server.base_url, client=client) == ["demo"]
    assert await list_models(server.base_url + "/", client=client) == ["demo"]
    (exchange, _) = server.exchanges
    assert (exchange.method, exchange.path) == ("GET", "/v1/models")


async def test_list_models_errors(serve, client):
    async def handler(exchange):
        await exchange.respond_json(401, {"error": {"message": "Missing bearer token"}})

    server = await serve(handler)
    with pytest.raises(HTTPStatusError) as info:
        await list_models(server.base_url, client=client)
    assert "Missing bearer token" in str(info.value)
    assert "Check the API key" in str(info.value)

    server = await serve(raw(b"not json", content_type="application/json"))
    with pytest.raises(UpstreamError, match="malformed model list"):
        await list_models(server.base_url, client=client)


# --- stream_options ----------------------------------------------------------


async def test_request_without_stream_options(serve, client):
    server = await serve(streaming(c({"content": "ok"}, "stop")))
    assert await collect(client, server, include_usage=False) == [TextDelta("ok"), Finish("stop")]
    (exchange,) = server.exchanges
    assert exchange.json == {"model": MODEL, "messages": MESSAGES, "stream": True}


STREAM_OPTIONS_REFUSED = {
    # Azure OpenAI deployments (langchain-ai/langchain#23552, Pythagora-io/gpt-pilot#1022)
    "azure": (
        400,
        {
            "error": {
                "message": "Unrecognized request argument supplied: stream_options",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
    ),
    # Later Azure API versions (jamesrochabrun/SwiftOpenAI#67)
    "azure-unknown-parameter": (
        400,
        {
            "error": {
                "message": "Unknown parameter: 'stream_options'.",
                "type": "invalid_request_error",
                "param": "stream_options",
                "code": "unknown_parameter",
            }
        },
    ),
    # FastAPI with a request model that forbids extra fields: a 422 detail list
    "fastapi": (
        422,
        {
            "detail": [
                {
                    "type": "extra_forbidden",
                    "loc": ["body", "stream_options"],
                    "msg": "Extra inputs are not permitted",
                    "input": {"include_usage": True},
                }
            ]
        },
    ),
    # vLLM's error object, pydantic's complaint as its message
    "vllm": (
        400,
        {
            "object": "error",
            "message": "[{'type': 'extra_forbidden', 'loc': ('body', 'stream_options'), "
            "'msg': 'Extra inputs are not permitted'}]",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
    ),
    "plain-text": (400, "Bad Request: unknown field `Stream_Options`"),
}


@pytest.mark.parametrize("name", STREAM_OPTIONS_REFUSED)
async def test_an_error_naming_stream_options(serve, client, name):
    status, body = STREAM_OPTIONS_REFUSED[name]
    server = await serve(_respond(status, body))
    _, exc = await collect_until_error(client, server)
    assert type(exc) is HTTPStatusError
    assert exc.names("stream_options")
    assert exc.names("STREAM_OPTIONS")
    assert not exc.names("logprobs")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"error": {"message": "Invalid 'messages[0].content': string too long."}}),
        (500, {"error": {"message": "stream_options: internal error"}}),  # not a refusal
        (404, {"error": {"message": "Unknown parameter: stream_options"}}),
        (429, "stream_options"),
    ],
)
async def test_errors_not_naming_stream_options(serve, client, status, body):
    server = await serve(_respond(status, body))
    _, exc = await collect_until_error(client, server)
    assert not exc.names("stream_options")


def test_only_http_errors_name_parameters():
    assert not UpstreamError("Unknown parameter: stream_options").names("stream_options")
    assert not StreamError("Unknown parameter: stream_options").names("stream_options")
    assert HTTPStatusError("Unknown parameter: stream_options", status_code=400).names(
        "stream_options"
    )


def _respond(status, body):
    async def handler(exchange):
        if isinstance(body, str):
            await exchange.start(status, "text/plain")
            await exchange.write(body)
        else:
            await exchange.respond_json(status, body)

    return handler
