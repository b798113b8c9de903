"""Titles the model writes after a conversation's first reply (conversations/titles.py)."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from scripted_upstream import paced_words, requests_of, status_error, text_stream
from sockets import ends_reply, eventually, receive_until, send

from conversations import titles, upstream
from conversations.demo import ChatCompletionsServer, DemoModel, Exchange
from conversations.models import Conversation, UpstreamRequest
from conversations.titles import clean_title

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def titles_on(settings):
    settings.CHAT_GENERATE_TITLES = True  # the site's default; off for the other tests


@pytest.fixture(autouse=True)
async def no_title_left_running(start_upstream):
    """A test that fails midway leaves no title request open when its upstream closes (set
    up after ``start_upstream``, so torn down before it)."""
    yield
    for task in list(titles.tasks):
        task.cancel()
    await asyncio.gather(*titles.tasks, return_exceptions=True)


REPLY = ["The sky ", "is blue ", "because of Rayleigh scattering."]


def answers(content="Why the Sky Is Blue", *, hold: asyncio.Event | None = None):
    """Answers a whole (non-streamed) chat completion with ``content``, once ``hold`` is set."""

    async def handler(exchange: Exchange) -> None:
        if hold is not None:
            await hold.wait()
        message = {"role": "assistant", "content": content}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        body = {"id": "t1", "object": "chat.completion", "model": "m", "choices": [choice]}
        await exchange.respond_json(200, body)

    return handler


def replies_and_titles(titles_handler, replies_handler=None):
    """Streamed requests get the reply, whole ones (``stream: false``) the title."""
    replies_handler = replies_handler or text_stream(REPLY)

    async def handler(exchange: Exchange) -> None:
        if exchange.json.get("stream"):
            await replies_handler(exchange)
        else:
            await titles_handler(exchange)

    return handler


def title_requests(server) -> list[dict]:
    return [r for r in requests_of(server) if not r.get("stream")]


async def titles_settled():
    while titles.tasks:
        await asyncio.gather(*list(titles.tasks))


@database_sync_to_async
def stored(conversation) -> Conversation:
    return Conversation.objects.get(pk=conversation.pk)


def retitles(frame: str) -> bool:
    return 'id="conversation-title"' in frame


async def first_reply(socket, content="Why is the sky blue?"):
    await send(socket, action="send", content=content)
    return await receive_until(socket, ends_reply)


# --- the title, from the model to the page -----------------------------------------------


async def test_the_model_titles_the_conversation_after_its_first_reply(
    start_upstream, conversation, user, connect, settings
):
    settings.OPENAI_API_KEY = "sk-test-title-key"
    server = await start_upstream(replies_and_titles(answers("Why the Sky Is Blue")))
    socket = await connect(conversation, user)
    frames = await first_reply(socket)
    # The first words name it at once, as before.
    assert retitles(frames[0]) and "Why is the sky blue?" in frames[0]

    frame = await socket.receive_from()
    assert retitles(frame) and 'hx-swap-oob="true"' in frame
    assert f'id="conversation-link-{conversation.pk}"' in frame
    assert frame.count("Why the Sky Is Blue") == 2  # the heading and the list
    await titles_settled()
    saved = await stored(conversation)
    assert (saved.title, saved.title_generated) == ("Why the Sky Is Blue", True)

    (request,) = title_requests(server)
    assert request["stream"] is False
    assert request["model"] == "test-model"
    assert request["max_tokens"] == titles.MAX_TOKENS
    messages = request["messages"]
    assert messages[0] == {"role": "system", "content": titles.INSTRUCTION}
    assert messages[1] == {"role": "user", "content": "Why is the sky blue?"}
    assert messages[2] == {"role": "assistant", "content": "".join(REPLY)}
    assert messages[-1]["role"] == "user"  # asked, not an assistant message to carry on
    exchange = next(e for e in server.exchanges if not json.loads(e.body).get("stream"))
    assert exchange.headers["authorization"] == "Bearer sk-test-title-key"
    assert await socket.receive_nothing(0.1)
    await socket.disconnect()


async def test_the_first_message_and_the_reply_are_cut_in_the_title_request(
    start_upstream, conversation, user, connect
):
    long_reply = ["word " * 1000]
    server = await start_upstream(replies_and_titles(answers(), text_stream(long_reply)))
    socket = await connect(conversation, user)
    await first_reply(socket, content="question " * 1000)
    await titles_settled()
    (request,) = title_requests(server)
    for message in request["messages"][1:3]:
        assert len(message["content"]) <= titles.MAX_INPUT_CHARS + 1
    await socket.disconnect()


async def test_the_reply_does_not_wait_for_its_title(start_upstream, conversation, user, connect):
    hold = asyncio.Event()
    server = await start_upstream(replies_and_titles(answers("Sky Colours", hold=hold)))
    socket = await connect(conversation, user)
    frames = await first_reply(socket)
    assert 'data-status="complete"' in frames[-1]

    async def title_asked():
        return len(server.exchanges) == 2

    # The title request is under way and unanswered: the reply ended without it.
    await eventually(title_asked)
    assert not hold.is_set()
    assert (await stored(conversation)).title == "Why is the sky blue?"
    hold.set()
    frame = await socket.receive_from()
    assert retitles(frame) and "Sky Colours" in frame
    await titles_settled()
    await socket.disconnect()


async def test_a_slow_title_comes_after_the_reply_has_ended(
    start_upstream, conversation, user, connect
):
    async def slow(exchange):
        await asyncio.sleep(2)
        await answers("Slow Title")(exchange)

    await start_upstream(replies_and_titles(slow))
    socket = await connect(conversation, user)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await first_reply(socket)
    assert loop.time() - started < 1.5
    frames = await receive_until(socket, retitles, seconds=5)
    assert "Slow Title" in frames[-1]
    assert loop.time() - started >= 2
    await titles_settled()
    await socket.disconnect()


# --- failing, quietly -----------------------------------------------------------------------


async def test_an_upstream_error_keeps_the_first_words_and_says_nothing(
    start_upstream, conversation, user, connect
):
    server = await start_upstream(replies_and_titles(status_error(500, "Title model is down")))
    socket = await connect(conversation, user)
    await first_reply(socket)
    await titles_settled()
    assert len(title_requests(server)) == 1  # asked once, never retried
    saved = await stored(conversation)
    assert (saved.title, saved.title_generated) == ("Why is the sky blue?", False)
    assert await socket.receive_nothing(0.2)  # no notice, no retitle
    await socket.disconnect()


async def test_a_title_request_that_takes_too_long_is_given_up(
    start_upstream, conversation, user, connect, monkeypatch
):
    monkeypatch.setattr(titles, "TIMEOUT", 0.3)
    never = asyncio.Event()
    server = await start_upstream(replies_and_titles(answers("Too late", hold=never)))
    socket = await connect(conversation, user)
    await first_reply(socket)
    await asyncio.wait_for(titles_settled(), 3)
    assert len(title_requests(server)) == 1
    assert (await stored(conversation)).title == "Why is the sky blue?"
    assert await socket.receive_nothing(0.2)
    await socket.disconnect()


@pytest.mark.parametrize("answer", ["", "   ", "<think>Only thinking, no title.</think>", '""'])
async def test_an_empty_answer_keeps_the_first_words(
    start_upstream, conversation, user, connect, answer
):
    await start_upstream(replies_and_titles(answers(answer)))
    socket = await connect(conversation, user)
    await first_reply(socket)
    await titles_settled()
    saved = await stored(conversation)
    assert (saved.title, saved.title_generated) == ("Why is the sky blue?", False)
    assert await socket.receive_nothing(0.1)
    await socket.disconnect()


# --- the per-minute limit -------------------------------------------------------------------


async def test_the_title_request_counts_against_the_per_minute_limit(
    start_upstream, conversation, user, connect
):
    await start_upstream(replies_and_titles(answers()))
    socket = await connect(conversation, user)
    await first_reply(socket)
    await titles_settled()
    count = database_sync_to_async(UpstreamRequest.objects.filter(user=user).count)
    assert await count() == 2  # the reply and its title
    await socket.disconnect()


async def test_over_the_limit_no_title_is_asked_for_and_nothing_is_said(
    start_upstream, conversation, user, connect, settings
):
    settings.CHAT_MESSAGES_PER_MINUTE = 1  # the reply takes the only request of the minute
    server = await start_upstream(replies_and_titles(answers()))
    socket = await connect(conversation, user)
    await first_reply(socket)
    await titles_settled()
    assert title_requests(server) == []
    saved = await stored(conversation)
    assert (saved.title, saved.title_generated) == ("Why is the sky blue?", False)
    count = database_sync_to_async(UpstreamRequest.objects.filter(user=user).count)
    assert await count() == 1  # a title not asked for is not counted
    assert await socket.receive_nothing(0.2)
    await socket.disconnect()


# --- what a title may replace ---------------------------------------------------------------


async def test_a_title_renamed_while_the_model_writes_one_is_kept(
    start_upstream, conversation, user, connect
):
    hold = asyncio.Event()
    server = await start_upstream(replies_and_titles(answers("Model's Title", hold=hold)))
    socket = await connect(conversation, user)
    await first_reply(socket)

    async def title_asked():
        return len(server.exchanges) == 2

    await eventually(title_asked)
    rename = Conversation.objects.filter(pk=conversation.pk).update
    await database_sync_to_async(rename)(title="My own name")
    hold.set()
    await titles_settled()
    saved = await stored(conversation)
    assert (saved.title, saved.title_generated) == ("My own name", False)
    assert await socket.receive_nothing(0.2)
    await socket.disconnect()


async def test_a_conversation_named_before_its_first_reply_is_not_retitled(
    start_upstream, conversation, user, connect
):
    await database_sync_to_async(Conversation.objects.filter(pk=conversation.pk).update)(
        title="Named by hand"
    )
    server = await start_upstream(replies_and_titles(answers()))
    socket = await connect(conversation, user)
    await first_reply(socket)
    await titles_settled()
    assert title_requests(server) == []
    assert (await stored(conversation)).title == "Named by hand"
    await socket.disconnect()


async def test_only_the_first_reply_asks_for_a_title(start_upstream, conversation, user, connect):
    # The first title fails, so the conversation keeps its first words and is not titled.
    server = await start_upstream(replies_and_titles(status_error(500, "down")))
    socket = await connect(conversation, user)
    await first_reply(socket)
    await titles_settled()
    await first_reply(socket, content="And at sunset?")
    await titles_settled()
    assert len(title_requests(server)) == 1
    assert (await stored(conversation)).title == "Why is the sky blue?"
    await socket.disconnect()


async def test_a_generated_title_is_asked_for_once(start_upstream, conversation, user, connect):
    server = await start_upstream(replies_and_titles(answers("Sky Colours")))
    socket = await connect(conversation, user)
    frames = await first_reply(socket)
    await receive_until(socket, retitles)
    await titles_settled()
    # Regenerating the first reply makes a new first reply: the title is already written.
    reply_id = int(frames[-1].split('id="turn-', 1)[1].split('"', 1)[0])
    await send(socket, action="regenerate", message_id=reply_id)
    await receive_until(socket, ends_reply)
    await titles_settled()
    assert len(title_requests(server)) == 1
    assert (await stored(conversation)).title == "Sky Colours"
    await socket.disconnect()


async def test_a_reply_that_did_not_complete_asks_for_no_title(
    start_upstream, conversation, user, connect
):
    server = await start_upstream(
        replies_and_titles(answers(), status_error(400, "Bad request for this model"))
    )
    socket = await connect(conversation, user)
    frames = await first_reply(socket)
    assert 'data-status="failed"' in frames[-1]
    await titles_settled()
    assert title_requests(server) == []
    await socket.disconnect()


async def test_titles_can_be_switched_off(start_upstream, conversation, user, connect, settings):
    settings.CHAT_GENERATE_TITLES = False
    server = await start_upstream(replies_and_titles(answers()))
    socket = await connect(conversation, user)
    await first_reply(socket)
    await titles_settled()
    assert title_requests(server) == []
    assert (await stored(conversation)).title == "Why is the sky blue?"
    await socket.disconnect()


async def test_reasoning_and_quotes_are_cleaned_from_the_title(
    start_upstream, conversation, user, connect
):
    answer = '<think>The user asks about the sky. A short title.</think>\n\n"**Blue Sky Physics.**"'
    await start_upstream(replies_and_titles(answers(answer)))
    socket = await connect(conversation, user)
    await first_reply(socket)
    frame = await socket.receive_from()
    assert retitles(frame) and "Blue Sky Physics<" in frame and "think" not in frame
    await titles_settled()
    assert (await stored(conversation)).title == "Blue Sky Physics"
    await socket.disconnect()


# --- cleaning an answer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ("Why the Sky Is Blue", "Why the Sky Is Blue"),
        ('"Why the Sky Is Blue"', "Why the Sky Is Blue"),
        ("“Why the Sky Is Blue.”", "Why the Sky Is Blue"),
        ("'Sky colours'.", "Sky colours"),
        ("**Sky Colours**", "Sky Colours"),
        ("# Sky Colours", "Sky Colours"),
        ("Title: Sky Colours", "Sky Colours"),
        ("**Title:** *Sky Colours*", "Sky Colours"),
        ("`Sorting in Python`", "Sorting in Python"),
        ("Is the sky blue?", "Is the sky blue?"),
        ("Sky   colours\tand\u00a0light!!!", "Sky colours and light"),
        ("<think>Let me think.\nA title.</think>Sky Colours", "Sky Colours"),
        ("<THINK>hidden</THINK>\n\n  Sky Colours  ", "Sky Colours"),
        ("Reasoning that was not tagged open.</think>Sky Colours", "Sky Colours"),
        ("<think>never closed, cut at max_tokens", ""),
        ("Sky Colours\n\nThis title sums up the conversation.", "Sky Colours"),
        ('\n\n"Sky Colours"\n', "Sky Colours"),
        ("", ""),
        ("...", ""),
    ],
)
def test_clean_title(answer, title):
    assert clean_title(answer) == title


def test_a_long_answer_is_cut_at_a_word():
    title = clean_title("word " * 40)
    assert len(title) <= titles.MAX_TITLE_CHARS
    assert title.endswith("word") and "  " not in title
    unbroken = clean_title("x" * 200)
    assert unbroken == "x" * titles.MAX_TITLE_CHARS


def test_first_words_are_the_title_a_first_message_gives(conversation):
    started = conversation.send("  Why   is the sky\nblue?  " + "x" * 100, "test-model")
    assert started.retitled.title == titles.first_words(started.added[0].content)


# --- the upstream request, and the demo model ---------------------------------------------


async def test_complete_chat_returns_the_answer_without_its_reasoning(start_upstream):
    async def reasons(exchange):
        message = {"role": "assistant", "reasoning_content": "hmm", "content": "Answer"}
        body = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        await exchange.respond_json(200, body)

    server = await start_upstream(reasons)
    async with upstream.new_client() as client:
        text = await upstream.complete_chat(server.base_url, client=client, model="m", messages=[])
    assert text == "Answer"


async def test_complete_chat_reads_a_server_that_streams_anyway(start_upstream):
    server = await start_upstream(text_stream(["Streamed ", "title"]))
    async with upstream.new_client() as client:
        text = await upstream.complete_chat(server.base_url, client=client, model="m", messages=[])
    assert text == "Streamed title"
    assert requests_of(server)[0]["stream"] is False


async def test_a_server_that_streams_past_max_tokens_is_read_only_as_far_as_the_title_needs(
    start_upstream,
):
    """A server that ignores stream: false and max_tokens and streams a long answer: the
    request is closed once the answer has max_chars characters, and the server stops."""
    server = await start_upstream(paced_words(2000, 500))  # 4 s at 500 tokens a second
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with upstream.new_client() as client:
        text = await upstream.complete_chat(
            server.base_url, client=client, model="m", messages=[], max_chars=100
        )
    assert text.startswith("w0001 w0002 ") and 100 <= len(text) < 200
    assert clean_title(text).startswith("w0001 w0002")
    exchange = server.exchanges[0]
    await asyncio.wait_for(exchange.disconnected.wait(), 2)  # the server learns at once
    assert loop.time() - started < 2


async def test_complete_chat_raises_upstream_errors(start_upstream):
    server = await start_upstream(status_error(429, "Slow down"))
    async with upstream.new_client() as client:
        with pytest.raises(upstream.HTTPStatusError, match="Slow down"):
            await upstream.complete_chat(server.base_url, client=client, model="m", messages=[])

    async def error_object(exchange):
        await exchange.respond_json(200, {"error": {"message": "quota exceeded"}})

    server = await start_upstream(error_object)
    async with upstream.new_client() as client:
        with pytest.raises(upstream.UpstreamError, match="quota exceeded"):
            await upstream.complete_chat(server.base_url, client=client, model="m", messages=[])


async def test_complete_chat_gives_up_after_its_time_limit(start_upstream):
    async def stalls(exchange):
        await exchange.start(content_type="application/json")
        await exchange.write(b'{"choices": [')
        await asyncio.sleep(5)

    server = await start_upstream(stalls)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with upstream.new_client() as client:
        with pytest.raises(upstream.UpstreamError, match=r"within 0\.3 s"):
            await upstream.complete_chat(
                server.base_url, client=client, model="m", messages=[], time_limit=0.3
            )
    assert loop.time() - started < 2


async def test_the_demo_model_answers_a_title_request_with_a_short_title():
    server = await ChatCompletionsServer(DemoModel(tokens_per_second=0)).start()
    try:
        messages = titles.title_messages("what does the demo model do here?", "A long reply.")
        async with upstream.new_client() as client:
            answer = await upstream.complete_chat(
                server.base_url, client=client, model="demo", messages=messages
            )
    finally:
        await server.close()
    assert clean_title(answer) == "What does the demo model"


async def test_the_demo_model_still_answers_other_whole_requests_with_its_reply():
    server = await ChatCompletionsServer(DemoModel(tokens_per_second=0)).start()
    try:
        async with upstream.new_client() as client:
            answer = await upstream.complete_chat(
                server.base_url,
                client=client,
                model="demo",
                messages=[{"role": "user", "content": "hello"}],
            )
    finally:
        await server.close()
    assert "offline demo model" in answer
