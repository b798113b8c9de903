"""The reply task's lifecycle: retries, timeouts, stop, checkpoints, continue, shutdown, orphans."""

import asyncio
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone
from scripted_upstream import (
    cut_stream,
    error_after,
    requests_of,
    sequence,
    silent,
    status_error,
    text_stream,
)
from sockets import ends_reply, eventually, messages_of, receive_until, send, text_of, words

from conversations.models import Message
from conversations.runtime import ORPHAN_ERROR, SHUTDOWN_ERROR, runtime

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def quick_retries(settings):
    settings.CHAT_RETRY_ATTEMPTS = 3
    settings.CHAT_RETRY_BASE_DELAY = 0.02
    settings.CHAT_RETRY_MAX_WAIT = 5.0


async def reply_to(socket, content="hi", seconds=10.0):
    await send(socket, action="send", content=content)
    return await receive_until(socket, ends_reply, seconds=seconds)


# --- retries ------------------------------------------------------------------


async def test_a_busy_upstream_is_retried_honouring_retry_after(
    start_upstream, conversation, user, connect
):
    busy = status_error(429, "Rate limit reached", {"Retry-After": "0.2"})
    server = await start_upstream(sequence(busy, busy, text_stream(["Finally"])))
    socket = await connect(conversation, user)
    started = asyncio.get_running_loop().time()
    frames = await reply_to(socket)
    elapsed = asyncio.get_running_loop().time() - started

    assert len(server.exchanges) == 3
    assert elapsed >= 0.4  # waited as the upstream asked, twice
    notices = [f for f in frames if "Retrying in" in f]
    assert notices and "Rate limit reached" in notices[0] and "429" in notices[0]
    assert 'data-status="complete"' in frames[-1]
    reply = (await messages_of(conversation))[-1]
    assert (reply.status, reply.content) == (Message.Status.COMPLETE, "Finally")
    await socket.disconnect()


async def test_retries_are_bounded_and_the_last_error_is_shown(
    start_upstream, conversation, user, connect
):
    server = await start_upstream(status_error(503, "Model is loading"))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    assert len(server.exchanges) == 3  # CHAT_RETRY_ATTEMPTS
    assert 'data-status="failed"' in frames[-1]
    assert "Model is loading" in frames[-1]
    await socket.disconnect()


async def test_a_retry_after_beyond_the_wait_limit_is_not_waited_for(
    start_upstream, conversation, user, connect
):
    server = await start_upstream(status_error(429, "Slow down", {"Retry-After": "3600"}))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    assert len(server.exchanges) == 1
    assert "Slow down" in frames[-1]
    await socket.disconnect()


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_key_is_not_retried_and_says_so(
    start_upstream, conversation, user, connect, status
):
    server = await start_upstream(status_error(status, "Incorrect API key provided"))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    assert len(server.exchanges) == 1
    assert "API key" in frames[-1]
    assert 'data-status="failed"' in frames[-1]
    await socket.disconnect()


async def test_an_unknown_model_is_named(start_upstream, conversation, user, connect):
    server = await start_upstream(status_error(404, "Not Found"))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    assert len(server.exchanges) == 1
    assert "test-model" in frames[-1]
    await socket.disconnect()


async def test_nothing_is_retried_once_a_token_arrived(start_upstream, conversation, user, connect):
    failing = error_after(["Some text"], "Internal server error")
    server = await start_upstream(sequence(failing, text_stream(["duplicate!"])))
    socket = await connect(conversation, user)
    await reply_to(socket)
    assert len(server.exchanges) == 1
    reply = (await messages_of(conversation))[-1]
    assert (reply.status, reply.content) == (Message.Status.FAILED, "Some text")
    await socket.disconnect()


async def test_connection_refused_is_retried_then_reported(conversation, user, connect, settings):
    import socket as sockets

    with sockets.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    assert any("Retrying in" in f for f in frames)
    assert "connection refused" in frames[-1]
    assert 'data-status="failed"' in frames[-1]
    await socket.disconnect()


# --- timeouts -------------------------------------------------------------------


async def test_an_upstream_that_goes_quiet_is_interrupted(
    start_upstream, conversation, user, connect, settings
):
    settings.CHAT_UPSTREAM_IDLE_TIMEOUT = 0.3
    hold = asyncio.Event()
    await start_upstream(text_stream(["Before the silence"], hold=hold))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    assert 'data-status="interrupted"' in frames[-1]
    reply = (await messages_of(conversation))[-1]
    assert (reply.status, reply.content) == (Message.Status.INTERRUPTED, "Before the silence")
    hold.set()
    await socket.disconnect()


async def test_a_reply_has_an_overall_time_limit(
    start_upstream, conversation, user, connect, settings
):
    settings.CHAT_REPLY_TIMEOUT = 0.5
    await start_upstream(text_stream(["tick "] * 50, delay=0.05))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    assert "0.5-second limit" in frames[-1]
    reply = (await messages_of(conversation))[-1]
    assert reply.status == Message.Status.INTERRUPTED
    assert reply.content.startswith("tick tick ")
    assert words(reply.content) == text_of(frames)
    await socket.disconnect()


# --- stop -------------------------------------------------------------------------


async def test_stop_before_the_first_token(start_upstream, conversation, user, connect):
    hold = asyncio.Event()
    server = await start_upstream(silent(hold))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    await receive_until(socket, lambda f: 'data-status="streaming"' in f)

    async def upstream_asked():
        return bool(server.exchanges)

    await eventually(upstream_asked)
    await send(socket, action="stop")
    frames = await receive_until(socket, ends_reply)
    assert 'data-status="stopped"' in frames[-1]
    await asyncio.wait_for(server.exchanges[0].disconnected.wait(), 1)
    reply = (await messages_of(conversation))[-1]
    assert (reply.status, reply.content) == (Message.Status.STOPPED, "")
    hold.set()
    await socket.disconnect()


async def test_stop_from_another_tab(start_upstream, conversation, user, connect):
    hold = asyncio.Event()
    await start_upstream(text_stream(["Partial"], hold=hold))
    writer = await connect(conversation, user)
    other = await connect(conversation, user)
    await send(writer, action="send", content="hi")
    await receive_until(other, lambda f: "Partial" in f)
    await send(other, action="stop")
    for socket in (writer, other):
        frames = await receive_until(socket, ends_reply)
        assert 'data-status="stopped"' in frames[-1]
    hold.set()
    await writer.disconnect()
    await other.disconnect()


async def test_stop_with_nothing_streaming_says_so(start_upstream, conversation, user, connect):
    socket = await connect(conversation, user)
    await send(socket, action="stop")
    assert "no reply to stop" in await socket.receive_from()
    await socket.disconnect()


# --- checkpoints, continue, regenerate --------------------------------------------


async def test_a_long_reply_is_checkpointed_by_time(
    start_upstream, conversation, user, connect, settings
):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.1
    hold = asyncio.Event()
    await start_upstream(text_stream(["Saved so far", " and the rest"], hold=hold))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    await receive_until(socket, lambda f: "Saved so far" in f)

    async def saved():
        return (await messages_of(conversation))[-1].content != ""

    await eventually(saved)
    reply = (await messages_of(conversation))[-1]
    assert (reply.status, reply.content) == (Message.Status.STREAMING, "Saved so far")
    assert reply.checkpoint_at is not None
    hold.set()
    await receive_until(socket, ends_reply)
    reply = (await messages_of(conversation))[-1]
    assert (reply.status, reply.content) == (Message.Status.COMPLETE, "Saved so far and the rest")
    await socket.disconnect()


async def test_an_interrupted_reply_can_be_continued_in_place(
    start_upstream, conversation, user, connect
):
    server = await start_upstream(
        sequence(cut_stream(["Half ", "a reply"]), text_stream([", and the rest."]))
    )
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    assert "Continue" in frames[-1]
    reply = (await messages_of(conversation))[-1]

    await send(socket, action="continue", message_id=str(reply.pk))
    frames = await receive_until(socket, ends_reply)
    assert 'data-status="streaming"' in frames[0] and "Half a reply" in frames[0]
    assert text_of(frames) == "Half a reply, and the rest."
    assert 'data-status="complete"' in frames[-1]

    messages = await messages_of(conversation)
    assert [m.content for m in messages] == ["hi", "Half a reply, and the rest."]
    assert messages[-1].pk == reply.pk
    prompt = requests_of(server)[1]["messages"]
    assert prompt[-2] == {"role": "assistant", "content": "Half a reply"}
    assert prompt[-1]["role"] == "user" and "Continue" in prompt[-1]["content"]
    await socket.disconnect()


@pytest.mark.parametrize(
    ("finish_reason", "says", "offers_continue"),
    [
        ("length", "cut off at the model's token limit", True),
        ("content_filter", "content filter stopped this reply", False),
    ],
)
async def test_how_a_reply_finished_is_shown(
    start_upstream, conversation, user, connect, finish_reason, says, offers_continue
):
    await start_upstream(text_stream(["Some text"], finish_reason=finish_reason))
    socket = await connect(conversation, user)
    frames = await reply_to(socket)
    assert 'data-status="complete"' in frames[-1]
    assert says in frames[-1]
    assert ('value="continue"' in frames[-1]) is offers_continue
    reply = (await messages_of(conversation))[-1]
    assert reply.finish_reason == finish_reason
    await socket.disconnect()


async def test_a_complete_reply_cannot_be_continued(start_upstream, conversation, user, connect):
    await start_upstream(text_stream(["Done."]))
    socket = await connect(conversation, user)
    await reply_to(socket)
    reply = (await messages_of(conversation))[-1]
    await send(socket, action="continue", message_id=reply.pk)
    assert "nothing to continue" in await socket.receive_from()
    await send(socket, action="continue", message_id="nonsense")
    assert "Only the latest reply" in await socket.receive_from()
    await socket.disconnect()


async def test_regenerate_shows_a_new_version_and_keeps_the_old(
    start_upstream, conversation, user, connect
):
    server = await start_upstream(sequence(text_stream(["First try"]), text_stream(["Second"])))
    socket = await connect(conversation, user)
    await reply_to(socket)
    old = (await messages_of(conversation))[-1]
    await send(socket, action="regenerate", message_id=old.pk)
    frames = await receive_until(socket, ends_reply)
    assert f'id="turn-{old.pk}" hx-swap-oob="delete"' in frames[0]
    assert [m.content for m in await messages_of(conversation)] == ["hi", "First try", "Second"]
    assert requests_of(server)[1]["messages"] == [{"role": "user", "content": "hi"}]
    assert "2 / 2" in frames[-1] and "Previous version" in frames[-1]

    # Previous version: every page of the conversation shows the first try again.
    other = await connect(conversation, user)
    await send(socket, action="switch", message_id=old.pk)
    for page in (socket, other):
        frame = await page.receive_from()
        new = (await messages_of(conversation))[-1]
        assert f'id="turn-{new.pk}" hx-swap-oob="delete"' in frame
        assert "First try" in frame and "1 / 2" in frame and "Next version" in frame
    await socket.disconnect()
    await other.disconnect()


async def test_edit_resends_on_a_new_branch_and_switching_restores_the_first(
    start_upstream, conversation, user, connect
):
    server = await start_upstream(
        sequence(text_stream(["One"]), text_stream(["Two"]), text_stream(["Edited"]))
    )
    socket = await connect(conversation, user)
    await reply_to(socket, "first")
    await reply_to(socket, "second")
    first, one, second, two = await messages_of(conversation)
    await send(socket, action="edit", message_id=second.pk, content="second, better")
    frames = await receive_until(socket, ends_reply)
    for gone in (second, two):
        assert f'id="turn-{gone.pk}" hx-swap-oob="delete"' in frames[0]
    assert requests_of(server)[2]["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "One"},
        {"role": "user", "content": "second, better"},
    ]
    *_, edited, reply = await messages_of(conversation)
    assert (edited.content, edited.parent_id, reply.content) == ("second, better", one.pk, "Edited")
    assert "2 / 2" in frames[0] and ">Edit<" in frames[0]

    await send(socket, action="switch", message_id=second.pk)
    frame = await socket.receive_from()
    assert "1 / 2" in frame and "Two" in frame
    # Refusals: an edit to nothing, a version while a reply is written.
    await send(socket, action="edit", message_id=first.pk, content=" ")
    assert "Type a message first" in await socket.receive_from()
    await socket.disconnect()


async def test_a_page_that_was_away_learns_of_a_regenerated_reply(
    start_upstream, conversation, user, connect
):
    await start_upstream(sequence(text_stream(["First try"]), text_stream(["Second"])))
    socket = await connect(conversation, user)
    await reply_to(socket)
    sent, old = await messages_of(conversation)
    await send(socket, action="regenerate", message_id=old.pk)
    await receive_until(socket, ends_reply)
    await socket.disconnect()

    # A tab that was offline meanwhile still shows the old reply; on reconnect it says so.
    away = await connect(conversation, user)
    await send(away, action="sync", since=old.pk, shown=[sent.pk, old.pk])
    frames = [await away.receive_from(), await away.receive_from()]
    assert f'id="turn-{old.pk}" hx-swap-oob="delete"' in frames[0]
    assert "Second" in frames[1] and 'hx-swap-oob="beforeend:#messages"' in frames[1]
    await away.disconnect()


# --- shutdown and orphans ----------------------------------------------------------


async def test_shutdown_stores_running_replies_as_interrupted(
    start_upstream, conversation, user, connect
):
    hold = asyncio.Event()
    await start_upstream(text_stream(["Written before shutdown"], hold=hold))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    await receive_until(socket, lambda f: "Written before shutdown" in f)
    await runtime.shutdown()
    frames = await receive_until(socket, ends_reply)
    assert 'data-status="interrupted"' in frames[-1]
    # Then the socket closes with 1001, so the page reconnects (to the restarted site).
    assert await socket.receive_output(2) == {"type": "websocket.close", "code": 1001}
    reply = (await messages_of(conversation))[-1]
    assert reply.status == Message.Status.INTERRUPTED
    assert reply.content == "Written before shutdown"
    assert reply.error == SHUTDOWN_ERROR
    assert runtime.replies == {}
    hold.set()
    await socket.disconnect()


@database_sync_to_async
def orphan(conversation, seconds_ago: float) -> Message:
    return Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        content="Checkpointed text",
        checkpoint_at=timezone.now() - timedelta(seconds=seconds_ago),
    )


async def test_an_orphaned_reply_is_interrupted_when_the_conversation_is_opened(
    conversation, user, connect
):
    lost = await orphan(conversation, seconds_ago=60)
    socket = await connect(conversation, user)
    await send(socket, action="sync", since=lost.pk)
    frame = await socket.receive_from()
    assert f'id="message-{lost.pk}"' in frame and 'data-status="interrupted"' in frame
    (stored,) = await messages_of(conversation)
    assert (stored.status, stored.content) == (Message.Status.INTERRUPTED, "Checkpointed text")
    assert stored.error == ORPHAN_ERROR
    await socket.disconnect()


async def test_a_recent_orphan_is_found_once_its_checkpoint_is_stale(
    conversation, user, connect, settings
):
    settings.CHAT_ORPHAN_AFTER = 0.3
    settings.CHAT_CHECKPOINT_INTERVAL = 0.1
    lost = await orphan(conversation, seconds_ago=0)
    socket = await connect(conversation, user)
    await send(socket, action="sync", since=lost.pk)
    frames = await receive_until(socket, ends_reply, seconds=3)
    assert 'data-status="interrupted"' in frames[-1]
    await socket.disconnect()


async def test_a_live_reply_is_never_taken_for_an_orphan(
    start_upstream, conversation, user, connect, settings
):
    settings.CHAT_ORPHAN_AFTER = 0.2
    settings.CHAT_CHECKPOINT_INTERVAL = 0.05
    hold = asyncio.Event()
    await start_upstream(text_stream(["alive"], hold=hold))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    await receive_until(socket, lambda f: "alive" in f)
    await asyncio.sleep(0.5)  # longer than CHAT_ORPHAN_AFTER: not synchronisation
    assert await database_sync_to_async(runtime.sweep_orphans)(conversation.pk) == []
    hold.set()
    frames = await receive_until(socket, ends_reply)
    assert 'data-status="complete"' in frames[-1]
    await socket.disconnect()


# --- what the final write gets ------------------------------------------------------


def raw_events(*data: str):
    """Streams each ``data`` string as an SSE event, as it is (JSON escapes kept)."""

    async def handler(exchange) -> None:
        await exchange.start()
        for item in data:
            await exchange.write(f"data: {item}\n\n")

    return handler


CHUNK = '{{"choices": [{{"index": 0, "delta": {delta}, "finish_reason": {finish}}}]{usage}}}'


async def test_unstorable_text_and_absurd_usage_still_end_in_a_stored_reply(
    start_upstream, conversation, user, connect
):
    await start_upstream(
        raw_events(
            CHUNK.format(
                delta='{"content": "lone \\ud800 and nul \\u0000 "}', finish="null", usage=""
            ),
            CHUNK.format(delta='{"reasoning": "x\\udfff"}', finish="null", usage=""),
            CHUNK.format(
                delta='{"content": "fine \\ud83d\\ude00"}',
                finish='"' + "stop" * 20 + '"',
                usage=', "usage": {"prompt_tokens": -5, "completion_tokens": 3, '
                '"total_tokens": 1e99}',
            ),
            "[DONE]",
        )
    )
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    frames = await receive_until(socket, ends_reply)
    assert 'data-status="complete"' in frames[-1]
    reply = (await messages_of(conversation))[-1]
    assert reply.status == Message.Status.COMPLETE
    assert reply.content == "lone \ufffd and nul \ufffd fine \U0001f600"
    assert reply.reasoning == "x\ufffd"
    assert (reply.prompt_tokens, reply.completion_tokens, reply.total_tokens) == (None, 3, None)
    assert reply.finish_reason == ("stop" * 20)[:32]
    await socket.disconnect()


async def test_a_failing_final_write_still_keeps_the_text(
    start_upstream, conversation, user, connect, monkeypatch
):
    await start_upstream(text_stream(["Kept ", "text"]))
    finish = Message.finish
    calls = []

    def failing_once(self, **fields):
        calls.append(fields["status"])
        if len(calls) == 1:
            raise ValueError("the database refused it")
        return finish(self, **fields)

    monkeypatch.setattr(Message, "finish", failing_once)
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    frames = await receive_until(socket, ends_reply)
    assert calls == [Message.Status.COMPLETE, Message.Status.FAILED]
    assert 'data-status="failed"' in frames[-1] and "could not be stored whole" in frames[-1]
    reply = (await messages_of(conversation))[-1]
    assert (reply.status, reply.content) == (Message.Status.FAILED, "Kept text")
    await socket.disconnect()
