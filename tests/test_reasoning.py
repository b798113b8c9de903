"""Reasoning models through the reply task: shown live above the answer, stored, resumable,
never sent back upstream; and a server that refuses stream_options."""

import asyncio

import pytest
from scripted_upstream import (
    reasoning_stream,
    refuses_stream_options,
    requests_of,
    sequence,
    text_stream,
)
from sockets import ends_reply, messages_of, receive_until, send, text_of

from conversations.models import Message

pytestmark = pytest.mark.django_db(transaction=True)


async def reply_to(socket, content="hi"):
    await send(socket, action="send", content=content)
    return await receive_until(socket, ends_reply)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "reasoning_text"])
async def test_reasoning_streams_above_the_answer_and_is_stored(
    start_upstream, conversation, user, connect, field
):
    server = await start_upstream(
        sequence(
            reasoning_stream(
                ["Let me ", "think **hard**."], ["The ", "answer."], field=field, delay=0.01
            ),
            text_stream(["Next."]),
        )
    )
    socket = await connect(conversation, user)
    frames = await reply_to(socket)

    first_reasoning = next(i for i, f in enumerate(frames) if 'data-part="reasoning"' in f)
    first_answer = next(i for i, f in enumerate(frames) if "answer" in text_of(frames[: i + 1]))
    assert first_reasoning < first_answer  # thinking shows while the model thinks
    assert "Thinking…" in frames[first_reasoning] and " open" in frames[first_reasoning]
    assert text_of(frames, reasoning=True) == "Let me think hard."
    assert text_of(frames[:-1]) == "The answer."  # the message element: the answer alone
    assert "Thought for" in "".join(frames[first_reasoning : first_answer + 1])
    final = frames[-1]
    assert 'data-status="complete"' in final and "Thought for" in final
    assert "<strong>hard</strong>" in final  # Markdown, through the same sanitizer

    reply = (await messages_of(conversation))[-1]
    assert (reply.content, reply.reasoning) == ("The answer.", "Let me think **hard**.")
    assert reply.reasoning_seconds is not None and reply.reasoning_seconds >= 0

    await reply_to(socket, "And then?")
    history = requests_of(server)[1]["messages"]
    assert {"role": "assistant", "content": "The answer."} in history
    assert "think" not in str(history)  # reasoning is never sent back
    await socket.disconnect()


async def test_reasoning_tokens_are_stored_with_the_usage(
    start_upstream, conversation, user, connect
):
    await start_upstream(reasoning_stream(["Hm."], ["Yes."], reasoning_tokens=1))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    reply = (await messages_of(conversation))[-1]
    assert (reply.completion_tokens, reply.reasoning_tokens) == (2, 1)
    assert "1 of them reasoning" in frames[-1]
    await socket.disconnect()


async def test_inline_think_tags_split_at_every_character(
    start_upstream, conversation, user, connect
):
    text = "\n<think>\nI ponder this.\n</think>\n\nThe answer."
    await start_upstream(text_stream(list(text)))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    reply = (await messages_of(conversation))[-1]
    assert reply.content == "The answer."
    assert reply.reasoning.strip() == "I ponder this."
    assert text_of(frames[:-1]) == "The answer."
    assert "think>" not in "".join(frames)
    await socket.disconnect()


async def test_text_before_a_lone_closing_tag_becomes_reasoning(
    start_upstream, conversation, user, connect
):
    await start_upstream(text_stream(["I ponder", " this.</th", "ink>\n\nThe ", "answer."]))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    reply = (await messages_of(conversation))[-1]
    assert (reply.content, reply.reasoning.strip()) == ("The answer.", "I ponder this.")
    assert text_of(frames[:-1]) == "The answer."  # the page moved what it showed
    assert text_of(frames[:-1], reasoning=True) == "I ponder this."
    await socket.disconnect()


async def test_a_socket_that_joins_mid_reasoning_continues_exactly(
    start_upstream, conversation, user, connect
):
    hold = asyncio.Event()
    pieces = ["step one, ", "step two, ", "step three."]
    await start_upstream(reasoning_stream(pieces, ["Done."], hold=hold, delay=0.01))
    first = await connect(conversation, user)
    await send(first, action="send", content="hi")
    await receive_until(first, lambda f: "step one" in f)

    late = await connect(conversation, user)
    await send(late, action="sync", since=10**9)
    snapshot = await receive_until(late, lambda f: 'id="turn-' in f)
    assert text_of(snapshot[-1:], reasoning=True) == "step one,"
    assert 'data-thought="thinking"' in snapshot[-1]
    hold.set()
    frames = snapshot[-1:] + await receive_until(late, ends_reply)
    assert text_of(frames[:-1], reasoning=True) == "step one, step two, step three."
    assert text_of(frames[:-1]) == "Done."
    await first.disconnect()
    await late.disconnect()


async def test_a_stopped_reply_keeps_its_reasoning(start_upstream, conversation, user, connect):
    hold = asyncio.Event()
    await start_upstream(reasoning_stream(["Thinking about it"], ["never"], hold=hold))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    await receive_until(socket, lambda f: "Thinking about it" in f)
    await send(socket, action="stop")
    frames = await receive_until(socket, ends_reply)
    assert 'data-status="stopped"' in frames[-1] and "Thinking about it" in frames[-1]
    reply = (await messages_of(conversation))[-1]
    assert (reply.status, reply.content, reply.reasoning) == (
        Message.Status.STOPPED,
        "",
        "Thinking about it",
    )
    assert reply.reasoning_seconds is not None
    hold.set()
    await socket.disconnect()


async def test_reasoning_is_checkpointed_while_streaming(
    start_upstream, conversation, user, connect, settings
):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.05
    hold = asyncio.Event()
    await start_upstream(reasoning_stream(["Saved thought"], ["Answer"], hold=hold))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    await receive_until(socket, lambda f: "Saved thought" in f)
    async with asyncio.timeout(5):
        while (await messages_of(conversation))[-1].reasoning != "Saved thought":  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    hold.set()
    await receive_until(socket, ends_reply)
    await socket.disconnect()


async def test_reasoning_can_be_sent_back_when_the_server_wants_it(
    start_upstream, conversation, user, connect, settings
):
    settings.CHAT_SEND_REASONING = True
    server = await start_upstream(reasoning_stream(["Why not."], ["Sure."]))
    socket = await connect(conversation, user)
    await reply_to(socket)
    await reply_to(socket, "More")
    history = requests_of(server)[1]["messages"]
    assert {"role": "assistant", "content": "Sure.", "reasoning_content": "Why not."} in history
    await socket.disconnect()


async def test_a_server_that_refuses_stream_options_is_asked_again_without(
    start_upstream, conversation, user, connect
):
    server = await start_upstream(refuses_stream_options(text_stream(["Fine."])))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    assert 'data-status="complete"' in frames[-1]
    assert [("stream_options" in r) for r in requests_of(server)] == [True, False]
    reply = (await messages_of(conversation))[-1]
    assert (reply.content, reply.total_tokens) == ("Fine.", None)  # usage stays unknown

    await reply_to(socket, "Again")  # remembered: asked without it at once
    assert [("stream_options" in r) for r in requests_of(server)] == [True, False, False]
    await socket.disconnect()
