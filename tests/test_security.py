"""Accounts see only their own conversations; the socket checks origin, size, session, limits."""

import asyncio
import logging

import pytest
from channels.db import database_sync_to_async
from django.contrib.sessions.models import Session
from django.urls import reverse
from scripted_upstream import status_error, text_stream
from sockets import (
    SITE_ORIGIN,
    ends_reply,
    messages_of,
    receive_until,
    send,
    session_cookie,
    socket_to,
)

from conversations.models import Conversation, Message
from conversations.page import CLOSE_LOGGED_OUT, max_frame_chars

pytestmark = pytest.mark.django_db(transaction=True)


# --- origin ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        None,  # missing
        b"null",  # sandboxed frames, file: pages
        b"http://evil.example",  # foreign host
        b"http://testserver:8080",  # same host, foreign port
        b"https://testserver.evil.example",
        b"https://testserver",  # same host, another scheme: this site is plain http
    ],
)
async def test_sockets_from_other_origins_are_refused(conversation, user, origin):
    headers = [(b"host", b"testserver"), (b"cookie", await session_cookie(user))]
    if origin is not None:
        headers.append((b"origin", origin))
    communicator = socket_to(conversation.pk, headers)
    connected, _ = await communicator.connect()
    assert not connected


async def test_a_socket_from_the_site_itself_is_accepted(conversation, user):
    headers = [*SITE_ORIGIN, (b"cookie", await session_cookie(user))]
    communicator = socket_to(conversation.pk, headers)
    connected, _ = await communicator.connect()
    assert connected
    await communicator.disconnect()


def test_the_origin_scheme_must_be_the_sites():
    from chatsite.websocket import same_origin

    def scope(origin, scheme="ws", **headers):
        pairs = [(b"host", b"chat.example"), (b"origin", origin.encode())]
        pairs += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
        return {"type": "websocket", "scheme": scheme, "headers": pairs}

    assert same_origin(scope("http://chat.example"))
    assert not same_origin(scope("https://chat.example"))
    assert same_origin(scope("https://chat.example", scheme="wss"))
    assert not same_origin(scope("http://chat.example", scheme="wss"))


def test_behind_a_tls_proxy_the_forwarded_scheme_counts(settings):
    from chatsite.websocket import same_origin

    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    headers = [(b"host", b"chat.example"), (b"x-forwarded-proto", b"https")]
    https = {"type": "websocket", "scheme": "ws", "headers": headers}
    assert same_origin(https | {"headers": [*headers, (b"origin", b"https://chat.example")]})
    assert not same_origin(https | {"headers": [*headers, (b"origin", b"http://chat.example")]})


# --- frames ------------------------------------------------------------------------------


async def test_oversized_and_binary_frames_get_a_message(
    start_upstream, conversation, user, connect
):
    await start_upstream(text_stream(["ok"]))
    socket = await connect(conversation, user)
    await socket.send_to(text_data="x" * (max_frame_chars() + 1))
    assert "too long" in await socket.receive_from()
    await socket.send_to(bytes_data=b"\x00\x01")
    assert "JSON text frames only" in await socket.receive_from()
    await send(socket, action="send", content="still usable")
    await receive_until(socket, ends_reply)
    assert [m.content for m in await messages_of(conversation)] == ["still usable", "ok"]
    await socket.disconnect()


async def test_logging_out_elsewhere_ends_the_sockets_rights(
    start_upstream, conversation, user, connect
):
    server = await start_upstream(text_stream(["never"]))
    socket = await connect(conversation, user)
    await database_sync_to_async(Session.objects.all().delete)()  # logged out in another tab
    await send(socket, action="send", content="after logout")
    assert "logged out" in await socket.receive_from()
    assert await socket.receive_output() == {
        "type": "websocket.close",
        "code": CLOSE_LOGGED_OUT,
    }
    assert await messages_of(conversation) == []
    assert server.exchanges == []


# --- limits ------------------------------------------------------------------------------


async def test_messages_per_minute_are_limited(
    start_upstream, conversation, user, connect, settings
):
    settings.CHAT_MESSAGES_PER_MINUTE = 2
    await start_upstream(text_stream(["fine"]))
    socket = await connect(conversation, user)
    for content in ("one", "two"):
        await send(socket, action="send", content=content)
        await receive_until(socket, ends_reply)
    await send(socket, action="send", content="three")
    notice = await socket.receive_from()
    assert "2 replies a minute" in notice and "Try again in" in notice
    assert 'data-refused="send"' in notice
    contents = [m.content for m in await messages_of(conversation) if m.role == "user"]
    assert contents == ["one", "two"]
    await socket.disconnect()


async def test_regenerate_and_continue_count_against_the_same_limit(
    start_upstream, conversation, user, connect, settings
):
    settings.CHAT_MESSAGES_PER_MINUTE = 3
    server = await start_upstream(text_stream(["fine"], finish_reason="length"))
    socket = await connect(conversation, user)
    await send(socket, action="send", content="one")
    await receive_until(socket, ends_reply)
    reply = (await messages_of(conversation))[-1]
    await send(socket, action="continue", message_id=reply.pk)  # the second request
    await receive_until(socket, ends_reply)
    await send(socket, action="regenerate", message_id=reply.pk)  # the third
    await receive_until(socket, ends_reply)
    latest = (await messages_of(conversation))[-1]
    for action in ("regenerate", "continue"):  # a loop of these is refused too
        await send(socket, action=action, message_id=latest.pk)
        notice = await socket.receive_from()
        assert "3 replies a minute" in notice and "Try again in" in notice
    assert len(server.exchanges) == 3
    await socket.disconnect()


async def test_concurrent_replies_per_user_are_limited(
    start_upstream, conversation, user, connect, settings
):
    settings.CHAT_CONCURRENT_REPLIES = 1
    hold = asyncio.Event()
    await start_upstream(text_stream(["slow"], hold=hold))
    other = await database_sync_to_async(Conversation.objects.create)(owner=user, model="m")
    first = await connect(conversation, user)
    second = await connect(other, user)
    await send(first, action="send", content="busy")
    await receive_until(first, lambda f: "slow" in f)
    await send(second, action="send", content="meanwhile")
    notice = await second.receive_from()
    assert "replies being written" in notice
    assert await messages_of(other) == []
    hold.set()
    await receive_until(first, ends_reply)
    await first.disconnect()
    await second.disconnect()


# --- secrets --------------------------------------------------------------------------------


async def test_the_api_key_never_reaches_the_page_or_the_logs(
    start_upstream, conversation, user, connect, settings, caplog
):
    secret = "sk-test-0123456789abcdefSECRET"
    settings.OPENAI_API_KEY = secret
    server = await start_upstream(status_error(401, f"Incorrect API key provided: {secret}"))
    caplog.set_level(logging.DEBUG)
    socket = await connect(conversation, user)
    frames = await receive_until_reply(socket)
    assert server.exchanges[0].headers["authorization"] == f"Bearer {secret}"
    assert all(secret not in frame for frame in frames)
    assert "check the API key" in frames[-1] or "API key" in frames[-1]
    reply = (await messages_of(conversation))[-1]
    assert secret not in reply.error
    assert secret not in caplog.text
    await socket.disconnect()

    client = await database_sync_to_async(logged_in_client)(user)
    page = await database_sync_to_async(client.get)(conversation.get_absolute_url())
    assert secret not in page.content.decode()


async def receive_until_reply(socket):
    await send(socket, action="send", content="hi")
    return await receive_until(socket, ends_reply)


def logged_in_client(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


# --- isolation over HTTP ------------------------------------------------------------------


@pytest.fixture
def someone_elses(other_user):
    conversation = Conversation.objects.create(owner=other_user, title="Private")
    Message.objects.create(conversation=conversation, role="user", content="my secret plans")
    return conversation


@pytest.mark.parametrize(
    "name", ["conversation-detail", "conversation-export", "conversation-delete"]
)
def test_other_peoples_conversations_do_not_exist(client, user, someone_elses, name):
    client.force_login(user)
    url = reverse(name, args=[someone_elses.pk])
    assert client.get(url).status_code == 404
    if name == "conversation-delete":
        assert client.post(url).status_code == 404
        assert Conversation.objects.filter(pk=someone_elses.pk).exists()


def test_the_list_shows_only_ones_own_conversations(client, user, someone_elses):
    Conversation.objects.create(owner=user, title="Mine")
    client.force_login(user)
    page = client.get(reverse("conversation-list")).content.decode()
    assert "Mine" in page and "Private" not in page


@pytest.mark.parametrize(
    "url",
    ["/", "/c/1/", "/c/1/export.json", "/c/1/delete/", "/accounts/password_change/"],
)
def test_pages_need_a_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_pages_carry_a_strict_content_security_policy(client, user):
    client.force_login(user)
    policy = client.get("/")["Content-Security-Policy"]
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]:
        assert directive in policy
    assert "unsafe-inline" not in policy


def test_signup_only_when_allowed(client, settings, django_user_model):
    settings.CHAT_ALLOW_SIGNUP = False
    assert client.get("/accounts/signup/").status_code == 404
    settings.CHAT_ALLOW_SIGNUP = True
    form = {
        "username": "carol",
        "password1": "a fine long passphrase",
        "password2": "a fine long passphrase",
    }
    response = client.post("/accounts/signup/", form)
    assert response.status_code == 302
    assert django_user_model.objects.filter(username="carol").exists()
    assert client.get("/").status_code == 200  # logged in


def test_a_user_can_delete_and_export_their_own_conversation(client, user):
    conversation = Conversation.objects.create(owner=user, title="Mine")
    Message.objects.create(conversation=conversation, role="user", content="hello")
    client.force_login(user)
    exported = client.get(reverse("conversation-export", args=[conversation.pk]))
    assert exported["Content-Type"] == "application/json"
    assert exported.json()["messages"][0]["content"] == "hello"
    response = client.post(reverse("conversation-delete", args=[conversation.pk]))
    assert response.status_code == 302
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


def test_the_icon_is_found_without_a_login(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301
    assert client.get(response["Location"]).status_code == 200


async def test_a_flood_of_actions_on_one_socket_is_refused_with_one_notice(
    conversation, user, connect, settings
):
    settings.CHAT_SOCKET_ACTIONS_PER_SECOND = 0.5  # a burst of 2, then one every 2 s
    socket = await connect(conversation, user)
    for _ in range(30):
        await send(socket, action="probe")
    frames = [await socket.receive_from() for _ in range(3)]
    assert await socket.receive_nothing(0.3)  # the other 27 got nothing, not even a notice
    assert sum("Unknown action" in f for f in frames) == 2
    assert sum("slow down" in f for f in frames) == 1
    await socket.disconnect()


async def test_a_user_may_keep_only_so_many_sockets_open(conversation, user, connect, settings):
    settings.CHAT_SOCKETS_PER_USER = 2
    sockets = [await connect(conversation, user) for _ in range(2)]
    headers = [*SITE_ORIGIN, (b"cookie", await session_cookie(user))]
    third = socket_to(conversation.pk, headers)
    await third.connect()
    assert await third.receive_output(2) == {"type": "websocket.close", "code": 4429}
    await sockets[0].disconnect()
    fourth = await connect(conversation, user)  # one closed: room again
    for socket in (sockets[1], fourth):
        await socket.disconnect()


async def test_syncs_asked_for_while_one_runs_are_coalesced_into_one(
    conversation, user, connect, monkeypatch
):
    from conversations.consumers import ConversationConsumer

    release, ran = asyncio.Event(), []
    real_sync_once = ConversationConsumer.sync_once

    async def slow_sync_once(self, data):
        ran.append(data["since"])
        await release.wait()
        await real_sync_once(self, data)

    monkeypatch.setattr(ConversationConsumer, "sync_once", slow_sync_once)
    socket = await connect(conversation, user)
    for since in range(1, 11):
        await send(socket, action="sync", since=since)
    await send(socket, action="stop")  # waits for the syncs: the page's order holds
    await asyncio.sleep(0.2)
    assert ran == [1]
    assert await socket.receive_nothing(0.1)
    release.set()
    notice = await socket.receive_from()
    assert "no reply to stop" in notice
    assert ran == [1, 10]  # ten asked for: the one running, then one with the latest figures
    await socket.disconnect()


async def test_syncs_are_budgeted_per_user_over_all_their_sockets(
    conversation, user, other_user, connect, settings
):
    settings.CHAT_SYNCS_PER_SECOND = 0.5  # two at once, then one every 2 s
    await database_sync_to_async(Message.objects.create)(
        conversation=conversation, role=Message.Role.USER, content="hello"
    )
    sockets = [await connect(conversation, user) for _ in range(5)]
    for socket in sockets:
        await send(socket, action="sync", since=0, shown=[])
    await asyncio.sleep(0.5)
    answered = [not await socket.receive_nothing(0) for socket in sockets]
    assert sum(answered) == 2  # the others wait for the user's budget, a token every 2 s

    # Another user's page is not kept waiting by it.
    theirs = await database_sync_to_async(Conversation.objects.create)(owner=other_user, model="m")
    await database_sync_to_async(Message.objects.create)(
        conversation=theirs, role=Message.Role.USER, content="hi"
    )
    other = await connect(theirs, other_user)
    await send(other, action="sync", since=0, shown=[])
    assert "hi" in await other.receive_from()
    for socket in [*sockets, other]:
        await socket.disconnect()


def test_a_token_bucket_says_how_long_to_wait():
    from conversations.runtime import TokenBucket

    bucket = TokenBucket(rate=2, burst=2)
    assert bucket.delay() == 0 and bucket.delay() == 0
    assert 0.4 < bucket.delay() <= 0.5  # half a second to the next token
    assert not bucket.take()
