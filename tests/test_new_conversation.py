"""A new conversation is stored by its first message: the page of /c/new/ and its socket."""

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.test import Client
from scripted_upstream import requests_of, text_stream
from sockets import SITE_ORIGIN, ends_reply, receive_until, send, socket_to

from conversations.models import Conversation, Message, Preset
from conversations.page import CLOSE_LOGGED_OUT

pytestmark = pytest.mark.django_db(transaction=True)


async def logged_in(user) -> Client:
    client = Client()
    await sync_to_async(client.force_login)(user)
    return client


async def new_page_socket(client: Client):
    """The socket of the page /c/new/, in the session of ``client``."""
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    socket = socket_to("new", [*SITE_ORIGIN, (b"cookie", cookie.encode())])
    connected, _ = await socket.connect()
    assert connected
    return socket


async def test_the_first_message_stores_the_conversation_with_the_settings_chosen(
    start_upstream, user
):
    server = await start_upstream(text_stream(["Bonjour."]))
    preset = await Preset.objects.acreate(
        owner=user, name="French", model="beta-70b", system_prompt="Answer in French."
    )
    client = await logged_in(user)
    response = await sync_to_async(client.post)("/c/new/", {"preset": str(preset.pk)})
    assert response["Location"] == "/c/new/"
    socket = await new_page_socket(client)
    # Settings saved on the page after its socket opened count too.
    saved = await sync_to_async(client.post)(
        "/c/new/settings/",
        {"model": "beta-70b", "system_prompt": "Answer in French.", "temperature": "0.4"},
    )
    assert "Saved" in saved.content.decode()
    assert not await Conversation.objects.filter(owner=user).aexists()

    await send(socket, action="send", content="Hello")
    frames = await receive_until(socket, ends_reply)
    conversation = await Conversation.objects.aget(owner=user)
    created = next(frame for frame in frames if 'id="conversation-created"' in frame)
    assert f'data-url="/c/{conversation.pk}/"' in created
    assert f'id="conversation-link-{conversation.pk}"' in created  # prepended to the list
    assert f"/c/{conversation.pk}/rename/" in created  # the header's controls, now usable
    assert (conversation.model, conversation.system_prompt, conversation.temperature) == (
        "beta-70b",
        "Answer in French.",
        0.4,
    )
    request = requests_of(server)[0]
    assert request["model"] == "beta-70b" and request["temperature"] == 0.4
    assert request["messages"][0] == {"role": "system", "content": "Answer in French."}
    # The draft is used up: the next new page starts afresh.
    session = await sync_to_async(lambda: client.session.get(Conversation.DRAFT, "gone"))()
    assert session == "gone"

    # The same socket is now the conversation's: the next message joins it.
    await send(socket, action="send", content="Again")
    await receive_until(socket, ends_reply)
    assert await Conversation.objects.filter(owner=user).acount() == 1
    assert await Message.objects.filter(conversation=conversation).acount() == 4
    await socket.disconnect()


async def test_a_refused_first_message_stores_nothing(start_upstream, user):
    await start_upstream(text_stream(["never"]))
    client = await logged_in(user)
    socket = await new_page_socket(client)
    for content in ("", "   ", "x" * (settings.CHAT_MAX_MESSAGE_CHARS + 1), 42):
        await send(socket, action="send", content=content)
        (frame,) = await receive_until(socket, lambda frame: "notice" in frame)
        assert 'data-refused="send"' in frame
    assert not await Conversation.objects.filter(owner=user).aexists()
    assert not await Message.objects.aexists()
    await socket.disconnect()


async def test_a_new_page_answers_actions_that_need_a_conversation_with_a_notice(
    start_upstream, user
):
    await start_upstream(text_stream(["never"]))
    client = await logged_in(user)
    socket = await new_page_socket(client)
    await send(socket, action="sync", since=0, shown=[])
    assert await socket.receive_nothing(0.2)  # nothing to bring up to date
    for action in ("regenerate", "stop", "continue", "switch", "edit"):
        await send(socket, action=action, message_id=1, content="x")
        (frame,) = await receive_until(socket, lambda frame: "notice" in frame)
        assert "Send a first message" in frame
    assert not await Conversation.objects.filter(owner=user).aexists()
    # Still usable: a first message now starts the conversation.
    await send(socket, action="send", content="Hello")
    await receive_until(socket, ends_reply)
    assert await Conversation.objects.filter(owner=user).acount() == 1
    await socket.disconnect()


async def test_the_new_page_is_only_for_the_logged_in():
    socket = socket_to("new", SITE_ORIGIN)
    connected, _ = await socket.connect()
    assert connected  # accepted, so the close code reaches the client
    assert await socket.receive_output() == {"type": "websocket.close", "code": CLOSE_LOGGED_OUT}
