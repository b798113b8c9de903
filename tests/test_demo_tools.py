"""The demo model's tool round trip: calls to the built-in tools, then an answer from results."""

import json

import httpx
import pytest

from conversations.demo import (
    CALC_TOOL,
    TIME_TOOL,
    ChatCompletionsServer,
    DemoModel,
    expression_in,
    offered_functions,
    requested_tool_calls,
    time_zone_in,
    tool_answer_text,
    tool_call_preamble,
    tool_results,
    wants_time,
)

BUILTIN_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": TIME_TOOL,
            "description": "The current date and time.",
            "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": CALC_TOOL,
            "description": "Arithmetic.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    },
]
BOTH = [TIME_TOOL, CALC_TOOL]


@pytest.fixture
async def demo():
    server = await ChatCompletionsServer(DemoModel(tokens_per_second=0)).start()
    yield server
    await server.close()


async def stream(server, messages, **extra) -> list[dict]:
    """POST a streaming request; the SSE events' JSON payloads, then "[DONE]"."""
    body = {"model": "demo", "messages": messages, "stream": True, **extra}
    events = []
    async with (
        httpx.AsyncClient() as client,
        client.stream("POST", f"{server.base_url}/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    assert events[-1] == "[DONE]"
    return events


def deltas(events) -> list[dict]:
    return [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]


def finish_reasons(events) -> list[str]:
    return [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]][-1:]


def content(events) -> str:
    return "".join(d.get("content") or "" for d in deltas(events))


def tool_calls(events) -> dict[int, dict]:
    """The streamed tool calls put together, by index."""
    calls = {}
    for delta in deltas(events):
        for part in delta.get("tool_calls") or []:
            call = calls.setdefault(part["index"], {"id": None, "name": None, "arguments": ""})
            if part.get("id"):
                assert call["id"] is None, "only the first delta of a call carries its id"
                call["id"] = part["id"]
                assert part["type"] == "function"
                call["name"] = part["function"]["name"]
                assert part["function"]["arguments"] == ""
            else:
                call["arguments"] += part["function"]["arguments"]
            call["pieces"] = call.get("pieces", -1) + 1  # argument pieces after the head
    return calls


def user(text):
    return [{"role": "user", "content": text}]


def after_calls(question, calls_and_results):
    """The messages of a second round: the question, the calls, then their results."""
    calls, results = [], []
    for index, (name, arguments, result) in enumerate(calls_and_results):
        call_id = f"call_{index}"
        calls.append(
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        )
        results.append({"role": "tool", "tool_call_id": call_id, "content": result})
    assistant = {"role": "assistant", "content": "Let me check.", "tool_calls": calls}
    return [*user(question), assistant, *results]


# --- over HTTP ----------------------------------------------------------------


async def test_a_time_question_calls_current_time(demo):
    events = await stream(
        demo,
        user("What time is it in Tokyo?"),
        tools=BUILTIN_TOOLS,
        tool_choice="auto",
        stream_options={"include_usage": True},
    )
    (call,) = tool_calls(events).values()
    assert call["name"] == TIME_TOOL
    assert call["id"].startswith("call_")
    assert call["pieces"] >= 2
    assert json.loads(call["arguments"]) == {"timezone": "Asia/Tokyo"}
    assert content(events) == "Let me check the clock."
    assert finish_reasons(events) == ["tool_calls"]
    usage = events[-2]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_a_calculation_calls_calculate(demo):
    events = await stream(demo, user("Calculate 2**10 + sqrt(16)"), tools=BUILTIN_TOOLS)
    (call,) = tool_calls(events).values()
    assert call["name"] == CALC_TOOL
    assert json.loads(call["arguments"]) == {"expression": "2**10 + sqrt(16)"}
    assert finish_reasons(events) == ["tool_calls"]


async def test_both_questions_make_two_parallel_calls(demo):
    question = "What's 12*7, and what day is it?"
    events = await stream(demo, user(question), tools=BUILTIN_TOOLS)
    calls = tool_calls(events)
    assert sorted(calls) == [0, 1]
    assert {calls[0]["name"], calls[1]["name"]} == {TIME_TOOL, CALC_TOOL}
    assert calls[0]["id"] != calls[1]["id"]
    by_name = {call["name"]: json.loads(call["arguments"]) for call in calls.values()}
    assert by_name == {TIME_TOOL: {}, CALC_TOOL: {"expression": "12*7"}}
    assert finish_reasons(events) == ["tool_calls"]


@pytest.mark.parametrize(
    "extra",
    [{}, {"tools": BUILTIN_TOOLS, "tool_choice": "none"}, {"tools": BUILTIN_TOOLS[1:]}],
    ids=["no tools", "tool_choice none", "time tool not offered"],
)
async def test_no_call_without_the_tool_on_offer(demo, extra):
    events = await stream(demo, user("What time is it?"), **extra)
    assert tool_calls(events) == {}
    assert finish_reasons(events) == ["stop"]
    assert "offline demo model" in content(events)


async def test_tool_results_give_an_answer_and_no_new_call(demo):
    messages = after_calls(
        "What time is it, and what is 2**10?",
        [
            (TIME_TOOL, {}, "2025-01-02T03:04:05+00:00 (Thursday, UTC)"),
            (CALC_TOOL, {"expression": "2**10"}, "1024"),
        ],
    )
    events = await stream(demo, messages, tools=BUILTIN_TOOLS, tool_choice="auto")
    text = content(events)
    assert "The current time is 2025-01-02T03:04:05+00:00 (Thursday, UTC)." in text
    assert "`2**10` = 1024" in text
    assert tool_calls(events) == {}
    assert finish_reasons(events) == ["stop"]


async def test_an_error_result_is_reported(demo):
    messages = after_calls(
        "calculate 1/0",
        [(CALC_TOOL, {"expression": "1/0"}, "Error: Cannot calculate '1/0': division by zero")],
    )
    events = await stream(demo, messages, tools=BUILTIN_TOOLS)
    assert content(events) == (
        "The calculator could not do that: Cannot calculate '1/0': division by zero."
    )
    assert finish_reasons(events) == ["stop"]


async def test_a_denied_call_is_reported(demo):
    messages = after_calls(
        "what time is it", [(TIME_TOOL, {}, "The user denied this tool call; it was not run.")]
    )
    events = await stream(demo, messages, tools=BUILTIN_TOOLS)
    assert content(events) == "The tool call was denied, so I cannot tell you the time."


async def test_the_answer_without_streaming_uses_the_results(demo):
    messages = after_calls("what is 6*7", [(CALC_TOOL, {"expression": "6*7"}, "42")])
    body = {"model": "demo", "messages": messages, "tools": BUILTIN_TOOLS}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{demo.base_url}/chat/completions", json=body)
    assert response.json()["choices"][0]["message"]["content"] == "`6*7` = 42"


# --- the pure helpers -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["what time is it", "What's the date?", "what day is it", "time in Tokyo", "Current time?"],
)
def test_time_questions(text):
    assert wants_time(text)


@pytest.mark.parametrize("text", ["Tell me something", "Time flies", "what is 12*7"])
def test_not_time_questions(text):
    assert not wants_time(text)


@pytest.mark.parametrize(
    ("text", "zone"),
    [
        ("time in Tokyo", "Asia/Tokyo"),
        ("what time is it in new york?", "America/New_York"),
        ("the time in Europe/Paris", "Europe/Paris"),
        ("time in America/Argentina/Buenos_Aires", "America/Argentina/Buenos_Aires"),
        ("what's the time in UTC", "UTC"),
        ("what time is it", None),
    ],
)
def test_time_zone_in(text, zone):
    assert time_zone_in(text) == zone


@pytest.mark.parametrize(
    ("text", "expression"),
    [
        ("calculate 2**10 + sqrt(16)", "2**10 + sqrt(16)"),
        ("compute (3+4)*2", "(3+4)*2"),
        ("what is 12*7?", "12*7"),
        ("what's 2**10 + 3", "2**10 + 3"),
        ("What is 2^10?", "2**10"),
        ("(what is 2+3)", "2+3"),
        ("what is 3+4, and then?", "3+4"),
        ("2+2=", "2+2"),
        ("calculate sqrt(16)", "sqrt(16)"),
    ],
)
def test_expression_in(text, expression):
    assert expression_in(text) == expression


@pytest.mark.parametrize(
    "text", ["what is 42", "I am 25-30 years old", "Tell me something", "time in Europe/Paris"]
)
def test_no_expression_in(text):
    assert expression_in(text) is None


def test_requested_tool_calls():
    assert requested_tool_calls("time in Paris and 3*4 please, compute it", BOTH) == [
        (TIME_TOOL, {"timezone": "Europe/Paris"}),
        (CALC_TOOL, {"expression": "3*4"}),
    ]
    assert requested_tool_calls("what time is it", [CALC_TOOL]) == []
    assert requested_tool_calls("calculate 1+1", [TIME_TOOL]) == []
    assert requested_tool_calls("Hello", BOTH) == []
    # Asking for "a tool" calls one that is offered.
    assert requested_tool_calls("use a tool", BOTH) == [(TIME_TOOL, {})]
    assert requested_tool_calls("use a tool", ["web_search"]) == [
        ("web_search", {"query": "use a tool"})
    ]


def test_offered_functions():
    assert offered_functions(BUILTIN_TOOLS) == BOTH
    assert offered_functions(BUILTIN_TOOLS, "auto") == BOTH
    assert offered_functions(BUILTIN_TOOLS, "none") == []
    forced = {"type": "function", "function": {"name": CALC_TOOL}}
    assert offered_functions(BUILTIN_TOOLS, forced) == [CALC_TOOL]


def test_tool_call_preamble():
    assert tool_call_preamble([(TIME_TOOL, {})]) == "Let me check the clock."
    both = [(TIME_TOOL, {}), (CALC_TOOL, {"expression": "1+1"})]
    assert tool_call_preamble(both) == "Let me check the clock and work that out."
    assert tool_call_preamble([("web_search", {})]) == ""


def test_tool_results_match_calls_by_id():
    messages = after_calls(
        "q", [(TIME_TOOL, {"timezone": "UTC"}, "now"), (CALC_TOOL, {"expression": "1+1"}, "2")]
    )
    messages[-2:] = reversed(messages[-2:])  # results in another order than the calls
    assert tool_results(messages) == [
        (CALC_TOOL, {"expression": "1+1"}, "2"),
        (TIME_TOOL, {"timezone": "UTC"}, "now"),
    ]
    # Only the results after the last round count; an unknown id has no name.
    stray = {"role": "tool", "tool_call_id": "call_unknown", "content": "x"}
    assert tool_results([*messages, stray])[-1] == ("", {}, "x")
    assert tool_results(user("hello")) == []


@pytest.mark.parametrize(
    ("result", "answer"),
    [
        ((TIME_TOOL, {}, "12:00 (Monday, UTC)"), "The current time is 12:00 (Monday, UTC)."),
        ((CALC_TOOL, {"expression": "6*7"}, "42"), "`6*7` = 42"),
        (
            (CALC_TOOL, {"expression": "1/0"}, "Error: division by zero"),
            "The calculator could not do that: division by zero.",
        ),
        (
            (TIME_TOOL, {"timezone": "Mars/Base"}, "Error: Unknown time zone 'Mars/Base'."),
            "The clock could not tell the time: Unknown time zone 'Mars/Base'.",
        ),
        (
            (TIME_TOOL, {}, "The user denied this tool call; it was not run."),
            "The tool call was denied, so I cannot tell you the time.",
        ),
        (
            (CALC_TOOL, {"expression": "2+2"}, "The call was not run: the reply ended."),
            "The tool call did not run, so I cannot calculate `2+2`.",
        ),
        (("web_search", {}, "Some page"), "The tool `web_search` returned:\n\nSome page"),
    ],
)
def test_tool_answer_text(result, answer):
    assert tool_answer_text([result]) == answer
