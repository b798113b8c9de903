"""The websocket consumer and the reply task, against a scripted upstream on loopback."""

import asyncio

import pytest
from channels.db import DatabaseSyncToAsync, database_sync_to_async
from django.db.backends.utils import CursorWrapper
from scripted_upstream import (
    cut_stream,
    error_after,
    requests_of,
    status_error,
    text_stream,
    tokens,
    tool_call_stream,
)
from sockets import (
    SITE_ORIGIN,
    ends_reply,
    messages_of,
    receive_until,
    send,
    session_cookie,
    socket_to,
    text_of,
    words,
)

from conversations.models import Message
from conversations.page import CLOSE_LOGGED_OUT, CLOSE_NOT_FOUND
from conversations.runtime import runtime

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_message_streams_a_reply_that_is_stored_once(
    start_upstream, conversation, user, connect
):
    pieces = ["Hello", ", ", "world", "! <b>bold</b>"]
    server = await start_upstream(text_stream(pieces, delay=0.01))
    socket = await connect(conversation, user)

    await send(socket, action="send", content="Hi there", HEADERS={"HX-Request": "true"})
    frames = await receive_until(socket, ends_reply)

    # The user's message and the empty streaming reply are appended first.
    assert 'hx-swap-oob="beforeend:#messages"' in frames[0]
    assert 'data-role="user"' in frames[0] and "Hi there" in frames[0]
    assert 'data-status="streaming"' in frames[0]
    # Deltas add up to exactly what the upstream sent; its HTML is shown as text.
    assert text_of(frames[1:-1]) == "Hello, world! <b>bold</b>"
    assert "<b>" not in "".join(frames)
    assert 'data-status="complete"' in frames[-1]

    user_message, reply = await messages_of(conversation)
    assert (user_message.role, user_message.content) == ("user", "Hi there")
    assert reply.role == "assistant"
    assert reply.content == "".join(pieces)
    assert reply.status == Message.Status.COMPLETE
    assert reply.finish_reason == "stop"
    assert (reply.prompt_tokens, reply.completion_tokens, reply.total_tokens) == (7, 4, 11)
    assert reply.finished_at is not None

    request = requests_of(server)[0]
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert request["model"] == "test-model"
    assert request["messages"] == [{"role": "user", "content": "Hi there"}]
    await socket.disconnect()


async def test_history_and_system_prompt_are_sent_upstream(
    start_upstream, conversation, user, connect
):
    conversation.system_prompt = "Be brief."
    await database_sync_to_async(conversation.save)()
    server = await start_upstream(text_stream(["One."]))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="first")
    await receive_until(socket, ends_reply)
    await send(socket, action="send", content="second")
    await receive_until(socket, ends_reply)

    assert requests_of(server)[1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": "second"},
    ]
    await socket.disconnect()


class CallCounter:
    """Counts the calls of ``owner.name``, from every thread."""

    def __init__(self, monkeypatch, owner, name: str):
        self.count = 0
        original = getattr(owner, name)

        def counting(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counting)


def counting_statements(monkeypatch) -> CallCounter:
    """Counts SQL statements from every thread (database_sync_to_async uses a pool)."""
    return CallCounter(monkeypatch, CursorWrapper, "_execute")


def counting_trips(monkeypatch) -> CallCounter:
    """Counts trips to the database thread (calls made through database_sync_to_async)."""
    return CallCounter(monkeypatch, DatabaseSyncToAsync, "thread_handler")


async def test_a_message_reaches_the_upstream_after_one_trip_to_the_database(
    start_upstream, conversation, user, connect, monkeypatch
):
    statements, trips, at_request = (
        counting_statements(monkeypatch),
        counting_trips(monkeypatch),
        [],
    )
    stream = text_stream(["counted"])

    async def noting(exchange):
        at_request.append((trips.count, statements.count))
        await stream(exchange)

    await start_upstream(noting)
    socket = await connect(conversation, user)
    trips.count = statements.count = 0
    await send(socket, action="send", content="count")
    frames = await receive_until(socket, ends_reply)
    await socket.disconnect()

    print(f"from send to the upstream request: {at_request}")
    # The session check, the rows and the prompt, in one trip; nothing else first.
    assert len(at_request) == 1
    assert at_request[0][0] == 1
    assert at_request[0][1] <= 13
    assert "counted" in text_of(frames)


async def run_reply(start_upstream, conversation, user, connect, pieces, counter) -> list[str]:
    """One reply, counting the SQL statements from the message sent to the reply stored."""
    await start_upstream(text_stream(pieces))
    socket = await connect(conversation, user)
    counter.count = 0
    await send(socket, action="send", content="count")
    frames = await receive_until(socket, ends_reply, seconds=30)
    counter.counted = counter.count
    await socket.disconnect()
    return frames


async def test_database_work_does_not_grow_with_the_reply(
    start_upstream, conversation, user, connect, monkeypatch
):
    counter = counting_statements(monkeypatch)
    await run_reply(start_upstream, conversation, user, connect, tokens(5), counter)
    short = counter.counted
    frames = await run_reply(start_upstream, conversation, user, connect, tokens(500), counter)
    long = counter.counted

    print(f"statements per reply: {short} (5 tokens), {long} (500 tokens)")
    assert long == short
    assert long <= 16
    reply = (await messages_of(conversation))[-1]
    assert reply.content == "".join(tokens(500))
    assert reply.completion_tokens == 500
    # Coalesced: far fewer frames than tokens, and nothing lost on the way.
    assert len(frames) < 500
    assert text_of(frames) == words("".join(tokens(500)))


async def test_usage_stays_unknown_when_the_upstream_sends_none(
    start_upstream, conversation, user, connect
):
    await start_upstream(text_stream(["no usage"], usage=False))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    await receive_until(socket, ends_reply)
    reply = (await messages_of(conversation))[-1]
    assert reply.status == Message.Status.COMPLETE
    assert (reply.prompt_tokens, reply.completion_tokens, reply.total_tokens) == (None, None, None)
    await socket.disconnect()


async def test_an_upstream_error_is_shown_inline_and_stored(
    start_upstream, conversation, user, connect
):
    await start_upstream(status_error(404, "The model `test-model` does not exist"))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    frames = await receive_until(socket, ends_reply)

    assert 'data-status="failed"' in frames[-1]
    assert "The model `test-model` does not exist" in frames[-1]
    user_message, reply = await messages_of(conversation)
    assert user_message.content == "hi"
    assert reply.status == Message.Status.FAILED
    assert "does not exist" in reply.error
    await socket.disconnect()


async def test_an_error_mid_stream_keeps_the_text(start_upstream, conversation, user, connect):
    await start_upstream(error_after(["Partial ", "answer"], "The server overloaded"))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    frames = await receive_until(socket, ends_reply)
    assert "The server overloaded" in frames[-1]
    reply = (await messages_of(conversation))[-1]
    assert (reply.status, reply.content) == (Message.Status.FAILED, "Partial answer")
    await socket.disconnect()


async def test_a_cut_stream_is_interrupted_with_its_text_kept(
    start_upstream, conversation, user, connect
):
    await start_upstream(cut_stream(["Half ", "a reply"]))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    frames = await receive_until(socket, ends_reply)
    assert 'data-status="interrupted"' in frames[-1]
    reply = (await messages_of(conversation))[-1]
    assert (reply.status, reply.content) == (Message.Status.INTERRUPTED, "Half a reply")
    await socket.disconnect()


async def test_tool_calls_are_stored_and_shown(start_upstream, conversation, user, connect):
    await start_upstream(tool_call_stream())
    socket = await connect(conversation, user)
    await send(socket, action="send", content="weather?")
    frames = await receive_until(socket, ends_reply)
    assert "get_weather" in frames[-1]
    reply = (await messages_of(conversation))[-1]
    assert reply.finish_reason == "tool_calls"
    assert reply.tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    await socket.disconnect()


async def test_stop_closes_the_upstream_and_keeps_the_text(
    start_upstream, conversation, user, connect
):
    hold = asyncio.Event()
    server = await start_upstream(text_stream(["First words", " never"], hold=hold))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    await receive_until(socket, lambda f: "First words" in f)
    await send(socket, action="stop")
    frames = await receive_until(socket, ends_reply)

    assert 'data-status="stopped"' in frames[-1]
    await asyncio.wait_for(server.exchanges[0].disconnected.wait(), 1)
    reply = (await messages_of(conversation))[-1]
    assert (reply.status, reply.content) == (Message.Status.STOPPED, "First words")
    hold.set()
    await socket.disconnect()


async def test_closing_the_socket_does_not_cancel_the_reply(
    start_upstream, conversation, user, connect
):
    hold = asyncio.Event()
    await start_upstream(text_stream(["kept ", "going"], hold=hold))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="hi")
    await receive_until(socket, lambda f: "kept" in f)
    await socket.disconnect()
    hold.set()
    (reply_stream,) = runtime.replies.values()
    await asyncio.wait_for(reply_stream.task, 5)
    reply = (await messages_of(conversation))[-1]
    assert (reply.status, reply.content) == (Message.Status.COMPLETE, "kept going")


async def test_a_late_socket_gets_a_snapshot_then_exactly_what_follows(
    start_upstream, conversation, user, connect
):
    hold = asyncio.Event()
    await start_upstream(text_stream(["one ", "two ", "three"], hold=hold, delay=0.01))
    first = await connect(conversation, user)
    await send(first, action="send", content="hi")
    await receive_until(first, lambda f: "one" in f)

    late = await connect(conversation, user)
    await send(late, action="sync", since=10**9)
    snapshot = await receive_until(late, lambda f: 'id="turn-' in f)
    assert text_of(snapshot[-1:]) == "one"  # the text so far, in the whole message element
    hold.set()
    frames = await receive_until(late, ends_reply)
    assert text_of(snapshot[-1:] + frames[:-1]) == "one two three"
    await first.disconnect()
    await late.disconnect()


async def test_a_second_send_while_a_reply_streams_is_refused(
    start_upstream, conversation, user, connect
):
    hold = asyncio.Event()
    await start_upstream(text_stream(["busy"], hold=hold))
    tab_one = await connect(conversation, user)
    tab_two = await connect(conversation, user)
    await send(tab_one, action="send", content="first")
    await receive_until(tab_two, lambda f: "busy" in f)
    await send(tab_two, action="send", content="second")
    frames = await receive_until(tab_two, lambda f: "notices" in f)
    assert "still being written" in frames[-1]
    assert 'data-refused="send"' in frames[-1]
    hold.set()
    await receive_until(tab_one, ends_reply)
    contents = [m.content for m in await messages_of(conversation)]
    assert contents == ["first", "busy"]
    await tab_one.disconnect()
    await tab_two.disconnect()


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("not json", "not valid JSON"),
        ('["send"]', "Unknown action"),
        ('{"action": "dance"}', "Unknown action"),
        ('{"action": "send", "content": "   "}', "Type a message first"),
        ('{"action": "send", "content": 42}', "Type a message first"),
    ],
)
async def test_bad_frames_get_a_clear_message_and_the_socket_stays_usable(
    start_upstream, conversation, user, connect, frame, expected
):
    await start_upstream(text_stream(["fine"]))
    socket = await connect(conversation, user)
    await socket.send_to(text_data=frame)
    notice = await socket.receive_from()
    assert expected in notice
    await send(socket, action="send", content="still works")
    await receive_until(socket, ends_reply)
    assert [m.content for m in await messages_of(conversation)] == ["still works", "fine"]
    await socket.disconnect()


async def test_an_oversized_message_is_refused_before_anything_is_stored(
    start_upstream, conversation, user, connect, settings
):
    settings.CHAT_MAX_MESSAGE_CHARS = 100
    server = await start_upstream(text_stream(["x"]))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="y" * 101)
    notice = await socket.receive_from()
    assert "the limit is 100" in notice
    assert await messages_of(conversation) == []
    assert server.exchanges == []
    await socket.disconnect()


async def test_sockets_need_a_logged_in_owner(conversation, other_user):
    cases = [
        ([], CLOSE_LOGGED_OUT),  # no session
        ([(b"cookie", await session_cookie(other_user))], CLOSE_NOT_FOUND),  # not the owner
    ]
    for cookie, code in cases:
        communicator = socket_to(conversation.pk, [*SITE_ORIGIN, *cookie])
        connected, _ = await communicator.connect()
        assert connected  # accepted, so the close code reaches the client
        assert await communicator.receive_output() == {"type": "websocket.close", "code": code}
