"""The reply task's pure parts: its accumulator, retry delays, frame spacing, usage sums."""

import pytest

from conversations import events
from conversations.models import Message
from conversations.replies import Reply, add_usage, flush_interval, retry_delay
from conversations.upstream import (
    ConnectError,
    Finish,
    HTTPStatusError,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    TextWasReasoning,
    ToolCallDelta,
    UpstreamError,
    Usage,
)


def test_a_reply_accumulates_text_tool_calls_finish_and_usage():
    reply = Reply(Message(content=""))
    grew = [
        reply.feed(event)
        for event in [
            TextDelta("Hel"),
            RefusalDelta(" no"),
            TextDelta("lo"),
            ToolCallDelta(1, "call_b", "b", "{}"),
            ToolCallDelta(0, "call_a", "a", '{"k"'),
            ToolCallDelta(0, "call_a", "a", ': "v"}'),  # a server repeating id and name
            ToolCallDelta(2, None, None, ""),  # a call sent without an id
            Finish("tool_calls"),
            Usage(1, 2, 3),
        ]
    ]
    assert grew == [True, True, True, False, False, False, False, False, False]
    assert reply.text == "Hel nolo"  # content and refusal as they arrived
    assert [call["id"] for call in reply.tool_calls] == ["call_a", "call_b", "call_2"]
    assert reply.tool_calls[0] == {
        "id": "call_a",
        "type": "function",
        "function": {"name": "a", "arguments": '{"k": "v"}'},
    }
    assert (reply.finish_reason, reply.usage) == ("tool_calls", Usage(1, 2, 3))
    assert Reply(Message()).usage is None and Reply(Message()).finish_reason == ""


def test_calls_all_sent_at_index_0_are_told_apart_by_their_ids():
    reply = Reply(Message(content=""))
    for event in [
        ToolCallDelta(0, "call_a", "a", '{"x": '),
        ToolCallDelta(0, None, None, "1}"),
        ToolCallDelta(0, "call_b", "b", "{}"),
        ToolCallDelta(0, "call_b", None, ""),  # the same call again
    ]:
        reply.feed(event)
    calls = [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in reply.tool_calls]
    assert calls == [("call_a", "a", '{"x": 1}'), ("call_b", "b", "{}")]


def test_a_tool_round_keeps_its_text_calls_and_usage_then_the_reply_goes_on():
    reply = Reply(Message(content=""))
    for event in [
        TextDelta("Looking."),
        ToolCallDelta(0, "dup", "a", "{}"),
        ToolCallDelta(1, "dup", "b", "{}"),  # a server repeating an id across calls
        Finish("tool_calls"),
        Usage(10, 2, 12),
    ]:
        reply.feed(event)
    calls = reply.begin_round()
    assert [(c["id"], c["name"], c["state"]) for c in calls] == [
        ("dup", "a", "asked"),
        ("dup_2", "b", "asked"),
    ]
    reply.next_request()
    assert reply.text == "Looking.\n\n" and reply.rounds[0]["text_end"] == len("Looking.")
    assert reply.tool_calls == [] and reply.finish_reason == ""
    reply.feed(TextDelta("Found."))
    reply.feed(Usage(20, 3, 23))
    assert reply.total_usage == Usage(30, 5, 35)
    # A request without usage makes the sum unknown.
    reply.next_request()
    reply.next_request()
    assert reply.total_usage is None


def test_calls_left_unanswered_keep_how_the_reply_ended():
    reply = Reply(Message(content=""))
    reply.rounds = [
        {
            "text_end": 0,
            "calls": [{"state": s} for s in ("asked", "waiting", "running", "done", "denied")],
        }
    ]
    reply.end_tool_calls("stopped")
    assert [c["state"] for c in reply.rounds[0]["calls"]] == [
        "not_run",
        "not_run",
        "stopped",
        "done",
        "denied",
    ]


def test_a_reply_with_tool_rounds_goes_upstream_as_calls_results_and_the_rest():
    call = {"id": "c1", "name": "box__echo", "arguments": '{"text": "hi"}'}
    rounds = [{"text_end": 8, "calls": [{**call, "state": "done", "result": "hi"}]}]
    message = Message(role="assistant", content="Looking.\n\nIt says hi.", tool_rounds=rounds)
    assert message.to_openai() == [
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "box__echo", "arguments": '{"text": "hi"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "hi"},
        {"role": "assistant", "content": "It says hi."},
    ]
    for state, told in [
        ("error", "Error: boom"),
        ("denied", "The user denied this tool call; it was not run."),
        ("interrupted", "interrupted before it answered"),
        ("not_run", "was not run"),
    ]:
        rounds[0]["calls"][0].update(state=state, result="boom" if state == "error" else "")
        content = Message(role="assistant", content="", tool_rounds=rounds).to_openai()[1]
        assert told in content["content"]
    # Nothing after the last round: no empty assistant message at the end.
    assert len(Message(role="assistant", content="Looking.", tool_rounds=rounds).to_openai()) == 2


def test_a_continued_reply_starts_from_its_stored_text_and_usage():
    stored = Message(content="So far", prompt_tokens=10, completion_tokens=5, total_tokens=15)
    reply = Reply(stored)
    reply.feed(TextDelta(", more"))
    reply.feed(Usage(12, 3, 15))
    assert reply.text == "So far, more"
    assert reply.total_usage == Usage(22, 8, 30)
    assert Reply(Message(content="x")).total_usage is None


def test_usage_adds_up_and_unknown_stays_unknown():
    assert add_usage(None, Usage(1, 2, 3)) == Usage(1, 2, 3)
    assert add_usage(Usage(1, 2, 3), None) is None  # the second request's tokens are unknown
    assert add_usage(None, None) is None
    assert add_usage(Usage(1, None, 3), Usage(4, 5, 6)) == Usage(5, None, 9)


@pytest.fixture
def retries(settings):
    settings.CHAT_RETRY_ATTEMPTS = 4
    settings.CHAT_RETRY_BASE_DELAY = 1.0
    settings.CHAT_RETRY_MAX_WAIT = 30.0


def test_retry_delay_backs_off_with_jitter(retries):
    busy = HTTPStatusError("busy", status_code=503)
    for attempt, (low, high) in enumerate([(0.5, 1), (1, 2), (2, 4)], 1):
        delays = {retry_delay(busy, attempt, 0.0) for _ in range(50)}
        assert all(low <= d <= high for d in delays) and len(delays) > 1
    assert retry_delay(busy, 4, 0.0) is None  # CHAT_RETRY_ATTEMPTS reached


def test_retry_delay_honours_retry_after_within_the_wait_limit(retries):
    assert retry_delay(HTTPStatusError("slow", status_code=429, retry_after=7.5), 1, 0.0) == 7.5
    assert retry_delay(HTTPStatusError("slow", status_code=429, retry_after=-1), 1, 0.0) == 0.0
    late = HTTPStatusError("slow", status_code=429, retry_after=20)
    assert retry_delay(late, 2, 15.0) is None  # 15 s waited + 20 s > CHAT_RETRY_MAX_WAIT


def test_retry_delay_gives_up_on_what_retrying_cannot_fix(retries):
    assert retry_delay(HTTPStatusError("bad key", status_code=401), 1, 0.0) is None
    assert retry_delay(UpstreamError("invalid URL"), 1, 0.0) is None
    assert retry_delay(ConnectError("refused"), 1, 0.0) is not None


def test_flush_interval_grows_with_the_replies_streaming(settings):
    settings.CHAT_FLUSH_MIN_INTERVAL = 0.005
    settings.CHAT_FLUSH_MAX_INTERVAL = 0.1
    settings.CHAT_FLUSH_INTERVAL_PER_REPLY = 0.0005
    assert flush_interval(0) == flush_interval(1) == 0.005
    assert flush_interval(100) == pytest.approx(0.05)
    assert flush_interval(1000) == 0.1


def test_events_travel_as_channel_layer_messages():
    delta = events.ReplyDelta(message_id=3, start=0, end=5, html="<p>x</p>")
    message = delta.as_message()
    assert message == {
        "type": "reply.delta",
        "message_id": 3,
        "start": 0,
        "end": 5,
        "html": "<p>x</p>",
    }
    assert events.parse(message, events.TO_SOCKETS) == delta
    assert events.parse(events.StopReply().as_message(), events.TO_REPLIES) == events.StopReply()
    assert events.parse(message, events.TO_REPLIES) is None
    assert events.parse({"type": "websocket.receive", "text": "{}"}, events.TO_SOCKETS) is None


def test_a_reply_keeps_reasoning_apart_and_times_it():
    reply = Reply(Message(content=""))
    assert reply.feed(ReasoningDelta("Hmm, "))
    assert reply.feed(ReasoningDelta("yes."))
    assert reply.reasoning_seconds is None  # still thinking
    assert reply.feed(TextDelta("Answer"))
    assert (reply.reasoning, reply.text) == ("Hmm, yes.", "Answer")
    assert reply.reasoning_seconds is not None and reply.reasoning_seconds >= 0
    assert not reply.feed(ReasoningDelta(""))


def test_text_that_was_reasoning_moves_over_but_not_a_continued_replys_start():
    reply = Reply(Message(content="Stored start. ", reasoning="Earlier thought."))
    reply.feed(TextDelta("Pondering"))
    assert reply.feed(TextWasReasoning())
    reply.feed(TextDelta("Answer"))
    assert reply.text == "Stored start. Answer"
    assert reply.reasoning == "Earlier thought.Pondering"
    assert reply.reasoning_seconds is not None


def test_usage_adds_reasoning_tokens_too():
    assert add_usage(Usage(1, 2, 3, 1), Usage(1, 2, 3, 2)) == Usage(2, 4, 6, 3)
